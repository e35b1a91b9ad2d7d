"""Faults: a peer that stalls or vanishes mid-association, and one that trickles its bytes.

Outcome checked: the listener closes a silent association after dimse.network_timeout_s,
its thread ends, no partial instance is acknowledged, spooled or put in the lake, and the
next C-ECHO and C-STORE are served as usual; a slow sender whose bytes keep coming is
stored correctly however long the whole transfer takes.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomlake.config import get_settings
from dicomlake.ingest.listener import encode_command, parse_command
from dicomlake.ingest.service import Service
from dicomlake.ingest.settings import DimseSettings
from tests.integration.netpeers import associate_rq

pytestmark = [pytest.mark.integration]

TIMEOUT = 1.0
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    dimse = DimseSettings(port=0, min_free_bytes=0, network_timeout_s=TIMEOUT, drain_workers=0, drain_interval_s=0.1)  # type: ignore[call-arg]
    svc = Service(tmp_path / "lake", get_settings(), dimse=dimse, control=False).start()
    try:
        yield svc
    finally:
        svc.stop()


def _assoc_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("assoc-")]


def _dataset() -> tuple[str, bytes]:
    """A CT instance (new SOP Instance UID) as Explicit VR Little Endian data set bytes."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    return str(ds.SOPInstanceUID), data[meta_end:]


def _associate(port: int) -> socket.socket:
    """A raw association with one CT presentation context (id 1); the socket after A-ASSOCIATE-AC."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(associate_rq(CT, EXPLICIT_LE))
    pdu_type, _ = _read_pdu(sock)
    assert pdu_type == 0x02
    return sock


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        out = b""
        while len(out) < n:
            got = sock.recv(n - len(out))
            if not got:
                raise ConnectionError("closed by the listener")
            out += got
        return out

    hdr = exact(6)
    return hdr[0], exact(struct.unpack(">I", hdr[2:6])[0])


def _store_pdus(uid: str, dataset: bytes, fragment: int = 8192) -> list[bytes]:
    """P-DATA-TF PDUs of one C-STORE-RQ: the command, then the data set in fragments."""
    cmd = encode_command(
        [
            (0x0002, "UI", CT),
            (0x0100, "US", 0x0001),
            (0x0110, "US", 7),
            (0x0700, "US", 0),
            (0x0800, "US", 0),
            (0x1000, "UI", uid),
        ]
    )
    pieces = [(0x03, cmd)] + [
        (0x02 if i + fragment >= len(dataset) else 0x00, dataset[i : i + fragment])
        for i in range(0, len(dataset), fragment)
    ]
    out = []
    for control, data in pieces:
        pdv = struct.pack(">IBB", len(data) + 2, 1, control) + data
        out.append(struct.pack(">BBI", 4, 0, len(pdv)) + pdv)
    return out


def _wait_closed(sock: socket.socket, limit: float) -> float:
    """Seconds until the listener closes the connection (EOF or reset); fails after ``limit``."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the listener kept a silent association open for {limit} s (network_timeout_s={TIMEOUT})")
    return time.monotonic() - t0


def _lake_uids(svc: Service) -> list[str]:
    assert svc.drainer is not None and svc.drainer.wait_idle(30)
    return [r["SOPInstanceUID"] for r in svc.query("SELECT SOPInstanceUID FROM instances").to_pylist()]


