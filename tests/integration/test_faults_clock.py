"""Faults: the wall clock jumps backwards and forwards under a running service.

libfaketime cannot fake only the wall clock for this service: with
FAKETIME_DONT_FAKE_MONOTONIC=1 (a real clock step moves CLOCK_REALTIME, never
CLOCK_MONOTONIC) libfaketime 0.9.10, Debian's, turns Python 3.11's ``time.sleep`` into
``OSError: [Errno 22]`` (libfaketime issue #426), and faking the monotonic clock too is a
fault no kernel produces. So the clock is tested by design: (1) every timeout and deadline
of the listener, spool and service uses the monotonic clock (socket timeouts,
``Event.wait`` and ``time.monotonic``), the wall clock only stamps; (2) the service runs
in-process with its wall clock (``time.time`` and the ``received_at`` clock) jumping by
days between batches; (3) spool files stamped before 1970 and in 2200 drain like any other.

Outcome checked: every acknowledged instance is in the lake once, association timeouts still
fire on time, no negative duration breaks anything, and ``received_at`` is the (jumped) wall
clock at receipt.
"""

from __future__ import annotations

import ast
import collections
import datetime as dt
import os
import socket
import time
import types
from pathlib import Path

import pytest

import dicomlake.ingest
from dicomlake.config import get_settings
from dicomlake.ingest.service import Service
from dicomlake.ingest.settings import DimseSettings
from dicomlake.ingest.spool import Spool
from tests.conftest import require_tool
from tests.integration.netpeers import lake_uids, make_instances, storescu

pytestmark = [pytest.mark.integration]

TIMEOUT = 1.0
JUMPS = [0, -3, 400, 0]
"""The wall clock's offset from the real one in turn, in days: back 3, forward 403, back 400."""

WALL_CLOCK_STAMPS = {
    ("service.py", "Service.__init__"),  # started_at, shown by status
    ("spool.py", "Drainer.drain"),  # DrainStats.last_commit, shown by status
}
"""Where the listener, spool and service read the wall clock: stamps only, never a duration or a deadline."""


def _wall_clock_reads(source: str) -> set[str]:
    """Qualified names of the functions calling time.time() or a datetime's now()/utcnow()."""
    found: set[str] = set()

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                name = ast.unparse(child.func)
                if name in ("time.time", "time.time_ns") or child.func.attr in ("now", "utcnow", "today"):
                    found.add(".".join(scope) or "<module>")
            visit(child, scope)

    visit(ast.parse(source), [])
    return found


def test_listener_spool_and_service_time_everything_with_the_monotonic_clock() -> None:
    folder = Path(dicomlake.ingest.__file__).parent
    reads = {
        (name, fn)
        for name in ("listener.py", "spool.py", "service.py")
        for fn in _wall_clock_reads((folder / name).read_text())
    }
    assert reads == WALL_CLOCK_STAMPS, (
        "a new wall-clock read in the listener, spool or service: a clock step would move it; "
        "time durations and deadlines with time.monotonic() and add stamps to WALL_CLOCK_STAMPS"
    )


class _Clock:
    """The process's wall clock, ``days`` off the real one (the monotonic clock is left alone)."""

    def __init__(self) -> None:
        self.days = 0
        self.real_time = time.time
        clock = self

        class JumpingDatetime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> JumpingDatetime:  # type: ignore[override]
                return super().now(tz) + dt.timedelta(days=clock.days)

        self.datetime = JumpingDatetime

    def time(self) -> float:
        return self.real_time() + self.days * 86400.0


def _silent_association_closed_after(port: int) -> float:
    """Connect and say nothing: seconds until the listener gives up on us."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        t0 = time.monotonic()
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - t0


def test_wall_clock_jumps_lose_nothing_and_timeouts_still_fire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool("storescu")
    import pydicom

    import dicomlake.ingest.worker

    clock = _Clock()
    monkeypatch.setattr(time, "time", clock.time)
    # received_at: the extraction's clock (the drainer extracts in this process: drain_workers=0)
    monkeypatch.setattr(dicomlake.ingest.worker, "dt", types.SimpleNamespace(datetime=clock.datetime, UTC=dt.UTC))
    batches = [[str(p) for p in make_instances(tmp_path / f"in{i}", 10)] for i in range(len(JUMPS))]
    dimse = DimseSettings(port=0, min_free_bytes=0, network_timeout_s=TIMEOUT, drain_workers=0, drain_interval_s=0.1)  # type: ignore[call-arg]
    acked: dict[str, int] = {}
    closed_after = []
    svc = Service(tmp_path / "lake", get_settings(), dimse=dimse, control=False).start()
    try:
        assert svc.scp is not None and svc.drainer is not None
        port = svc.scp.address[1]
        for i, (days, files) in enumerate(zip(JUMPS, batches, strict=True)):
            clock.days = days
            ok, bad, out = storescu(port, files)
            assert not bad and len(ok) == len(files), out[-2000:]
            acked.update({f: i for f in ok})
            closed_after.append(_silent_association_closed_after(port))
            assert svc.drainer.wait_idle(60)
            status = svc.status()
            assert status["spool_pending"] == 0 and status["drain"]["failures"] == 0, status
        rows = svc.query("SELECT SOPInstanceUID, received_at FROM instances").to_pylist()
    finally:
        svc.stop()
    batch_of = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): b for f, b in acked.items()}
    counts = collections.Counter(r["SOPInstanceUID"] for r in rows)
    assert set(counts) == set(batch_of) and max(counts.values()) == 1
    today = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    shift: dict[int, set[int]] = collections.defaultdict(set)
    for r in rows:
        shift[batch_of[r["SOPInstanceUID"]]].add(round((r["received_at"] - today) / dt.timedelta(days=1)))
    assert dict(shift) == {i: {days} for i, days in enumerate(JUMPS)}, dict(shift)  # the stamps followed the clock
    print(
        f"clock jumps {' → '.join(f'{d:+d} d' for d in JUMPS)}: {len(acked)} acknowledged, {len(counts)} in the lake "
        f"once each; silent associations closed after {', '.join(f'{t:.2f}' for t in closed_after)} s "
        f"(network_timeout_s={TIMEOUT})"
    )
    assert all(TIMEOUT * 0.9 <= t <= TIMEOUT + 4 for t in closed_after), closed_after


def test_spool_drains_every_file_whatever_its_time_stamp(tmp_path: Path) -> None:
    """Spool files stamped before 1970, at the epoch, now and in 2200 all drain, once each."""
    import pydicom

    files = make_instances(tmp_path / "in", 12)
    lake = tmp_path / "lake"
    spool = Spool(lake, fsync=False)
    stamps = [-86400.0 * 400, 0.0, time.time(), 7258118400.0]  # 1968-11, the epoch, now, 2200-01-01
    uids = []
    for i, f in enumerate(files):
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        path = spool.put(uid, f.read_bytes())
        os.utime(path, (stamps[i % 4], stamps[i % 4]))
        uids.append(uid)
    assert len(spool.pending()) == len(files)
    dimse = DimseSettings(port=0, min_free_bytes=0, drain_workers=0, drain_interval_s=0.1)  # type: ignore[call-arg]
    svc = Service(lake, get_settings(), dimse=dimse, control=False, listen=False).start()
    try:
        assert svc.drainer is not None and svc.drainer.wait_idle(60)
    finally:
        svc.stop()
    counts = collections.Counter(lake_uids(lake))
    assert set(counts) == set(uids) and max(counts.values()) == 1
