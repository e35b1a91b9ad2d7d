"""Faults: kill -9 of `dicomlake serve` mid-transfer (20 times), and a full disk."""

from __future__ import annotations

import collections
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require_tool
from tests.integration.netpeers import Served, acknowledged, free_port, lake_uids, make_instances

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _uid_of(paths: list[str]) -> dict[str, str]:
    import pydicom

    return {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_kill_9_twenty_times_loses_and_duplicates_no_acknowledged_instance(tmp_path: Path) -> None:
    require_tool("storescu")
    files = [str(p) for p in make_instances(tmp_path / "in", 1000)]
    uid_of = _uid_of(files)
    lake, port = tmp_path / "lake", free_port()
    rng = random.Random(20)
    remaining = list(files)
    acked: list[str] = []
    kills = 0
    while kills < 20 and remaining:
        s = Served(lake, port, lean=True).start()
        log = tmp_path / f"storescu-{kills}.log"
        with log.open("w") as fh:
            sender = subprocess.Popen(
                ["storescu", "-v", "-nh", "-aec", "DICOMLAKE", "127.0.0.1", str(port), *remaining],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
            # a random moment: after a random number of acknowledgements (0-79), mid-instance
            target, deadline = rng.randrange(80), time.monotonic() + 5
            while time.monotonic() < deadline and sender.poll() is None:
                if log.read_text().count("Received Store Response") >= target:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.01))
            s.kill9()
            kills += 1
            sender.wait(60)
        ok, _ = acknowledged(log.read_text())
        acked += ok
        done = set(ok)
        remaining = [f for f in remaining if f not in done]  # resend what was not acknowledged
    # the last round runs to the end and stops cleanly
    with Served(lake, port) as s:
        proc = subprocess.run(
            ["storescu", "-v", "-nh", "-aec", "DICOMLAKE", "127.0.0.1", str(port), *remaining],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        ok, bad = acknowledged(proc.stdout + proc.stderr)
        assert not bad
        acked += ok
        assert s.stop() == 0
    in_lake = collections.Counter(lake_uids(lake))
    acked_uids = [uid_of[f] for f in acked]
    assert kills == 20
    missing = [u for u in acked_uids if in_lake[u] == 0]
    duplicated = [u for u, n in in_lake.items() if n > 1]
    print(
        f"kill -9: {kills} kills, {len(acked)} acknowledgements for {len(set(acked_uids))} instances, "
        f"{len(in_lake)} in the lake, missing {len(missing)}, duplicated {len(duplicated)}"
    )
    assert not missing and not duplicated
    assert set(in_lake) == set(uid_of.values())


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        msg = f"cannot mount a tmpfs for the disk-full test: {proc.stderr.strip()} (needs root)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def test_disk_full_answers_out_of_resources_and_recovers(tmp_path: Path) -> None:
    require_tool("storescu")
    files = [str(p) for p in make_instances(tmp_path / "in", 300)]
    uid_of = _uid_of(files)
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "8m")
    try:
        lake, port = mnt / "lake", free_port()
        env = {"DICOMLAKE_DIMSE__MIN_FREE_BYTES": str(1 << 20)}
        with Served(lake, port, "--keep-files", env=env) as s:
            proc = subprocess.run(
                ["storescu", "-v", "-nh", "-aec", "DICOMLAKE", "127.0.0.1", str(port), *files],
                capture_output=True,
                text=True,
                timeout=300,
            )
            out = proc.stdout + proc.stderr
            ok, bad = acknowledged(out)
            assert bad, "the disk never filled"
            assert "Out of Resources" in out or "OutOfResources" in out, out[-2000:]
            # space returns: the same service takes the rest
            subprocess.run(["mount", "-o", "remount,size=200m", str(mnt)], check=True)
            again = subprocess.run(
                ["storescu", "-v", "-nh", "-aec", "DICOMLAKE", "127.0.0.1", str(port), *bad],
                capture_output=True,
                text=True,
                timeout=300,
            )
            ok2, bad2 = acknowledged(again.stdout + again.stderr)
            assert not bad2 and len(ok2) == len(bad)
            assert s.stop() == 0
        in_lake = collections.Counter(lake_uids(lake))
        print(
            f"disk full: {len(ok)} stored, {len(bad)} refused 0xA700 while full; after space returned "
            f"{len(ok2)} stored; lake holds {len(in_lake)}"
        )
        assert {uid_of[f] for f in ok} <= set(in_lake)
        assert set(in_lake) == set(uid_of.values()) and max(in_lake.values()) == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
