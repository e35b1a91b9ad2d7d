"""Kill -9 in the middle of an ingest, run it again: every instance exactly once, no reject lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pydicom
from pydicom.uid import generate_uid

from dicomlake.samples import pydicom_test_files

N_GOOD = 1200
N_BAD = 30


def _corpus(folder: Path) -> set[str]:
    folder.mkdir()
    uids = set()
    templates = [pydicom.dcmread(pydicom_test_files() / n) for n in ("CT_small.dcm", "MR_small.dcm")]
    for i in range(N_GOOD):
        ds = templates[i % 2]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{i:05d}.dcm")
        uids.add(ds.SOPInstanceUID)
    for i in range(N_BAD):
        (folder / f"bad{i:03d}.dcm").write_bytes(os.urandom(200 + i))
    return uids


def _ingest(src: Path, lake: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "dicomlake.cli.main",
        "ingest",
        str(src),
        "--lake",
        str(lake),
        "--workers",
        "2",
        "--batch-size",
        "60",
        "-q",
    ]
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _snapshot(lake: Path) -> dict[str, object]:
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        return {
            "instances": con.execute("SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances").fetchone(),
            "uids": {r[0] for r in con.execute("SELECT SOPInstanceUID FROM instances").fetchall()},
            "elements": con.execute("SELECT count(*), count(DISTINCT (SOPInstanceUID, path)) FROM elements").fetchone(),
            "json": con.execute("SELECT count(*), count(DISTINCT SOPInstanceUID) FROM dicom_json").fetchone(),
            "rejects": con.execute("SELECT count(*), count(DISTINCT source_path) FROM rejects").fetchone(),
        }
    finally:
        con.close()


def test_kill_9_during_ingest_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    uids = _corpus(src)
    lake = tmp_path / "lake"
    # how long a whole run takes here, to kill the next runs part-way through
    t0 = time.perf_counter()
    _ingest(src, tmp_path / "timing").communicate(timeout=300)
    full = time.perf_counter() - t0
    rng = random.Random(7)
    kills = 0
    committed_between: list[int] = []
    for _attempt in range(8):
        proc = _ingest(src, lake)
        time.sleep(rng.uniform(0.35, 0.9) * full)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the ingest and its workers, mid-flight
            kills += 1
        proc.wait()
        if (lake / "lake.duckdb").exists():
            committed_between.append(_snapshot(lake)["instances"][0])  # type: ignore[index]
        if kills >= 3 and any(0 < c < N_GOOD for c in committed_between):
            break
    final = _ingest(src, lake)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 1, err.decode()  # 1: the random files are rejected
    snap = _snapshot(lake)
    print(f"\nkills: {kills}; instances committed after each: {committed_between}")
    assert kills >= 2
    assert any(0 < c < N_GOOD for c in committed_between), "no kill landed between commits"
    assert snap["uids"] == uids
    assert snap["instances"] == (N_GOOD, N_GOOD)
    n_el, n_el_distinct = snap["elements"]  # type: ignore[misc]
    assert n_el == n_el_distinct  # no element row twice
    assert snap["json"] == (N_GOOD, N_GOOD)
    assert snap["rejects"] == (N_BAD, N_BAD)
    # every instance has exactly the element rows a clean ingest gives it
    clean = tmp_path / "clean"
    p = _ingest(src, clean)
    p.communicate(timeout=300)
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    con.execute(f"ATTACH '{clean / 'lake.duckdb'}' AS clean (READ_ONLY)")
    diff = con.execute(
        "SELECT count(*) FROM ((SELECT SOPInstanceUID, path, value_text FROM elements "
        "EXCEPT ALL SELECT SOPInstanceUID, path, value_text FROM clean.elements) UNION ALL "
        "(SELECT SOPInstanceUID, path, value_text FROM clean.elements "
        "EXCEPT ALL SELECT SOPInstanceUID, path, value_text FROM elements))"
    ).fetchone()
    con.close()
    assert diff == (0,)
