"""`dicomlake pull` against an Orthanc that limits its C-FIND answers, and pulls that stop half-way.

Orthanc runs with ``LimitFindResults`` 3 and ``LimitFindInstances`` 4: a study-, series- or
image-level C-FIND with more matches answers 3 (or 4) pending matches, then 0xFE00 (Cancel).
The synthetic PACS content has more studies than that in one date range, five studies on
one day (split by Study Time), a study with five series and a series with nine instances.
The oracle is Orthanc's REST API (``/studies``, ``/instances``) and its own log of C-MOVE
requests; the lake is read with duckdb.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.orthanc import Orthanc, require_orthanc

pytestmark = [pytest.mark.integration]

LAKE_PORT = 11113
LIMIT_STUDIES = 3
LIMIT_INSTANCES = 4
ROOT = "1.2.826.0.1.3680043.10.1428.20"
DICOMLAKE = [sys.executable, "-m", "dicomlake.cli.main"]
REPO = Path(__file__).resolve().parents[2]


def _instance(study: int, series: int, number: int, date: str, time_: str) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    ds.SOPInstanceUID = f"{ROOT}.{study}.{series}.{number}"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = f"{ROOT}.{study}"
    ds.SeriesInstanceUID = f"{ROOT}.{study}.{series}"
    ds.StudyDate, ds.StudyTime = date, time_
    ds.PatientID, ds.PatientName = f"LIM{study:02d}", f"Limit^{study}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", series, number
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _content() -> list[bytes]:
    files = []
    for i in range(8):  # one study a month
        files.append(_instance(i, 1, 1, f"2024{i + 1:02d}20", "090000"))
    for i in range(8, 13):  # five studies on one day: more than the limit, split by Study Time
        files.append(_instance(i, 1, 1, "20240315", f"{8 + i:02d}1500"))
    for series in range(1, 6):  # one study, five series; the first has nine instances
        for number in range(1, 10 if series == 1 else 2):
            files.append(_instance(13, series, number, "20240601", "120000"))
    return files


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require_orthanc()
    with Orthanc(
        tmp_path_factory.mktemp("orthanc-limits"),
        aet="PACS",
        modalities={
            "LAKE": ("DICOMLAKE", "127.0.0.1", LAKE_PORT),
            "ASTRAY": ("ASTRAY", "127.0.0.1", LAKE_PORT + 7),  # a modality entry with the wrong port
        },
        extra_config={"LimitFindResults": LIMIT_STUDIES, "LimitFindInstances": LIMIT_INSTANCES},
    ) as o:
        for data in _content():
            status, body = o.request("POST", "/instances", data, headers={"Content-Type": "application/dicom"})
            assert status == 200, body
        o.request("PUT", "/tools/log-level", b"verbose")  # C-MOVE requests appear in Orthanc's log
        yield o


def _orthanc_studies(pacs: Orthanc) -> set[str]:
    return {pacs.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in pacs.get("/studies")}


def _orthanc_instances(pacs: Orthanc) -> set[str]:
    return {pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances()}


def _argv(lake: Path, *args: str) -> list[str]:
    return [*DICOMLAKE, "pull", "--lake", str(lake), "-q", "--pacs", "PACS@127.0.0.1:4242", *args]


def _run(pacs: Orthanc, lake: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    return subprocess.run(
        pacs.command(_argv(lake, *args)), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def _lake(lake: Path, sql: str) -> list[tuple[object, ...]]:
    import duckdb

    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _moves(pacs: Orthanc, log_from: int) -> list[str]:
    """Orthanc IDs of the studies Orthanc was asked to send by C-MOVE since byte ``log_from`` of its log."""
    text = pacs.log_path.read_bytes()[log_from:].decode(errors="replace")
    requests = len(re.findall(r"Move-SCU request received", text))
    sent = re.findall(r'Sending resource (\S+) to modality "DICOMLAKE"', text)
    assert requests == len(sent), text[-2000:]
    return sent


def test_pull_with_a_find_limit_retrieves_every_study(pacs: Orthanc, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = _run(pacs, lake, "--port", str(LAKE_PORT))  # no date range: the whole PACS
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0xFE00" not in proc.stderr
    got = {str(r[0]) for r in _lake(lake, "SELECT DISTINCT StudyInstanceUID FROM instances")}
    assert got == _orthanc_studies(pacs) and len(got) == 14
    sops = {str(r[0]) for r in _lake(lake, "SELECT SOPInstanceUID FROM instances")}
    assert sops == _orthanc_instances(pacs)


def test_pull_metadata_only_with_an_instance_limit_gets_every_instance(pacs: Orthanc, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    # March to June: four monthly studies, five on 20240315 (split by Study Time), and the study with five series
    # (split by SeriesNumber) whose first series has nine instances (split by InstanceNumber)
    proc = _run(pacs, lake, "--metadata-only", "--from", "2024-03-01", "--to", "2024-06-30")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = set()
    for oid in pacs.instances():
        tags = pacs.instance_tags(oid)
        if "20240301" <= tags["StudyDate"] <= "20240630":
            expected.add(tags["SOPInstanceUID"])
    rows = _lake(lake, "SELECT SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID FROM instances")
    assert {str(r[0]) for r in rows} == expected and len(expected) == 4 + 5 + 13  # by month, 20240315, study 13
    assert len({str(r[1]) for r in rows if str(r[2]) == f"{ROOT}.13"}) == 5


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            pytest.fail(f"pull exited {proc.returncode} before {pattern!r}:\n{text[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {pattern!r} within {timeout} s:\n{path.read_text(errors='replace')[-3000:]}")


def _start(pacs: Orthanc, lake: Path, err: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    with err.open("wb") as f:
        return subprocess.Popen(pacs.command(_argv(lake, *args)), stdout=f, stderr=f, env=env, cwd=REPO)


def test_resume_sends_no_move_for_studies_already_received(pacs: Orthanc, tmp_path: Path) -> None:
    lake, err = tmp_path / "lake", tmp_path / "first.log"
    keys = ("--port", str(LAKE_PORT), "--from", "2024-01-01", "--to", "2024-02-28")  # two studies
    start = pacs.log_path.stat().st_size
    # one instance an hour: the first study is retrieved, then the run waits for the second
    first = _start(pacs, lake, err, *keys, "--per-hour", "1")
    text = _wait_for(err, r"waiting until \d\d:\d\d", first)
    assert "--per-hour 1" in text
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=60) != 0
    moved_first = _moves(pacs, start)
    assert len(moved_first) == 1
    middle = pacs.log_path.stat().st_size
    again = _run(pacs, lake, *keys, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    moved_again = _moves(pacs, middle)
    assert moved_again and moved_first[0] not in moved_again and len(moved_again) == 1
    got = {str(r[0]) for r in _lake(lake, "SELECT DISTINCT StudyInstanceUID FROM instances")}
    assert got == {f"{ROOT}.0", f"{ROOT}.1"}


def test_waiting_for_the_window_says_until_when(pacs: Orthanc, tmp_path: Path) -> None:
    now = dt.datetime.now()
    a, b = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    err = tmp_path / "window.log"
    proc = _start(pacs, tmp_path / "lake", err, "--port", str(LAKE_PORT), "--window", f"{a:%H:%M}-{b:%H:%M}")
    text = _wait_for(err, r"waiting until", proc)
    assert f"waiting until {a:%Y-%m-%d %H:%M}" in text
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0


def test_refused_c_find_is_one_line_naming_our_ae_title(pacs: Orthanc, tmp_path: Path) -> None:
    proc = _run(pacs, tmp_path / "lake", "-aet", "STRANGER", "--port", str(LAKE_PORT))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr
    assert "does not know our AE title STRANGER" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_closed_port_says_nothing_listens(pacs: Orthanc, tmp_path: Path) -> None:
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    argv = [*DICOMLAKE, "pull", "--lake", str(tmp_path / "lake"), "-q", "--pacs", "PACS@127.0.0.1:4243"]
    proc = subprocess.run(pacs.command(argv), capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert "nothing listens at 127.0.0.1:4243" in proc.stderr, proc.stderr
    assert "aborted during negotiation" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_pacs_that_cannot_reach_our_listener_is_told_where(pacs: Orthanc, tmp_path: Path) -> None:
    # Orthanc knows ASTRAY at port LAKE_PORT + 7; our listener is at LAKE_PORT
    lake = tmp_path / "lake"
    proc = _run(pacs, lake, "-aet", "ASTRAY", "--port", str(LAKE_PORT), "--from", "2024-01-01", "--to", "2024-01-31")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"it must reach ASTRAY at 127.0.0.1:{LAKE_PORT}" in proc.stderr, proc.stderr
