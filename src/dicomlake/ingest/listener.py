"""The C-STORE listener: a lean DICOM Upper Layer acceptor (PS3.8) that spools what it receives.

Why not pynetdicom's acceptor: it moves every PDU through two polling threads (1 ms
sleeps) and a pure-Python state machine, about 6.7 ms of CPU per 566 KB instance, which
caps it near 100 instances/s here (PERF-BASELINE.md). A Storage SCP needs only a small
part of PS3.8: this module negotiates the association (A-ASSOCIATE-RQ/AC/RJ), receives
P-DATA with ``recv_into`` straight into one buffer per PDU, streams each data set
fragment into the spool file as it arrives, and answers C-STORE and C-ECHO. One thread
per association, blocking sockets with TCP_NODELAY, no polling. pynetdicom is still used
for what it is good at: the SCU side (C-FIND, C-MOVE, C-GET) in :mod:`dicomlake.ingest.qr`.

Status codes (PS3.4 Table B.2-1, PS3.7 Annex C): 0x0000 only after the instance is
fsynced into the spool; 0xA700 when the disk is full; 0xC210 when the data set cannot be
decoded or its UID is not a UID.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dicomlake.ingest.settings import DimseSettings, TlsSettings
from dicomlake.ingest.spool import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    Spool,
    SpoolError,
    SpoolWriter,
    encode_file_meta,
    instance_uid_problem,
)

LOG = logging.getLogger("dicomlake.listener")

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
"""PS3.7 Annex A.2.1: the DICOM Application Context Name."""
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1428.1"
IMPLEMENTATION_VERSION_NAME = "DICOMLAKE_01"
HEAD_CHECK_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024 * 1024
"""Metadata-only mode holds a data set in memory until Pixel Data is found, up to this size."""

# PS3.7 Table E.1-1 command fields
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101

# ---------------------------------------------------------------------------------------------
# The standard's words (PS3.8 Table 9-21, 9-26)
# ---------------------------------------------------------------------------------------------

REJECT_RESULT = {1: "rejected permanent", 2: "rejected transient"}
REJECT_SOURCE = {
    1: "service user",
    2: "service provider (ACSE related function)",
    3: "service provider (presentation related function)",
}
REJECT_REASON = {
    1: {
        1: "no reason given",
        2: "application context name not supported",
        3: "calling AE title not recognised",
        7: "called AE title not recognised",
    },
    2: {1: "no reason given", 2: "protocol version not supported"},
    3: {1: "temporary congestion", 2: "local limit exceeded"},
}
ABORT_SOURCE = {0: "service user", 1: "reserved", 2: "service provider"}
ABORT_REASON = {
    0: "reason not specified",
    1: "unrecognised PDU",
    2: "unexpected PDU",
    4: "unrecognised PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def describe_rejection(
    result: int,
    source: int,
    reason: int,
    *,
    our_aet: str = "",
    peer: str = "",
    hint_host: str = "",
    acceptor: str | None = None,
) -> str:
    """An A-ASSOCIATE-RJ in the standard's words, plus what to check.

    By default we asked and ``peer`` refused us. With ``acceptor`` (the calling AE title) we
    refused ``peer`` (its address), and the hint says what to change on our side.

    >>> describe_rejection(1, 1, 7, peer="PACS@10.0.0.5:104").split(" — ")[0]
    'rejected permanent, source: service user, reason: called AE title not recognised'
    >>> describe_rejection(1, 1, 3, acceptor="PACS", peer="10.0.0.5").split(" — ")[1]
    'to accept PACS, add it to dimse.allowed_calling_aets (serve --allow-aet PACS)'
    """
    words = (
        f"{REJECT_RESULT.get(result, f'result {result}')}, "
        f"source: {REJECT_SOURCE.get(source, f'source {source}')}, "
        f"reason: {REJECT_REASON.get(source, {}).get(reason, f'reason {reason}')}"
    )
    hint = ""
    peer_aet = peer.split("@")[0] if "@" in peer else ""
    if acceptor is not None:
        if source == 1 and reason == 3:
            hint = f"to accept {acceptor}, add it to dimse.allowed_calling_aets (serve --allow-aet {acceptor})"
        elif source == 1 and reason == 1 and peer:
            hint = f"to accept {peer}, add it to dimse.allowed_hosts (serve --allow-host {peer})"
        elif source == 1 and reason == 7:
            hint = "the sender's entry for us has another AE title: fix it there, or set dimse.ae_title (serve -aet)"
        elif source == 3:
            hint = "dimse.max_associations reached; the sender should retry, or raise --max-associations"
    elif source == 1 and reason == 3:
        hint = (
            f"check that the PACS knows us as {our_aet or 'our AE title'}"
            + (f" at {hint_host}" if hint_host else "")
            + " (its list of DICOM modalities / allowed calling AE titles)"
        )
    elif source == 1 and reason == 7:
        hint = (
            f"check that {peer or 'the peer'} is the right peer and that its AE title is "
            f"{peer_aet or 'what you called'}"
        )
    elif source == 3:
        hint = "the peer is busy or at its association limit; retry later or lower --concurrency"
    elif source == 2 and reason == 2:
        hint = "the peer does not speak DICOM Upper Layer protocol version 1"
    elif source == 1 and reason == 1:
        hint = (
            f"the peer gave no reason; check that it accepts us as {our_aet or 'our AE title'}"
            + (f" from {hint_host}" if hint_host else "")
            + " and look at its log"
        )
    return f"{words} — {hint}" if hint else words


def describe_abort(source: int, reason: int) -> str:
    """An A-ABORT in the standard's words (PS3.8 Table 9-26)."""
    return f"aborted, source: {ABORT_SOURCE.get(source, source)}, reason: {ABORT_REASON.get(reason, reason)}"


