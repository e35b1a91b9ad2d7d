"""Send written objects where they belong: C-STORE to a DICOM peer or STOW-RS to a DICOMweb origin.

Files are never moved or deleted: each one stays where ``wrap`` wrote it, and the result
says, per file, whether the peer acknowledged it (with the peer's status). A refused file
can be sent again later (``dicomlake send``).
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomlake.errors import AssociationError, WriteError

log = logging.getLogger(__name__)

_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")
_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
"""Explicit and Implicit VR Little Endian: either can carry a native-pixel object."""


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity: AE title, host and TCP port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, option: str = "--send") -> Peer:
        """``AE@HOST:PORT`` (e.g. ``PACS@10.0.0.5:104``); a bad value raises :class:`WriteError`."""
        m = _PEER.match(text.strip())
        if not m:
            raise WriteError(f"{option} {text!r}: write AE@HOST:PORT, e.g. PACS@127.0.0.1:104")
        ae = m.group("ae").strip()
        if not _AE_CHARS.match(ae):
            raise WriteError(f"{option} {text!r}: AE title {ae!r} must be 1-16 printable ASCII characters without '\\'")
        port = int(m.group("port"))
        if not 0 < port < 65536:
            raise WriteError(f"{option} {text!r}: port {port} is outside 1-65535")
        return cls(ae, m.group("host").strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SendResult:
    """What the peer answered for one file."""

    path: Path
    sop_instance_uid: str
    ok: bool
    status: int | None
    """DIMSE status (0x0000 success, 0xBxxx warning, else failure) or HTTP status for STOW-RS."""
    message: str


@dataclass
class SendReport:
    """Every file's outcome; files are left on disk whatever the outcome."""

    results: list[SendResult] = field(default_factory=list)

    @property
    def sent(self) -> list[SendResult]:
        return [r for r in self.results if r.ok]

    @property
    def refused(self) -> list[SendResult]:
        return [r for r in self.results if not r.ok]


def _describe_status(code: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code, (code_to_category(code), ""))
    return f"0x{code:04X} {category}{': ' + text if text else ''}"


def associate(
    peer: Peer,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    calling_ae: str,
    timeout: float = 30.0,
    what: str = "peer",
) -> Any:
    """An established pynetdicom association, or :class:`AssociationError` saying why not.

    A rejection names the peer's Result, Source and Reason (PS3.8 9.3.4); a peer that
    cannot be reached names the socket error.
    """
    from pynetdicom import AE, evt

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    seen: dict[str, str] = {}

    def on_pdu(event: Any) -> None:
        # the A-ASSOCIATE-RJ PDU itself: a peer that closes the connection right after
        # sending it can make the state machine report an abort instead of the rejection
        pdu = event.pdu
        if type(pdu).__name__ == "A_ASSOCIATE_AC":
            seen["accepted"] = "yes"
        if type(pdu).__name__ == "A_ASSOCIATE_RJ":
            seen["reject"] = (
                f"association rejected ({pdu.result_str}; source: {pdu.source_str}; reason: {pdu.reason_str})"
            )

    try:
        with socket.create_connection((peer.host, peer.port), timeout=min(timeout, 10.0)):
            pass
    except OSError as exc:
        raise AssociationError(f"{what} {peer}: cannot connect ({exc.strerror or exc}); is it running?") from exc
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    if assoc.is_established:
        return assoc
    if "reject" in seen:
        raise AssociationError(f"{what} {peer}: {seen['reject']}; check the AE titles each side expects")
    if "accepted" in seen:
        offered = "; ".join(f"{abstract} in {', '.join(syntaxes)}" for abstract, syntaxes in contexts[:6])
        raise AssociationError(
            f"{what} {peer}: the peer accepted the association but none of the proposed presentation "
            f"contexts (SOP Class in transfer syntax: {offered}); it does not take these objects in "
            "these transfer syntaxes"
        )
    if assoc.is_rejected:
        raise AssociationError(f"{what} {peer}: association rejected; check the AE titles each side expects")
    raise AssociationError(f"{what} {peer}: association aborted or timed out before it was accepted")


def _read_heads(paths: Sequence[Path]) -> list[tuple[Path, str, str, str]]:
    from pydicom import dcmread

    out = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            out.append((path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)))
        except Exception as exc:
            raise WriteError(f"{path}: not a readable DICOM file ({exc}); nothing was sent") from exc
    return out


