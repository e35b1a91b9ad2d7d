"""Faults: a full spool (dimse.spool_max_instances) answers 0xA700 and takes instances again once it drains.

Outcome checked: nothing acknowledged is lost, nothing unacknowledged is claimed. A refused
instance is neither in the spool nor in the lake until its sender sends it again.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from dicomlake.config import get_settings
from dicomlake.ingest.service import Service
from dicomlake.ingest.settings import DimseSettings
from tests.conftest import require_tool
from tests.integration.netpeers import make_instances, storescu

pytestmark = [pytest.mark.integration]

LIMIT = 10


def _uid_of(paths: list[str]) -> dict[str, str]:
    import pydicom

    return {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _spooled(lake: Path) -> set[str]:
    return {p.stem for p in (lake / "spool").glob("*/*.dcm")}


def test_full_spool_answers_out_of_resources_and_accepts_again_once_drained(tmp_path: Path) -> None:
    require_tool("storescu")
    files = [str(p) for p in make_instances(tmp_path / "in", 25)]
    uid_of = _uid_of(files)
    lake = tmp_path / "lake"
    dimse = DimseSettings(port=0, min_free_bytes=0, spool_max_instances=LIMIT, drain_workers=0, drain_interval_s=0.1)  # type: ignore[call-arg]
    svc = Service(lake, get_settings(), dimse=dimse, control=False).start()
    try:
        assert svc.holder is not None and svc.address is not None and svc.drainer is not None
        port = svc.address[1]
        # the lake is busy (its write lock held): nothing drains, the spool fills up
        with svc.holder.lock:
            ok, bad, out = storescu(port, files)
            assert len(ok) == LIMIT and len(bad) == len(files) - LIMIT, out[-2000:]
            assert "Out of Resources" in out or "OutOfResources" in out, out[-2000:]
            # acknowledged = spooled; refused = nowhere
            assert _spooled(lake) == {uid_of[f] for f in ok}
            assert svc.scp is not None and svc.scp.stats.statuses == {"0xA700": len(bad)}
            refused_uids = {uid_of[f] for f in bad}
        assert svc.drainer.wait_idle(60)
        in_lake = {r["SOPInstanceUID"] for r in svc.query("SELECT SOPInstanceUID FROM instances").to_pylist()}
        assert in_lake == {uid_of[f] for f in ok} and not in_lake & refused_uids
        # drained: the same service takes the rest (the sender retries what was refused)
        t0 = time.monotonic()
        ok2, bad2, out2 = storescu(port, bad)
        assert not bad2 and sorted(ok2) == sorted(bad), out2[-2000:]
        assert svc.drainer.wait_idle(60)
        rows = svc.query("SELECT SOPInstanceUID FROM instances").to_pylist()
        print(
            f"full spool (limit {LIMIT}): {len(ok)} stored, {len(bad)} refused 0xA700 while the lake was busy; "
            f"after the drain {len(ok2)} stored in {time.monotonic() - t0:.1f} s; lake holds {len(rows)}"
        )
    finally:
        svc.stop()
    counts = collections.Counter(r["SOPInstanceUID"] for r in rows)
    assert set(counts) == {uid_of[f] for f in ok + ok2} == set(uid_of.values())
    assert max(counts.values()) == 1
    assert not _spooled(lake)


def test_spool_limit_counts_what_an_earlier_run_left(tmp_path: Path) -> None:
    """Instances left in the spool by a crash count against the limit after a restart."""
    from dicomlake.ingest.spool import Spool, SpoolError

    lake = tmp_path / "lake"
    first = Spool(lake, fsync=False)
    for i in range(3):
        first.put(f"1.2.3.{i}", b"x")
    first.put("1.2.3.0", b"y")  # a resent instance replaces its copy; it is still one
    again = Spool(lake, fsync=False, max_instances=3)
    with pytest.raises(SpoolError) as exc:
        again.begin("1.2.3.9")
    assert exc.value.status == 0xA700 and "spool_max_instances is 3" in str(exc.value)
    (lake / "spool" / "c-store" / "1.2.3.1.dcm").unlink()  # drained by someone else: counted again
    again.put("1.2.3.9", b"z")
    assert again.count() == 3


def test_instance_resent_while_its_earlier_copy_drains_keeps_the_later_copy(tmp_path: Path) -> None:
    """A PACS resends a corrected instance (same SOP Instance UID) while the first copy is being committed."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pynetdicom import AE

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dimse = DimseSettings(port=0, min_free_bytes=0, drain_workers=0, drain_interval_s=0.05)  # type: ignore[call-arg]
    svc = Service(tmp_path / "lake", get_settings(), dimse=dimse, control=False).start()
    try:
        assert svc.holder is not None and svc.scp is not None and svc.drainer is not None
        ae = AE("FAULTSCU")
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", svc.scp.address[1], ae_title="DICOMLAKE")
        assert assoc.is_established
        try:
            with svc.holder.lock:  # the first copy's commit waits for the lake
                ds.PatientName = "FIRST^COPY"
                assert assoc.send_c_store(ds).Status == 0
                time.sleep(0.5)  # the drainer has read the first copy and waits to commit it
                ds.PatientName = "CORRECTED^COPY"
                assert assoc.send_c_store(ds).Status == 0
        finally:
            assoc.release()
        assert svc.drainer.wait_idle(30)
        rows = svc.query("SELECT SOPInstanceUID, PatientName FROM instances").to_pylist()
    finally:
        svc.stop()
    assert rows == [{"SOPInstanceUID": ds.SOPInstanceUID, "PatientName": "CORRECTED^COPY"}]


def test_a_file_set_aside_by_a_drain_cut_short_is_drained_again_unless_superseded(tmp_path: Path) -> None:
    from dicomlake.ingest.spool import CHECK_SUFFIX, Spool

    lake = tmp_path / "lake"
    spool = Spool(lake, fsync=False)
    kept, superseded = spool.put("1.2.3.1", b"first"), spool.put("1.2.3.2", b"old")
    kept.rename(kept.with_name(kept.name + CHECK_SUFFIX))  # the service died inside Spool.release
    superseded.rename(superseded.with_name(superseded.name + CHECK_SUFFIX))
    spool.put("1.2.3.2", b"newer")  # and a newer copy had arrived
    again = Spool(lake, fsync=False)
    assert sorted((p.name, p.read_bytes()) for _, p in again.pending()) == [
        ("1.2.3.1.dcm", b"first"),
        ("1.2.3.2.dcm", b"newer"),
    ]
    assert not list((lake / "spool").glob(f"*/*{CHECK_SUFFIX}"))


def test_sigterm_during_start_up_stops_cleanly(tmp_path: Path) -> None:
    """A supervisor's SIGTERM while the service is still starting is handled like one while it
    serves: exit 0, nothing of the service left behind (before, the default action killed the
    half-started process: exit -15, service.json and the token left in the lake)."""
    import os
    import signal
    import subprocess
    import sys

    lake = tmp_path / "lake"
    env = {**os.environ, "DICOMLAKE_DIMSE__FSYNC": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomlake.ingest.service", "--lake", str(lake), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not (lake / "spool").exists():  # start() has opened the lake and is bringing the rest up
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the service never reached start-up"
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert not (lake / "service.json").exists()
    assert not [p.name for p in lake.iterdir() if "token" in p.name]