# ---------------------------------------------------------------------------------------------
# Presentation contexts we accept
# ---------------------------------------------------------------------------------------------


def storage_sop_classes() -> dict[str, str]:
    """UID → name of every storage SOP class pynetdicom knows."""
    from pynetdicom import sop_class

    return {str(uid): name for name, uid in sop_class._STORAGE_CLASSES.items()}


def transfer_syntaxes() -> frozenset[str]:
    """Every transfer syntax pydicom knows (native, deflated and compressed)."""
    import pydicom.uid

    return frozenset(str(u) for u in pydicom.uid.AllTransferSyntaxes) | {
        "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# PDU encoding / decoding (PS3.8 §9.3)
# ---------------------------------------------------------------------------------------------


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(b: bytes) -> str:
    return b.rstrip(b"\x00 ").decode("ascii", "replace")


MAX_CONTROL_PDU = 1 << 20
"""Largest A-ASSOCIATE-RQ/RJ, release or abort PDU accepted. Default: 1 MiB"""
MAX_UNBOUNDED_PDATA = 256 << 20
"""Largest P-DATA-TF accepted when max_pdu is 0 (unlimited). Default: 256 MiB"""
MAX_COMMAND = 1 << 20
"""Largest command set assembled from fragments. Default: 1 MiB"""


@dataclass
class AssociateRQ:
    """The parts of an A-ASSOCIATE-RQ we act on."""

    protocol_version: int
    called_aet: str
    calling_aet: str
    called_raw: bytes
    calling_raw: bytes
    application_context: str = ""
    contexts: list[tuple[int, str, list[str]]] = field(default_factory=list)
    max_pdu: int = 0
    implementation_class_uid: str = ""
    implementation_version: str = ""
    roles: list[tuple[str, int, int]] = field(default_factory=list)


def parse_associate_rq(body: bytes) -> AssociateRQ:
    """Decode an A-ASSOCIATE-RQ PDU body (after the 6-byte PDU header)."""
    if len(body) < 68:
        raise ValueError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    called, calling = body[4:20], body[20:36]
    rq = AssociateRQ(
        version,
        called.decode("ascii", "replace").strip(),
        calling.decode("ascii", "replace").strip(),
        called,
        calling,
    )
    pos = 68
    while pos + 4 <= len(body):
        itype, _, ilen = struct.unpack_from(">BBH", body, pos)
        value = body[pos + 4 : pos + 4 + ilen]
        pos += 4 + ilen
        if itype == 0x10:
            rq.application_context = _uid(value)
        elif itype == 0x20 and len(value) >= 4:
            cid = value[0]
            abstract = ""
            tss: list[str] = []
            p = 4
            while p + 4 <= len(value):
                stype, _, slen = struct.unpack_from(">BBH", value, p)
                sval = value[p + 4 : p + 4 + slen]
                p += 4 + slen
                if stype == 0x30:
                    abstract = _uid(sval)
                elif stype == 0x40:
                    tss.append(_uid(sval))
            rq.contexts.append((cid, abstract, tss))
        elif itype == 0x50:
            p = 0
            while p + 4 <= len(value):
                stype, _, slen = struct.unpack_from(">BBH", value, p)
                sval = value[p + 4 : p + 4 + slen]
                p += 4 + slen
                # len(sval), not slen: the item may claim more than the PDU holds (fuzz regressions)
                if stype == 0x51 and len(sval) == 4:
                    (rq.max_pdu,) = struct.unpack(">I", sval)
                elif stype == 0x52:
                    rq.implementation_class_uid = _uid(sval)
                elif stype == 0x55:
                    rq.implementation_version = sval.decode("ascii", "replace").strip()
                elif stype == 0x54 and len(sval) >= 4:
                    (ulen,) = struct.unpack_from(">H", sval, 0)
                    uid = _uid(sval[2 : 2 + ulen])
                    if len(sval) >= 4 + ulen:
                        rq.roles.append((uid, sval[2 + ulen], sval[3 + ulen]))
    return rq


def encode_associate_ac(rq: AssociateRQ, results: list[tuple[int, int, str]], max_pdu: int) -> bytes:
    """A-ASSOCIATE-AC: ``results`` is ``(context id, result, transfer syntax)`` per proposed context."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for cid, result, ts in results:
        items.append(_item(0x21, bytes((cid, 0, result, 0)) + _item(0x40, ts.encode())))
    user = [
        _item(0x51, struct.pack(">I", max_pdu)),
        _item(0x52, IMPLEMENTATION_CLASS_UID.encode()),
    ]
    for uid, scu, _scp in rq.roles:
        # PS3.7 D.3.3.4: we accept the requestor as SCU; we never act as SCU of their SOP classes
        u = uid.encode()
        user.append(_item(0x54, struct.pack(">H", len(u)) + u + bytes((1 if scu else 0, 0))))
    user.append(_item(0x55, IMPLEMENTATION_VERSION_NAME.encode()))
    items.append(_item(0x50, b"".join(user)))
    body = struct.pack(">HH", 1, 0) + rq.called_raw + rq.calling_raw + b"\x00" * 32 + b"".join(items)
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


RELEASE_RP = struct.pack(">BBII", 0x06, 0, 4, 0)

# ---------------------------------------------------------------------------------------------
# DIMSE command sets (PS3.7 §6.3, §9.3): Implicit VR Little Endian, group 0000
# ---------------------------------------------------------------------------------------------

_US_TAGS = {0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1031}


def parse_command(data: bytes) -> dict[int, Any]:
    """Element number (group 0000) → value: ints for US/UL, stripped strings otherwise."""
    out: dict[int, Any] = {}
    pos = 0
    n = len(data)
    while pos + 8 <= n:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        value = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
        if group != 0x0000:
            continue
        # a length past the end leaves a short value: decode by what arrived (fuzz regression)
        if elem in _US_TAGS and len(value) == 2:
            out[elem] = struct.unpack("<H", value)[0]
        elif elem == 0x0000 and len(value) == 4:
            out[elem] = struct.unpack("<I", value)[0]
        else:
            out[elem] = value.rstrip(b"\x00 ").decode("ascii", "replace")
    return out


def encode_command(elements: list[tuple[int, str, Any]]) -> bytes:
    """Encode ``(element, VR, value)`` of group 0000 with the group length first."""
    parts = []
    for elem, vr, value in sorted(elements):
        if vr == "US":
            v = struct.pack("<H", value)
        elif vr == "UI":
            v = value.encode("ascii", "replace")  # a peer's UID echoed back may hold U+FFFD
            v += b"\x00" * (len(v) % 2)
        else:
            v = str(value).encode("ascii", "replace")[:64]
            v += b" " * (len(v) % 2)
        parts.append(struct.pack("<HHI", 0, elem, len(v)) + v)
    body = b"".join(parts)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def store_response(rq: dict[int, Any], status: int, comment: str | None = None) -> bytes:
    elements: list[tuple[int, str, Any]] = [
        (0x0002, "UI", rq.get(0x0002, "")),
        (0x0100, "US", C_STORE_RSP),
        (0x0120, "US", rq.get(0x0110, 0)),
        (0x0800, "US", NO_DATA_SET),
        (0x0900, "US", status),
        (0x1000, "UI", rq.get(0x1000, "")),
    ]
    if comment and status != 0:
        elements.append((0x0902, "LO", comment[:64]))
    return encode_command(elements)


def echo_response(rq: dict[int, Any]) -> bytes:
    return encode_command(
        [
            (0x0002, "UI", rq.get(0x0002, VERIFICATION)),
            (0x0100, "US", C_ECHO_RSP),
            (0x0120, "US", rq.get(0x0110, 0)),
            (0x0800, "US", NO_DATA_SET),
            (0x0900, "US", 0),
        ]
    )


# ---------------------------------------------------------------------------------------------
# A cheap look at a data set: can it be decoded, and its Modality
# ---------------------------------------------------------------------------------------------

_VALID_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class _More(Exception):
    """The buffer ends before the walk could finish."""


class DatasetWalk:
    """Walk a data set's encoding far enough to find Pixel Data (PS3.5 §7.1, §7.5).

    ``walk(buf, complete)`` returns ``None`` while more bytes are needed, else the offset
    of the Pixel Data *value* and its length (``None`` when there is no native pixel
    data). It raises ValueError when the encoding is impossible (tags out of order,
    invalid VR, lengths past the end): that data set cannot be decoded.
    """

    __slots__ = ("explicit", "little", "modality", "tagf", "u16", "u32")

    def __init__(self, transfer_syntax: str) -> None:
        self.little = transfer_syntax != EXPLICIT_VR_BE
        self.explicit = transfer_syntax != IMPLICIT_VR_LE
        self.modality: str | None = None
        self.u16, self.u32, self.tagf = ("<H", "<I", "<HH") if self.little else (">H", ">I", ">HH")

    def walk(self, buf: bytes | bytearray, complete: bool) -> tuple[int, int] | tuple[None, None] | None:
        try:
            try:
                found: Any = self._elements(buf, 0, len(buf), top=True, explicit=self.explicit, complete=complete)
                return found  # type: ignore[no-any-return]
            except ValueError:
                # Tolerant reader: some senders encode implicit VR under an explicit transfer
                # syntax (pydicom reads such files by looking); accept it when it walks cleanly.
                if not self.explicit or not self.little:
                    raise
                found = self._elements(buf, 0, len(buf), top=True, explicit=False, complete=complete)
                return found  # type: ignore[no-any-return]
        except _More:
            if complete:
                raise ValueError("the data set ends inside an element") from None
            return None

    def _header(self, buf: bytes | bytearray, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
        n = len(buf)
        if pos + 8 > n:
            raise _More()
        group, elem = struct.unpack_from(self.tagf, buf, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:
            (length,) = struct.unpack_from(self.u32, buf, pos + 4)
            return tag, None, length, pos + 8
        if explicit:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr not in _VALID_VRS:
                raise ValueError(f"element ({group:04X},{elem:04X}) has an invalid VR {vr!r}")
            if vr in _LONG_VRS:
                if pos + 12 > n:
                    raise _More()
                (length,) = struct.unpack_from(self.u32, buf, pos + 8)
                return tag, vr, length, pos + 12
            (length,) = struct.unpack_from(self.u16, buf, pos + 6)
            return tag, vr, length, pos + 8
        (length,) = struct.unpack_from(self.u32, buf, pos + 4)
        return tag, None, length, pos + 8

    def _elements(
        self, buf: bytes | bytearray, pos: int, end: int, *, top: bool, explicit: bool, complete: bool
    ) -> Any:
        last = -1
        while pos < end:
            if top and complete and pos == len(buf):
                break
            tag, vr, length, start = self._header(buf, pos, explicit)
            if tag == _ITEM_END and not top:
                return start
            if tag <= last:
                raise ValueError(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) out of order after "
                    f"({last >> 16:04X},{last & 0xFFFF:04X})"
                )
            last = tag
            if top and tag == 0x7FE00010:
                return (start, length) if length != _UNDEFINED else (None, None)
            if length == _UNDEFINED:
                nested_explicit = explicit and vr != b"UN"
                pos = self._undefined(buf, start, nested_explicit)
                continue
            if length % 2 and complete and top:
                raise ValueError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has an odd length {length}")
            if top and tag == 0x00080060:
                if start + length > len(buf):
                    raise _More()
                self.modality = bytes(buf[start : start + length]).decode("ascii", "replace").strip(" \x00") or None
            pos = start + length
            if top and pos > len(buf):
                raise _More()
        if not top:
            return pos
        if complete and pos != len(buf):
            raise ValueError("the last element runs past the end of the data set")
        return (None, None)

    def _undefined(self, buf: bytes | bytearray, pos: int, explicit: bool) -> int:
        """Skip a sequence (or encapsulated value) of undefined length; position after its delimiter."""
        while True:
            tag, _vr, length, start = self._header(buf, pos, explicit)
            if tag == _SEQ_END:
                return start
            if tag != _ITEM:
                raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item was expected")
            if length == _UNDEFINED:
                pos = self._elements(buf, start, 1 << 62, top=False, explicit=explicit, complete=False)
            else:
                pos = start + length
                if pos > len(buf):
                    raise _More()


def inspect_dataset(head: bytes, transfer_syntax: str, complete: bool) -> tuple[str | None, str | None]:
    """Check the first bytes of a data set: ``(problem, modality)``; problem None when plausible."""
    if transfer_syntax == DEFLATED:
        try:
            head = zlib.decompressobj(-15).decompress(head, HEAD_CHECK_BYTES)
        except zlib.error as exc:
            return f"deflated data set cannot be inflated: {exc}", None
        complete = False
    w = DatasetWalk(transfer_syntax)
    try:
        w.walk(head, complete)
    except ValueError as exc:
        return str(exc), w.modality
    if complete and not head:
        return "the data set is empty", None
    return None, w.modality


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


@dataclass
class ListenerStats:
    """What the listener did; shown by ``serve`` and its status endpoint."""

    associations: int = 0
    rejected: int = 0
    stored: int = 0
    failed: int = 0
    filtered: int = 0
    echoes: int = 0
    bytes: int = 0
    last_reject: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def make_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """Server-side TLS context: TLS 1.2 or newer, optional client certificates (PS3.15 B.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
    assert tls.certificate and tls.private_key
    ctx.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    elif tls.require_client_certificate:
        raise ValueError("dimse.tls.require_client_certificate needs dimse.tls.ca_file (the CA clients chain to)")
    return ctx


def allowed_networks(hosts: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``dimse.allowed_hosts`` (``--allow-host``) as networks: addresses, CIDR networks or host names.

    A host name stands for the addresses it resolves to now (``localhost``: 127.0.0.1 and ::1).
    """
    from dicomlake.errors import ConfigError

    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for h in hosts:
        try:
            out.append(ipaddress.ip_network(h.strip(), strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(h.strip(), None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(
                f"--allow-host {h!r} (dimse.allowed_hosts): not an IP address, a CIDR network or a host name that "
                f"resolves ({exc}); write e.g. 10.0.0.5, 10.0.0.0/24 or pacs.example.org"
            ) from None
        addrs = sorted({str(info[4][0]).split("%")[0] for info in infos})
        LOG.info("dimse.allowed_hosts: %s is %s", h, ", ".join(addrs))
        out += [ipaddress.ip_network(a) for a in addrs]
    return out


class StoreSCP:
    """A Storage SCP (and Verification SCP) that spools every received instance durably.

    Parameters
    ----------
    spool
        Where instances are written before they are acknowledged.
    settings
        AE title, port, limits, filters, TLS.
    label
        Spool label (recorded as the instances' ``source``).
    """

    def __init__(self, spool: Spool, settings: DimseSettings, *, label: str = "c-store") -> None:
        self.spool = spool
        self.settings = settings
        self.label = label
        self.skip_pixels = not settings.keep_files
        """Metadata only: native Pixel Data is never written to disk (a sparse hole keeps the layout)."""
        self.stats = ListenerStats()
        self.ssl_context = make_ssl_context(settings.tls) if settings.tls.enabled else None
        classes = storage_sop_classes()
        if settings.sop_classes:
            unknown = [u for u in settings.sop_classes if u not in classes]
            if unknown:
                LOG.warning("dimse.sop_classes: %s not known storage SOP classes; accepted anyway", unknown)
            self.abstract_syntaxes = frozenset(settings.sop_classes) | {VERIFICATION}
        else:
            self.abstract_syntaxes = frozenset(classes) | {VERIFICATION}
        self.transfer_syntaxes = transfer_syntaxes()
        self.networks = allowed_networks(settings.allowed_hosts)
        self.filtered_seen: set[tuple[str | None, str | None]] = set()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._active = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self.on_store: Callable[[str], None] | None = None

    def accepts(self, abstract_syntax: str) -> bool:
        """A storage SOP class pynetdicom knows, a retired one of the storage branch, or a private one.

        Vendors store private objects under their own SOP classes (outside 1.2.840.10008);
        standard non-storage SOP classes (Query/Retrieve, worklists…) are refused.
        """
        if abstract_syntax in self.abstract_syntaxes:
            return True
        if self.settings.sop_classes or not abstract_syntax:
            return False
        if abstract_syntax.startswith("1.2.840.10008.5.1.4.1.1."):
            return True
        return self.settings.accept_private_sop_classes and not abstract_syntax.startswith("1.2.840.10008.")

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        """Bind and start accepting in a background thread; return the bound address."""
        host = host if host is not None else self.settings.bind
        port = port if port is not None else self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="dimse-accept", daemon=True)
        self._thread.start()
        LOG.info(
            "listening as %s on %s:%d%s",
            self.settings.ae_title,
            *self.address[:2],
            " (TLS)" if self.ssl_context else "",
        )
        return self.address

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; wait for the associations in progress to end (then cut them)."""
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(conn, addr), name=f"assoc-{addr[0]}:{addr[1]}", daemon=True
            ).start()

    def _host_allowed(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def _serve(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        with self._lock:
            self._conns.add(conn)
        try:
            conn.settimeout(self.settings.network_timeout_s)
            if self.ssl_context is not None:
                try:
                    conn = self.ssl_context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self._count_reject(f"TLS handshake with {addr[0]} failed: {exc}")
                    return
            _Association(self, conn, addr).run()
        except Exception:
            LOG.exception("association with %s:%d ended with an error", *addr[:2])
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _count_reject(self, text: str) -> None:
        self.stats.rejected += 1
        self.stats.last_reject = text
        LOG.warning("%s", text)


class _Closed(Exception):
    """The peer closed the connection."""


class _Association:
    """One accepted connection: negotiation, then P-DATA until release or abort."""

    def __init__(self, scp: StoreSCP, conn: socket.socket, addr: tuple[str, int]) -> None:
        self.scp = scp
        self.conn = conn
        self.addr = addr
        self.peer_max_pdu = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # id → (abstract syntax, transfer syntax)
        self.calling = ""
        self.counted = False
        # the message being received
        self.cmd = bytearray()
        self.rq: dict[int, Any] | None = None
        self.writer: SpoolWriter | None = None
        self.failure: tuple[int, str] | None = None
        self.head = bytearray()
        self.ds_size = 0
        self.ds_context = 0
        # metadata-only: pixel data are left as a sparse hole ("head" → "skip" → "through")
        self.mode = "through"
        self.walker: DatasetWalk | None = None
        self.next_try = 0
        self.skip_left = 0

    # ---- socket -------------------------------------------------------------------------

    def recv_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.conn.recv_into(view[got:], n - got)
            if not k:
                raise _Closed()
            got += k
        return buf

    def read_pdu(self) -> tuple[int, bytearray]:
        hdr = self.recv_exact(6)
        pdu_type, _, length = struct.unpack(">BBI", hdr)
        limit = self.scp.settings.max_pdu
        if pdu_type == 0x04:
            # we told the peer our maximum (PS3.8 §D.1); without one, a hard cap still applies,
            # so a 6-byte header cannot make us allocate gigabytes before any data arrives
            cap = (limit + 6 + 64) if limit else MAX_UNBOUNDED_PDATA
            if length > cap:
                raise ValueError(f"P-DATA-TF of {length} bytes exceeds our maximum length {limit or cap}")
        elif length > MAX_CONTROL_PDU:
            # A-ASSOCIATE, release and abort PDUs are small (PS3.8 §9.3)
            raise ValueError(f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds {MAX_CONTROL_PDU} bytes")
        return pdu_type, self.recv_exact(length) if length else bytearray()

    def send_command(self, context_id: int, command: bytes) -> None:
        pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
        self.conn.sendall(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)

    # ---- negotiation --------------------------------------------------------------------

    def negotiate(self, body: bytes | bytearray) -> bool:
        scp = self.scp
        s = scp.settings
        rq = parse_associate_rq(bytes(body))
        self.calling = rq.calling_aet
        who = f"{rq.calling_aet or '?'}@{self.addr[0]}"

        def reject(result: int, source: int, reason: int, why: str) -> bool:
            self.conn.sendall(encode_associate_rj(result, source, reason))
            scp._count_reject(
                f"association from {who} (called {rq.called_aet!r}) refused: "
                f"{describe_rejection(result, source, reason, acceptor=rq.calling_aet, peer=self.addr[0])} ({why})"
            )
            return False

        if rq.protocol_version & 0x0001 == 0:
            return reject(1, 2, 2, f"protocol version {rq.protocol_version}")
        if rq.application_context and rq.application_context != APPLICATION_CONTEXT:
            return reject(1, 1, 2, f"application context {rq.application_context}")
        if not scp._host_allowed(self.addr[0]):
            return reject(1, 1, 1, f"host {self.addr[0]} is not in dimse.allowed_hosts")
        if s.require_called_aet and rq.called_aet != s.ae_title:
            return reject(1, 1, 7, f"we are {s.ae_title!r}")
        if s.allowed_calling_aets and rq.calling_aet not in s.allowed_calling_aets:
            return reject(1, 1, 3, "not in dimse.allowed_calling_aets")
        with scp._lock:
            if s.max_associations and scp._active >= s.max_associations:
                busy = True
            else:
                busy = False
                scp._active += 1
                self.counted = True
        if busy:
            return reject(2, 3, 2, f"dimse.max_associations={s.max_associations} in progress")
        results: list[tuple[int, int, str]] = []
        for cid, abstract, tss in rq.contexts:
            if not scp.accepts(abstract):
                results.append((cid, 3, tss[0] if tss else IMPLICIT_VR_LE))  # abstract syntax not supported
                continue
            chosen = next((t for t in tss if t in scp.transfer_syntaxes), None)
            if chosen is None:
                results.append((cid, 4, tss[0] if tss else IMPLICIT_VR_LE))  # transfer syntaxes not supported
                continue
            results.append((cid, 0, chosen))
            self.contexts[cid] = (abstract, chosen)
        self.peer_max_pdu = rq.max_pdu
        self.conn.sendall(encode_associate_ac(rq, results, s.max_pdu))
        scp.stats.associations += 1
        LOG.info("association from %s accepted: %d of %d presentation contexts", who, len(self.contexts), len(results))
        return True

    # ---- the main loop ------------------------------------------------------------------

    def run(self) -> None:
        try:
            try:
                pdu_type, body = self.read_pdu()
            except (_Closed, OSError, ValueError):
                return
            if pdu_type != 0x01:
                self.conn.sendall(encode_abort(2, 2))
                return
            if not self.negotiate(body):
                return
            while True:
                pdu_type, body = self.read_pdu()
                if pdu_type == 0x04:
                    self.p_data(body)
                elif pdu_type == 0x05:
                    self.conn.sendall(RELEASE_RP)
                    return
                elif pdu_type == 0x07:
                    src, reason = (body[2], body[3]) if len(body) >= 4 else (0, 0)
                    LOG.info("association from %s@%s: peer %s", self.calling, self.addr[0], describe_abort(src, reason))
                    return
                else:
                    LOG.warning("unexpected PDU type 0x%02X from %s; aborting", pdu_type, self.addr[0])
                    self.conn.sendall(encode_abort(2, 2))
                    return
        except (_Closed, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            if self.writer is not None or self.rq is not None:
                LOG.warning(
                    "association from %s@%s lost mid-instance (%s); nothing acknowledged for it",
                    self.calling,
                    self.addr[0],
                    type(exc).__name__,
                )
        except ValueError as exc:
            LOG.warning("association from %s@%s aborted: %s", self.calling, self.addr[0], exc)
            try:
                self.conn.sendall(encode_abort(2, 6))
            except OSError:
                pass
        finally:
            if self.writer is not None:
                self.writer.abort()
                self.writer = None
            if self.counted:
                with self.scp._lock:
                    self.scp._active -= 1

    def p_data(self, body: bytearray) -> None:
        view = memoryview(body)
        pos = 0
        n = len(body)
        while pos + 6 <= n:
            (length,) = struct.unpack_from(">I", body, pos)
            cid = body[pos + 4]
            control = body[pos + 5]
            end = pos + 4 + length
            if length < 2 or end > n:
                raise ValueError(f"PDV item of length {length} does not fit its P-DATA-TF")
            data = view[pos + 6 : end]
            pos = end
            if cid not in self.contexts:
                raise ValueError(f"PDV on presentation context {cid}, which was not accepted")
            if control & 0x01:  # command fragment
                if len(self.cmd) + len(data) > MAX_COMMAND:
                    raise ValueError(f"command set over {MAX_COMMAND} bytes (PS3.7 command sets are small)")
                self.cmd += data
                if control & 0x02:
                    cmd = parse_command(bytes(self.cmd))
                    self.cmd.clear()
                    self.command(cid, cmd)
            else:
                self.dataset_fragment(cid, data, bool(control & 0x02))

    def command(self, cid: int, cmd: dict[int, Any]) -> None:
        field_ = cmd.get(0x0100)
        if self.rq is not None:
            # PS3.8 Annex E: a message's fragments are not interleaved with another message
            raise ValueError(f"DIMSE command before the data set of the C-STORE of {self.rq.get(0x1000)!r:.80} ended")
        if not isinstance(cmd.get(0x0110, 0), int):
            raise ValueError(f"DIMSE command with a Message ID (0000,0110) that is not US: {cmd.get(0x0110)!r:.40}")
        if field_ == C_ECHO_RQ:
            self.scp.stats.echoes += 1
            self.send_command(cid, echo_response(cmd))
            return
        if field_ != C_STORE_RQ:
            raise ValueError(f"DIMSE command 0x{field_ or 0:04X} is not supported here (C-STORE and C-ECHO only)")
        self.rq = cmd
        self.ds_context = cid
        self.failure = None
        self.head.clear()
        self.ds_size = 0
        abstract, ts = self.contexts[cid]
        if self.scp.skip_pixels and ts != DEFLATED:
            self.mode, self.walker, self.next_try = "head", DatasetWalk(ts), 8192
        else:
            self.mode, self.walker = "through", None
        uid = str(cmd.get(0x1000, ""))
        sop_class = str(cmd.get(0x0002, "")) or abstract
        problem = instance_uid_problem(uid, sop_class)
        if problem:  # refused before a spool file is opened (docs/conformance.md: 0xC210)
            self.failure = (CANNOT_UNDERSTAND, problem)
            return
        try:
            meta = encode_file_meta(sop_class, uid, ts, self.calling or None)
        except UnicodeEncodeError:  # bytes that are not ASCII in a UID: before a spool file is opened
            self.failure = (CANNOT_UNDERSTAND, f"SOP Class or Instance UID not ASCII: {sop_class!r:.80} {uid!r:.80}")
            return
        try:
            w = self.scp.spool.begin(uid, self.scp.label)
            w.write(meta)
            self.writer = w
        except SpoolError as exc:
            self.failure = (exc.status, str(exc))

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        # nothing to write must not count as a write: after pixel data that end the data set,
        # an empty tail would clear the writer's hole-at-end mark and cut the file short
        if self.writer is not None and len(data):
            try:
                self.writer.write(data)
            except SpoolError as exc:
                self.writer = None  # write() aborted it
                self.failure = (exc.status, str(exc))

    def _skip(self, n: int) -> None:
        if self.writer is not None:
            try:
                self.writer.skip(n)
            except OSError as exc:
                self.writer.abort()
                self.writer = None
                self.failure = (OUT_OF_RESOURCES, f"cannot write into the spool: {exc}")

    def dataset_fragment(self, cid: int, data: memoryview, last: bool) -> None:
        if self.rq is None:
            raise ValueError("data set fragment without a C-STORE-RQ before it")
        self.ds_size += len(data)
        if self.mode == "through":
            if len(self.head) < HEAD_CHECK_BYTES:
                self.head += data[: HEAD_CHECK_BYTES - len(self.head)]
            self._write(data)
        elif self.mode == "skip":
            k = min(len(data), self.skip_left)
            self._skip(k)
            self.skip_left -= k
            if k < len(data):
                self._write(data[k:])
            if not self.skip_left:
                self.mode = "through"
        elif self.mode == "failed":
            pass
        else:  # "head": hold the bytes until the walk finds Pixel Data
            self.head += data
            if last or len(self.head) >= self.next_try:
                self._resolve_head(last)
        if last:
            self.finish(cid)

    def _resolve_head(self, last: bool) -> None:
        assert self.walker is not None
        head = self.head
        try:
            found = self.walker.walk(head, last)
        except ValueError as exc:
            self.failure = self.failure or (CANNOT_UNDERSTAND, f"cannot decode the data set: {exc}")
            self.mode = "failed"
            return
        if found is None:
            self.next_try = len(head) * 2
            if self.next_try > MAX_HEAD_BYTES:  # a huge header: stop looking, keep every byte
                self._write(head)
                self.mode = "through"
                self.walker = None
            return
        offset, length = found
        if offset is None or length is None:
            self._write(head)
            self.mode = "through"
            return
        self._write(memoryview(head)[:offset])
        inside = min(len(head) - offset, length)
        self._skip(inside)
        if inside < length:
            self.skip_left = length - inside
            self.mode = "skip"
        else:
            self._write(memoryview(head)[offset + length :])
            self.mode = "through"

    def finish(self, cid: int) -> None:
        rq = self.rq
        assert rq is not None
        scp = self.scp
        status, comment = 0x0000, None
        _, ts = self.contexts[cid]
        if self.failure is None and self.ds_size == 0:
            # an empty data set would replace a stored instance's metadata with nothing
            self.failure = (CANNOT_UNDERSTAND, "the data set is empty")
        if self.failure is None:
            if self.walker is not None:  # the walk already checked the encoding
                problem, modality = None, self.walker.modality
            else:
                problem, modality = inspect_dataset(bytes(self.head), ts, self.ds_size <= HEAD_CHECK_BYTES)
            if problem:
                self.failure = (CANNOT_UNDERSTAND, f"cannot decode the data set: {problem}")
            elif scp.settings.modalities and (modality or "").upper() not in scp.settings.modalities:
                # answered Success (the sender must not retry a deliberate filter), logged and counted
                scp.stats.filtered += 1
                first = (self.calling, modality) not in scp.filtered_seen
                scp.filtered_seen.add((self.calling, modality))
                LOG.log(
                    logging.WARNING if first else logging.INFO,
                    "C-STORE of %s from %s@%s answered 0x0000 but not stored: modality %s is not in "
                    "dimse.modalities %s%s",
                    rq.get(0x1000),
                    self.calling,
                    self.addr[0],
                    modality or "(none)",
                    scp.settings.modalities,
                    " (further ones of this sender and modality are only counted: 'filtered' in the status)"
                    if first
                    else "",
                )
                if self.writer is not None:
                    self.writer.abort()
                    self.writer = None
        if self.failure is not None:
            status, comment = self.failure
            if self.writer is not None:
                self.writer.abort()
        elif self.writer is not None:
            try:
                self.writer.commit()
                scp.stats.stored += 1
                scp.stats.bytes += self.ds_size
            except SpoolError as exc:
                status, comment = exc.status, str(exc)
        self.writer = None
        if status:
            scp.stats.failed += 1
            key = f"0x{status:04X}"
            scp.stats.statuses[key] = scp.stats.statuses.get(key, 0) + 1
            LOG.warning(
                "C-STORE of %s from %s@%s answered 0x%04X: %s",
                rq.get(0x1000),
                self.calling,
                self.addr[0],
                status,
                comment,
            )
        self.send_command(cid, store_response(rq, status, comment))
        self.rq = None
        self.failure = None
        if scp.on_store is not None and status == 0:
            scp.on_store(str(rq.get(0x1000, "")))


__all__ = [
    "CANNOT_UNDERSTAND",
    "OUT_OF_RESOURCES",
    "StoreSCP",
    "describe_abort",
    "describe_rejection",
    "inspect_dataset",
    "make_ssl_context",
]