def c_store(
    paths: Sequence[Path],
    peer: Peer,
    *,
    calling_ae: str = "DICOMLAKE",
    timeout: float = 30.0,
    progress: Callable[[SendResult], None] | None = None,
) -> SendReport:
    """C-STORE each file over one association (PS3.4 B); every file gets a result.

    Each SOP Class is proposed with the file's own transfer syntax, plus both
    uncompressed little-endian syntaxes for native objects (pynetdicom re-encodes a
    native object into the uncompressed syntax the peer accepted). A file the peer
    accepted no context for, or answered with a failure status, is reported, not lost.
    """
    from pydicom import dcmread

    heads = _read_heads(paths)
    wanted: dict[str, list[str]] = {}
    for _, sop_class, _, ts in heads:
        syntaxes = wanted.setdefault(sop_class, [])
        for candidate in (ts, *UNCOMPRESSED) if ts in UNCOMPRESSED else (ts,):
            if candidate not in syntaxes:
                syntaxes.append(candidate)
    # one presentation context per (SOP Class, transfer syntax): the peer may accept some only
    contexts = [(sop_class, [ts]) for sop_class, syntaxes in wanted.items() for ts in syntaxes]
    if len(contexts) > 128:
        raise WriteError(f"{len(contexts)} presentation contexts needed (at most 128); send fewer kinds at once")
    report = SendReport()
    assoc = associate(peer, contexts, calling_ae=calling_ae, timeout=timeout, what="--send")
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for path, sop_class, uid, ts in heads:
            options = [ts, *UNCOMPRESSED] if ts in UNCOMPRESSED else [ts]
            if not any((sop_class, t) in accepted for t in options):
                result = SendResult(
                    path, uid, False, None,
                    f"the peer accepted no presentation context for SOP Class {sop_class} with transfer "
                    f"syntax {ts}; kept {path}",
                )  # fmt: skip
            elif not assoc.is_established:
                result = SendResult(path, uid, False, None, f"association lost before this file; kept {path}")
            else:
                ds = dcmread(path)
                started = time.monotonic()
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1)) if status is not None and "Status" in status else None
                if code is None:
                    why = (
                        "the peer aborted the association (A-ABORT or closed connection) instead of answering"
                        # no answer well before the DIMSE timeout: the peer aborted or closed
                        # (pynetdicom's flags can lag behind its return)
                        if assoc.is_aborted or not assoc.is_established or time.monotonic() - started < timeout * 0.9
                        else "no answer from the peer within the timeout"
                    )
                    result = SendResult(path, uid, False, None, f"{why}; kept {path}")
                elif code == 0x0000 or code & 0xF000 == 0xB000:
                    result = SendResult(path, uid, True, code, _describe_status(code))
                else:
                    comment = str(status.get("ErrorComment", "") or "")
                    detail = f" ({comment})" if comment else ""
                    result = SendResult(path, uid, False, code, f"{_describe_status(code)}{detail}; kept {path}")
            report.results.append(result)
            if progress is not None:
                progress(result)
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def _auth_header(auth: str | None) -> dict[str, str]:
    """``bearer:TOKEN`` or ``basic:USER:PASSWORD`` (or ``USER:PASSWORD``) → an Authorization header."""
    if not auth:
        return {}
    kind, _, rest = auth.partition(":")
    if kind.lower() == "bearer" and rest:
        return {"Authorization": f"Bearer {rest}"}
    if kind.lower() == "basic" and ":" in rest:
        return {"Authorization": "Basic " + base64.b64encode(rest.encode()).decode()}
    if ":" in auth and kind.lower() not in ("bearer", "basic"):
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    raise WriteError("--stow-auth: write bearer:TOKEN or basic:USER:PASSWORD")


def stow_rs(
    paths: Sequence[Path],
    url: str,
    *,
    auth: str | None = None,
    timeout: float = 60.0,
    progress: Callable[[SendResult], None] | None = None,
) -> SendReport:
    """STOW-RS (PS3.18 10.5): one POST per file to ``URL/studies``; the answer's HTTP status per file.

    One request per file keeps "acknowledged" unambiguous: 200 means stored, anything
    else (202 with a failure, 4xx, 5xx) is a refusal and the file stays where it is.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise WriteError(f"--stow {url!r}: give the DICOMweb root, e.g. https://pacs.example/dicom-web")
    target = url.rstrip("/") + ("" if url.rstrip("/").endswith("/studies") else "/studies")
    headers = _auth_header(auth)
    report = SendReport()
    for path, _sop_class, uid, _ts in _read_heads(paths):
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            target,
            data=body,
            method="POST",
            headers={
                **headers,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                code = int(response.status)
                answer = response.read()
            ok = code == 200
            message = f"HTTP {code}" + ("" if ok else f": {answer[:300].decode(errors='replace')}; kept {path}")
        except urllib.error.HTTPError as exc:
            code = exc.code
            text = exc.read()[:300].decode(errors="replace")
            ok, message = False, f"HTTP {code} {exc.reason}: {text}; kept {path}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            code, ok, message = None, False, f"cannot reach {target} ({reason}); kept {path}"
        result = SendResult(path, uid, ok, code, message)
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


__all__ = ["Peer", "SendReport", "SendResult", "associate", "c_store", "stow_rs"]
