"""Faults of the lake's database under `dicomlake serve`: a torn last write, a lock held by another
process, and writes failing while instances arrive.

Outcome checked every time: the set of SOP Instance UIDs acknowledged to the sender is the set
in the lake, each exactly once (nothing acknowledged is lost, nothing unacknowledged is claimed).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import time
from pathlib import Path

import duckdb
import pytest

from dicomlake.config import get_settings
from dicomlake.ingest.listener import StoreSCP
from dicomlake.ingest.service import Service
from dicomlake.ingest.settings import DimseSettings
from dicomlake.ingest.spool import Spool
from tests.conftest import require_tool
from tests.integration.netpeers import Served, free_port, lake_uids, make_instances, storescu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAL = "lake.duckdb.wal"


def _uid_of(paths: list[str]) -> dict[str, str]:
    import pydicom

    return {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _storescu(port: int, files: list[str]) -> list[str]:
    """Send ``files``; the ones acknowledged with Success (every one must be)."""
    ok, bad, out = storescu(port, files)
    assert not bad and len(ok) == len(files), out[-2000:]
    return ok


def _spooled(lake: Path) -> list[Path]:
    return sorted((lake / "spool").glob("*/*.dcm"))


def _wait_drained(lake: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _spooled(lake):
        assert time.monotonic() < deadline, f"{len(_spooled(lake))} file(s) still in the spool after {timeout} s"
        time.sleep(0.05)


def _receive_without_draining(lake: Path, files: list[str]) -> list[str]:
    """The state a kill between spool write and lake commit leaves: acknowledged, spooled, not in the lake."""
    scp = StoreSCP(Spool(lake, fsync=True), DimseSettings(port=0, min_free_bytes=0))  # type: ignore[call-arg]
    scp.start("127.0.0.1", 0)
    try:
        return _storescu(scp.address[1], files)
    finally:
        scp.stop()


def _assert_exactly_once(lake: Path, acked_uids: set[str]) -> collections.Counter[str]:
    in_lake = collections.Counter(lake_uids(lake))
    assert set(in_lake) == acked_uids, (len(in_lake), len(acked_uids))
    assert max(in_lake.values()) == 1
    return in_lake


def _in_process(lake: Path) -> Service:
    """The service in this process (no extraction processes): opening, draining and closing are the same."""
    dimse = DimseSettings(port=0, min_free_bytes=0, drain_workers=0, drain_interval_s=0.1)  # type: ignore[call-arg]
    return Service(lake, get_settings(), dimse=dimse, control=False).start()


def _drain_in_process(lake: Path) -> None:
    svc = _in_process(lake)
    try:
        assert svc.drainer is not None and svc.drainer.wait_idle(60)
    finally:
        svc.stop()


LEAN = {"DICOMLAKE_DIMSE__DRAIN_WORKERS": "0"}
"""The subprocess service extracts in its own process: quicker to start, the same commits."""


@dataclasses.dataclass
class KilledAfterCommit:
    lake: Path
    spool_before_commit: Path
    acked_uids: set[str]
    wal_size: int


@pytest.fixture(scope="module")
def killed_after_commit(tmp_path_factory: pytest.TempPathFactory) -> KilledAfterCommit:
    """A lake whose last transaction is only in the WAL (the service died before a checkpoint)."""
    require_tool("storescu")
    tmp = tmp_path_factory.mktemp("killed-after-commit")
    files = [str(p) for p in make_instances(tmp / "in", 40)]
    uid_of = _uid_of(files)
    lake = tmp / "lake"
    # 1. the service receives the first half and stops cleanly: committed and checkpointed
    svc = _in_process(lake)
    try:
        assert svc.address is not None and svc.drainer is not None
        acked = _storescu(svc.address[1], files[:20])
        assert svc.drainer.wait_idle(60)
    finally:
        svc.stop()
    assert not (lake / WAL).exists() or (lake / WAL).stat().st_size == 0
    # 2. the second half is acknowledged and spooled (a copy kept: the spool as it was before its commit)
    acked += _receive_without_draining(lake, files[20:])
    before_commit = tmp / "spool-before-commit"
    shutil.copytree(lake / "spool", before_commit)
    # 3. the service commits it to the WAL, then dies before any checkpoint
    s = Served(lake, free_port(), lean=True, env=LEAN).start()
    _wait_drained(lake)
    s.kill9()
    size = (lake / WAL).stat().st_size
    assert size > 0, "nothing in the WAL to tear"
    assert {uid_of[f] for f in acked} == set(uid_of.values())
    return KilledAfterCommit(lake, before_commit, set(uid_of.values()), size)


TEARS = ("truncated", "truncated, zero-filled block", "truncated, garbage block")


def _tear(wal: Path, how: str) -> int:
    """Damage the WAL as a crash during its last write would; return the size kept."""
    size = wal.stat().st_size
    with wal.open("r+b") as fh:
        if how == "committed entry corrupted":  # bit rot inside a committed transaction, not a torn write
            fh.seek(size // 2)
            fh.write(os.urandom(64))
            return size
        fh.truncate(size // 2)
        fh.seek(0, os.SEEK_END)
        if how == "truncated, zero-filled block":
            fh.write(bytes(4096))
        elif how == "truncated, garbage block":
            fh.write(os.urandom(4096))
    return size // 2


@pytest.mark.parametrize("tear", TEARS)
def test_torn_last_lake_write_is_recovered_from_the_spool_exactly_once(
    killed_after_commit: KilledAfterCommit, tmp_path: Path, tear: str
) -> None:
    k = killed_after_commit
    # the last write is torn: its commit never returned, so the spool still holds its files
    lake = tmp_path / "lake"
    shutil.copytree(k.lake, lake)
    kept = _tear(lake / WAL, tear)
    shutil.rmtree(lake / "spool")
    shutil.copytree(k.spool_before_commit, lake / "spool")
    # restart: the torn transaction is dropped, the spool is drained again
    committed = len(lake_uids(lake))
    assert committed == len(k.acked_uids) // 2  # the first half; the torn transaction is gone
    _drain_in_process(lake)
    in_lake = _assert_exactly_once(lake, k.acked_uids)
    print(
        f"torn WAL ({tear}, {k.wal_size:,} → {kept:,} bytes): {committed} committed before the tear kept, "
        f"{len(k.acked_uids)} acknowledged, {len(in_lake)} in the lake once each after the spool drained"
    )


def test_corrupt_committed_wal_entry_stops_the_service_from_starting_with_a_remedy(
    killed_after_commit: KilledAfterCommit, tmp_path: Path
) -> None:
    """Not a torn write but damage inside a committed transaction: refused, never silently dropped."""
    lake = tmp_path / "lake"
    shutil.copytree(killed_after_commit.lake, lake)
    _tear(lake / WAL, "committed entry corrupted")
    served = Served(lake, free_port(), lean=True, env=LEAN)
    with pytest.raises(RuntimeError) as exc:
        served.start()
    log = str(exc.value)
    assert served.proc is not None and served.proc.returncode == 2
    assert "WAL" in log and "move lake.duckdb.wal aside" in log and "Traceback" not in log, log[-2000:]
    print(f"corrupt committed WAL entry: {log.splitlines()[-1][:300]}")


def test_lake_locked_by_another_process_at_restart_keeps_the_spool_until_it_is_free(tmp_path: Path) -> None:
    require_tool("storescu")
    files = [str(p) for p in make_instances(tmp_path / "in", 20)]
    uid_of = _uid_of(files)
    lake = tmp_path / "lake"
    _in_process(lake).stop()  # a lake exists
    acked = _receive_without_draining(lake, files)  # then the service died between spool write and lake commit
    holder = duckdb.connect(str(lake / "lake.duckdb"))  # another process holds the lake
    try:
        served = Served(lake, free_port(), lean=True, env=LEAN)
        with pytest.raises(RuntimeError) as exc:
            served.start()
        log = str(exc.value)
        assert served.proc is not None and served.proc.returncode == 2
        assert "cannot open" in log and "lake.duckdb" in log and "Traceback" not in log, log[-2000:]
        assert len(_spooled(lake)) == len(acked)
    finally:
        holder.close()
    _drain_in_process(lake)  # the lake is free again: the next start drains the spool
    in_lake = _assert_exactly_once(lake, {uid_of[f] for f in acked})
    print(f"lake locked at restart: the service refused to start; {len(in_lake)} recovered from the spool once freed")


def test_lake_writes_failing_while_receiving_are_retried_from_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynetdicom import AE

    from dicomlake.store.duckdb import DuckDBStore

    files = [str(p) for p in make_instances(tmp_path / "in", 30)]
    uid_of = _uid_of(files)
    real_write = DuckDBStore.write_batch
    broken = {"on": True, "refused": 0}

    def write_batch(self: DuckDBStore, *args: object, **kw: object) -> object:
        if broken["on"]:
            broken["refused"] += 1
            raise duckdb.IOException("simulated: the lake's disk returned an I/O error")
        return real_write(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(DuckDBStore, "write_batch", write_batch)
    dimse = DimseSettings(port=0, min_free_bytes=0, drain_workers=0, drain_interval_s=0.1, drain_batch=8)  # type: ignore[call-arg]
    svc = Service(tmp_path / "lake", get_settings(), dimse=dimse, control=False).start()
    try:
        assert svc.scp is not None and svc.drainer is not None and svc.spool is not None
        ae = AE("FAULTSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", svc.scp.address[1], ae_title="DICOMLAKE")
        assert assoc.is_established
        acked = []
        try:
            for i, f in enumerate(files):
                if i == len(files) // 2:
                    deadline = time.monotonic() + 20
                    while svc.stats.failures < 2 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    broken["on"] = False  # the lake comes back mid-transfer
                if assoc.send_c_store(Path(f)).Status == 0:
                    acked.append(f)
        finally:
            assoc.release()
        assert svc.drainer.wait_idle(60)
        rows = svc.query("SELECT SOPInstanceUID, count(*) AS n FROM instances GROUP BY 1").to_pylist()
        stats = svc.stats.as_dict()
    finally:
        svc.stop()
    assert broken["refused"] >= 2 and stats["failures"] >= 2 and "simulated" in (stats["last_error"] or "")
    assert {r["SOPInstanceUID"] for r in rows} == {uid_of[f] for f in acked} == set(uid_of.values())
    assert max(r["n"] for r in rows) == 1
    print(
        f"lake writes failing: {broken['refused']} commits refused, {stats['failures']} drain failures retried; "
        f"{len(acked)} acknowledged, {len(rows)} in the lake once each"
    )
