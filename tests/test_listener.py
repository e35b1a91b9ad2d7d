"""The listener in-process: statuses (0xC210, 0xA700), the standard's words, the sparse spool."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from dicomlake.ingest.listener import DatasetWalk, StoreSCP, describe_rejection
from dicomlake.ingest.settings import DimseSettings
from dicomlake.ingest.spool import Spool, spool_name


def _scp(tmp_path: Path, **kw: object) -> StoreSCP:
    kw.setdefault("min_free_bytes", 0)
    settings = DimseSettings(fsync=False, **kw)  # type: ignore[arg-type]
    scp = StoreSCP(Spool(tmp_path / "lake", fsync=False, min_free_bytes=settings.min_free_bytes), settings)
    scp.start("127.0.0.1", 0)
    return scp


def _send(
    port: int, path: str | Path, *, sop_class: str = "1.2.840.10008.5.1.4.1.1.2", ts: str = "1.2.840.10008.1.2.1"
) -> int:
    from pynetdicom import AE

    ae = AE("TESTSCU")
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLAKE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(Path(path))
        return int(status.Status)
    finally:
        assoc.release()


def test_rejection_reads_in_the_standards_words_with_a_hint() -> None:
    text = describe_rejection(1, 1, 3, our_aet="DICOMLAKE", hint_host="10.0.0.9:11112")
    assert text.startswith("rejected permanent, source: service user, reason: calling AE title not recognised")
    assert "check that the PACS knows us as DICOMLAKE at 10.0.0.9:11112" in text
    assert "local limit exceeded" in describe_rejection(2, 3, 2)


def _raw_store(
    port: int,
    dataset: bytes,
    *,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
    sop_instance: str = "1.2.3.4.5",
    ts: str = "1.2.840.10008.1.2.1",
) -> int:
    """C-STORE exactly these data set bytes (pynetdicom would re-encode them); the status."""
    import socket
    import struct

    from dicomlake.ingest.listener import encode_command, parse_command
    from tests.integration.netpeers import associate_rq

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(associate_rq(sop_class, ts))
        hdr = sock.recv(6)
        assert hdr[0] == 0x02, hdr
        length = struct.unpack(">I", hdr[2:6])[0]
        while length:
            length -= len(sock.recv(length))
        cmd = encode_command(
            [
                (0x0002, "UI", sop_class),
                (0x0100, "US", 1),
                (0x0110, "US", 7),
                (0x0700, "US", 0),
                (0x0800, "US", 0),
                (0x1000, "UI", sop_instance),
            ]
        )
        for control, data in ((0x03, cmd), (0x02, dataset)):
            pdv = struct.pack(">IBB", len(data) + 2, 1, control) + data
            sock.sendall(struct.pack(">BBI", 4, 0, len(pdv)) + pdv)
        hdr = b""
        while len(hdr) < 6:
            hdr += sock.recv(6 - len(hdr))
        length = struct.unpack(">I", hdr[2:6])[0]
        data = b""
        while len(data) < length:
            data += sock.recv(length - len(data))
        sock.sendall(struct.pack(">BBII", 5, 0, 4, 0))
    return int(parse_command(data[6:])[0x0900])


def test_store_scp_answers_c210_for_a_data_set_it_cannot_decode(tmp_path: Path) -> None:
    def el(elem: int, vr: bytes, value: bytes) -> bytes:
        return (
            (0x0008).to_bytes(2, "little") + elem.to_bytes(2, "little") + vr + len(value).to_bytes(2, "little") + value
        )

    uids = el(0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00") + el(0x0018, b"UI", b"1.2.3.4.5\x00")
    scp = _scp(tmp_path)
    try:
        # a last element that runs past the end of the data set
        assert _raw_store(scp.address[1], uids + b"\x10\x00\x10\x00PN\x64\x00Doe^") == 0xC210
        # tags out of order
        assert _raw_store(scp.address[1], uids + el(0x0005, b"CS", b"AB")) == 0xC210
        # and a good one on the same association style
        assert _raw_store(scp.address[1], uids + el(0x0060, b"CS", b"CT")) == 0x0000
        assert scp.stats.statuses == {"0xC210": 2}
        assert scp.spool.count() == 1
    finally:
        scp.stop()


def test_store_scp_answers_a700_when_the_disk_holds_less_than_the_reserve(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    scp = _scp(tmp_path, min_free_bytes=1 << 62)
    try:
        assert _send(scp.address[1], get_testdata_file("CT_small.dcm")) == 0xA700
        assert scp.spool.count() == 0
    finally:
        scp.stop()


def test_metadata_only_spool_keeps_the_layout_with_pixel_data_as_a_hole(tmp_path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("MR_small.dcm")
    scp = _scp(tmp_path)
    try:
        assert _send(scp.address[1], src, sop_class="1.2.840.10008.5.1.4.1.1.4") == 0
        ((_label, path),) = scp.spool.pending()
        original, spooled = pydicom.dcmread(src), pydicom.dcmread(path)
        assert spooled.SOPInstanceUID == original.SOPInstanceUID and spooled.PatientID == original.PatientID
        assert len(spooled.PixelData) == len(original.PixelData) and not any(spooled.PixelData)
        assert os.stat(path).st_blocks * 512 < os.path.getsize(path) or os.path.getsize(path) < 8192
        assert spooled.file_meta.SourceApplicationEntityTitle == "TESTSCU"
    finally:
        scp.stop()


def test_dataset_walk_finds_pixel_data_after_sequences_of_undefined_length() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    found = DatasetWalk(str(ds.file_meta.TransferSyntaxUID)).walk(data[meta_end:], True)
    assert found is not None and found[1] == len(ds.PixelData)


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.1.2.1"])
def test_spool_names_are_the_uid_when_it_is_valid(uid: str) -> None:
    assert spool_name(uid) == uid


def test_spool_never_takes_a_path_from_the_peer() -> None:
    name = spool_name("../../etc/passwd")
    assert "/" not in name and name.startswith("x")
