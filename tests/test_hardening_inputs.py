"""Names and sizes from input: traversal payloads never become paths, every input is bounded.

Outcomes required: 0 escapes — no file is created outside the lake (spool) or the
quarantine for any traversal payload given as a SOP Instance UID (C-STORE, STOW-RS, pull)
or as a zip member name; 100 % of unsafe zip members are rejects; zip members over the
ratio limit are refused before they are inflated; oversized PDUs are refused before they
are allocated.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from dicomlake.ingest.sources import expand, unsafe_member_name
from dicomlake.ingest.spool import Spool, SpoolError, spool_name
from dicomlake.ingest.worker import WorkerConfig, process_chunk
from dicomlake.samples import pydicom_test_files

TRAVERSAL = [
    "../../../../tmp/evil", "..\\..\\..\\evil", "/etc/passwd", "\\\\server\\share\\evil", "C:\\evil",
    "1.2.3/../../../evil", "1.2.3/../../evil", "..", ".", "./evil", "1.2.3\x00/../evil", "1.2.3\n../evil",
    "%2e%2e%2fevil", "..%2fevil", "\u2025/evil", "1.2.840.10008/../../../../evil", "evil/" * 30,
    "CON", "NUL.dcm", "1.2.3 ", " 1.2.3", "1.2.3.", "1..2.3", "1.2.03", "a" * 64, "1." * 40,
]  # fmt: skip


def _files_named_evil(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "evil" in p.name]


def test_spool_names_come_from_validated_uids_never_from_input(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    spool = Spool(lake, fsync=False)
    written = escaped = refused = 0
    for payload in TRAVERSAL:
        try:
            name = spool_name(payload)
        except SpoolError:
            refused += 1
            continue
        assert "/" not in name and "\\" not in name and name not in (".", "..") and "\x00" not in name, payload
        path = spool.put(payload, b"\0" * 132, "c-store")
        written += 1
        if not path.resolve().is_relative_to(lake.resolve()):
            escaped += 1
        assert path.parent == (lake / path.parent.relative_to(lake))
    print(
        f"{len(TRAVERSAL)} payloads: {written} spooled (valid UIDs as themselves, others hashed), {refused} refused, {escaped} escapes"
    )
    assert escaped == 0
    assert not _files_named_evil(tmp_path)
    assert not [p for p in Path("/tmp").glob("evil*")]


def _zip_with(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def _cfg(lake: Path) -> WorkerConfig:
    return WorkerConfig(
        lake=str(lake),
        columns_file=None,
        inline_max=1024,
        max_header_bytes=1 << 26,
        max_zip_member_bytes=64 << 20,
        max_zip_ratio=200.0,
    )


def test_zip_traversal_members_are_all_rejects_and_nothing_is_extracted(tmp_path: Path) -> None:
    ct = (pydicom_test_files() / "CT_small.dcm").read_bytes()
    names = [n for n in TRAVERSAL if unsafe_member_name(n)] + [
        "../evil.dcm",
        "a/../../evil.dcm",
        "/abs/evil.dcm",
        "C:/evil.dcm",
        "..\\evil.dcm",
    ]
    members = {n: ct for n in names}
    members["ok/CT_small.dcm"] = ct
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "upload.zip").write_bytes(_zip_with(members))
    lake = tmp_path / "lake"
    tasks = expand([tmp_path / "in"])
    res = process_chunk(tasks, _cfg(lake))
    reasons = res.rejects.column("reason").to_pylist()
    unsafe = sum(1 for t in tasks if unsafe_member_name(t.member or ""))
    print(f"{len(tasks)} members, {unsafe} unsafe names, {res.rejected} rejected, {res.instances} read")
    stored = zipfile.ZipFile(tmp_path / "in" / "upload.zip").namelist()  # zipfile drops what follows a NUL
    assert unsafe == sum(1 for n in stored if unsafe_member_name(n)) >= len(names) - 2
    assert res.rejected == unsafe  # 100 % of unsafe names
    assert all("unsafe zip member name" in r for r in reasons)
    assert res.instances == len(stored) - unsafe
    assert not _files_named_evil(tmp_path)
    # the bytes are kept by digest in quarantine, never under the member's name
    for q, sha in zip(
        res.rejects.column("quarantine_path").to_pylist(), res.rejects.column("sha256").to_pylist(), strict=True
    ):
        assert Path(q).name == sha and (lake / q).resolve().is_relative_to(lake.resolve())


def test_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.zip").write_bytes(_zip_with({"bomb.dcm": b"\0" * (48 << 20)}))  # ratio ~1000:1
    res = process_chunk(expand([tmp_path / "in"]), _cfg(tmp_path / "lake"))
    assert res.rejected == 1
    reason = res.rejects.column("reason")[0].as_py()
    assert "ratio limit" in reason
    assert res.rejects.column("quarantine_path")[0].as_py() is None  # not inflated to be kept


def test_oversized_associate_rq_is_refused_before_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import struct
    import time

    from dicomlake.ingest import listener
    from dicomlake.ingest.settings import DimseSettings

    asked: list[int] = []
    real = listener._Association.recv_exact

    def guarded(self: object, n: int) -> bytearray:
        if n > 64 << 20:  # never really allocate 4 GiB on a shared test machine
            asked.append(n)
            raise listener._Closed()
        return real(self, n)  # type: ignore[arg-type]

    monkeypatch.setattr(listener._Association, "recv_exact", guarded)
    scp = listener.StoreSCP(Spool(tmp_path / "lake", fsync=False), DimseSettings(port=0))
    host, port = scp.start("127.0.0.1", 0)
    try:
        for pdu_type in (0x01, 0x05, 0x07):
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(struct.pack(">BBI", pdu_type, 0, 0xFFFFFFF0))
                s.settimeout(5)
                try:
                    s.recv(64)
                except OSError:
                    pass
        time.sleep(0.2)
    finally:
        scp.stop()
    assert not asked, f"the listener asked for {[f'{n >> 20} MiB' for n in asked]} on a 6-byte PDU header"


def test_command_set_fragments_are_bounded(tmp_path: Path) -> None:
    """A peer sending command PDVs without the last-fragment bit: the listener aborts the
    association once the command set passes its limit. Without a limit it would wait for
    the last fragment for ever and answer nothing (socket buffers may take what we send
    either way, so the answer — an A-ABORT or a closed connection — is what is checked)."""
    import socket
    import struct

    from dicomlake.ingest import listener
    from dicomlake.ingest.settings import DimseSettings
    from fuzz.fuzz_pdu import seed_inputs

    rq = seed_inputs()[0][1:]  # a valid A-ASSOCIATE-RQ body (verification, context id 1)
    scp = listener.StoreSCP(Spool(tmp_path / "lake", fsync=False), DimseSettings(port=0))
    host, port = scp.start("127.0.0.1", 0)
    answer: bytes | None = None
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(struct.pack(">BBI", 0x01, 0, len(rq)) + rq)
            assert s.recv(1) == b"\x02", "no A-ASSOCIATE-AC for a valid request"
            s.recv(65536)
            fragment = b"\0" * 65536
            pdv = struct.pack(">IBB", len(fragment) + 2, 1, 0x01) + fragment  # command, not last
            pdu = struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv
            try:
                for _ in range(2 * listener.MAX_COMMAND // len(fragment)):
                    s.sendall(pdu)
            except OSError:
                pass  # the listener closed the connection already
            s.settimeout(10)
            try:
                answer = s.recv(6)
            except TimeoutError:
                answer = None  # no answer: the listener is still collecting fragments
            except OSError:
                answer = b""  # reset: closed
    finally:
        scp.stop()
    assert answer is not None, "no A-ABORT and no close after twice the command-set limit"
    assert answer[:1] in (b"\x07", b""), f"expected an A-ABORT or a closed connection, got {answer!r}"


def test_header_limits_are_settings() -> None:
    from dicomlake.config import IngestSettings

    s = IngestSettings()
    assert s.max_header_bytes <= 64 << 20 and s.max_zip_ratio <= 200 and s.max_zip_member_bytes <= 2 << 30
    assert not s.allow_executable_preamble
    assert os.path.basename(spool_name("1.2.3")) == "1.2.3"