def _assert_clean_and_serving(svc: Service, baseline_threads: int) -> None:
    """No association thread left, nothing partial anywhere, and a normal C-ECHO and C-STORE work."""
    from pydicom.data import get_testdata_file
    from pynetdicom import AE

    assert svc.scp is not None and svc.spool is not None
    deadline = time.monotonic() + 5
    while (_assoc_threads() or svc.scp._active) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _assoc_threads() and svc.scp._active == 0, [t.name for t in _assoc_threads()]
    assert threading.active_count() <= baseline_threads
    assert svc.spool.count() == 0 and not any(svc.spool.tmp_dir.iterdir())
    assert svc.scp.stats.stored == 0 and _lake_uids(svc) == []
    ae = AE("CHECKSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(CT, [EXPLICIT_LE])
    assoc = ae.associate("127.0.0.1", svc.scp.address[1], ae_title="DICOMLAKE")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(Path(get_testdata_file("CT_small.dcm"))).Status == 0
    finally:
        assoc.release()
    assert len(_lake_uids(svc)) == 1


@pytest.mark.parametrize(
    "where",
    [
        "after the association",  # A-ASSOCIATE-AC, then silence
        "mid PDU header",  # 3 of the 6 header bytes of the command's P-DATA-TF
        "mid P-DATA",  # the command, then half of the first data set PDU
        "before the last fragment",  # every data set PDU but the last
    ],
)
def test_listener_times_out_a_stalled_peer_and_frees_its_thread(service: Service, where: str) -> None:
    assert service.scp is not None
    baseline = threading.active_count()
    uid, dataset = _dataset()
    pdus = _store_pdus(uid, dataset)
    socks = []
    t0 = time.monotonic()
    for _ in range(4):  # several at once: none waits for another
        sock = _associate(service.scp.address[1])
        if where == "mid PDU header":
            sock.sendall(pdus[0][:3])
        elif where == "mid P-DATA":
            sock.sendall(pdus[0] + pdus[1][: len(pdus[1]) // 2])
        elif where == "before the last fragment":
            sock.sendall(b"".join(pdus[:-1]))
        socks.append(sock)
    if where in ("mid P-DATA", "before the last fragment"):  # a partial instance is on disk, unacknowledged
        assert service.spool is not None
        while len(list(service.spool.tmp_dir.iterdir())) < len(socks) and time.monotonic() - t0 < TIMEOUT * 0.8:
            time.sleep(0.01)
        assert len(list(service.spool.tmp_dir.iterdir())) == len(socks)
    closed_at = []
    for s in socks:
        _wait_closed(s, TIMEOUT + 10)
        closed_at.append(time.monotonic() - t0)
        s.close()
    print(
        f"stalled {where}: 4 associations closed by the listener after {min(closed_at):.2f}-{max(closed_at):.2f} s "
        f"(network_timeout_s={TIMEOUT})"
    )
    assert min(closed_at) >= TIMEOUT * 0.9 and max(closed_at) <= TIMEOUT + 5
    _assert_clean_and_serving(service, baseline)


@pytest.mark.parametrize("how", ["closed", "reset"])
def test_listener_drops_the_partial_instance_of_a_peer_that_vanishes_mid_pdv(service: Service, how: str) -> None:
    assert service.scp is not None
    baseline = threading.active_count()
    uid, dataset = _dataset()
    pdus = _store_pdus(uid, dataset)
    sock = _associate(service.scp.address[1])
    sock.sendall(pdus[0] + pdus[1] + pdus[2][: len(pdus[2]) // 2])
    assert service.spool is not None
    deadline = time.monotonic() + 10  # the listener has begun the spool file
    while not any(service.spool.tmp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(service.spool.tmp_dir.iterdir()), "the listener never began the spool file"
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    sock.close()
    _assert_clean_and_serving(service, baseline)


def test_slow_sender_that_keeps_sending_completes(service: Service) -> None:
    """Bytes trickle in with pauses under the timeout; the whole transfer takes 3x the timeout."""
    assert service.scp is not None
    uid, dataset = _dataset()
    stream = b"".join(_store_pdus(uid, dataset))
    sock = _associate(service.scp.address[1])
    t0 = time.monotonic()
    pieces = 12
    step = -(-len(stream) // pieces)
    try:
        for i in range(0, len(stream), step):
            sock.sendall(stream[i : i + step])
            time.sleep(TIMEOUT * 0.3)
        pdu_type, body = _read_pdu(sock)
        took = time.monotonic() - t0
        assert pdu_type == 0x04
        rsp = parse_command(body[6:])
        assert rsp[0x0900] == 0x0000 and rsp[0x1000] == uid
        sock.sendall(struct.pack(">BBII", 5, 0, 4, 0))  # A-RELEASE-RQ
        assert _read_pdu(sock)[0] == 0x06
    finally:
        sock.close()
    print(f"trickling sender: {len(stream):,} bytes in {pieces} pieces over {took:.1f} s, stored")
    assert took > TIMEOUT * 3
    assert _lake_uids(service) == [uid]
