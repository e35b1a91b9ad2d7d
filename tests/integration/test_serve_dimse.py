"""`dicomlake serve` refuses what would damage the lake, says what it filters, and logs plainly.

One ``dicomlake serve`` (output to a file, as under a supervisor) receives, from dcmtk and
pynetdicom: a CT instance, then an empty data set under the same SOP Instance UID, data
sets under UIDs that are not UIDs, an MG instance it is told not to keep (``-m``), an
association from a calling AE title it does not allow, and the README's `dcmsend` /
`storescu` commands with compressed files. Oracles: the statuses dcmtk and pynetdicom
report, pydicom's reading of the files sent, and the lake read with duckdb after the
service stopped.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.integration.netpeers import DICOMLAKE, REPO, free_port

pytestmark = [pytest.mark.integration]

CT = "CT_small.dcm"
COMPRESSED = {  # pydicom test file → its transfer syntax
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
}
MODALITIES = ("CT", "NM", "MR", "OT")  # of CT_small and COMPRESSED; MG is filtered


def _testfile(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name)))


def _part10(sop_instance_uid: str, *, empty: bool = False, modality: str = "CT") -> bytes:
    """A small CT-class Part-10 file; ``empty``: the File Meta and no data set at all."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1428.20.99"
    buf = io.BytesIO()
    if empty:
        from pydicom.filewriter import write_file_meta_info

        buf.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(buf, meta, enforce_standard=True)
        return buf.getvalue()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1428.20.98", "1.2.826.0.1.3680043.10.1428.20.97"
    ds.PatientID, ds.Modality = "FILTER", modality
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _send(port: int, path: Path, calling: str = "TESTSCU") -> int:
    """C-STORE one file with pynetdicom as it is on disk; the status the listener answered."""
    import pydicom
    from pynetdicom import AE, _config

    meta = pydicom.filereader.read_file_meta_info(path)
    _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes after the File Meta go as they are
    ae = AE(calling)
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLAKE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False


def _readme_command(tool: str) -> list[str]:
    """The README's ``tool`` command line (the first one), as words."""
    m = re.search(rf"(?m)(?:^|`)({tool} [^`\n#]*study/)", (REPO / "README.md").read_text())
    if m:
        return shlex.split(m.group(1))
    raise AssertionError(f"README.md shows no `{tool} … study/` command")


def _run_readme(tool: str, port: int, study: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(port) if a == "11112" else str(study) if a == "study/" else a for a in _readme_command(tool)]
    return subprocess.run([*argv[:1], "-v", *argv[1:]], capture_output=True, text=True, timeout=120)


@dataclass
class Session:
    lake: Path
    log: str
    statuses: dict[str, int] = field(default_factory=dict)
    sent_compressed: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID → file name, for the files the README commands sent."""
    dcmsend: subprocess.CompletedProcess[str] | None = None
    storescu: subprocess.CompletedProcess[str] | None = None
    quiet_lines: tuple[int, int] = (0, 0)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    import pydicom

    for tool in ("storescu", "echoscu", "dcmsend"):
        require_tool(tool)
    work = tmp_path_factory.mktemp("serve")
    lake, log, port = work / "lake", work / "serve.log", free_port()
    args = ["serve", "--lake", str(lake), "--port", str(port), "--no-web", "--status-every", "1"]
    args += ["--allow-aet", "PACS", "--allow-aet", "TESTSCU", "--allow-host", "localhost"]
    args += [a for m in MODALITIES for a in ("-m", m)]
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    with log.open("wb") as out:  # not a terminal: the output goes to a file, as under systemd or nohup
        proc = subprocess.Popen([*DICOMLAKE, *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while "dicomlake serve:" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        s = Session(lake, "")
        files = work / "files"
        files.mkdir()
        s.statuses["ct"] = _send(port, _testfile(CT))
        ct_uid = str(pydicom.dcmread(_testfile(CT)).SOPInstanceUID)
        (files / "empty.dcm").write_bytes(_part10(ct_uid, empty=True))
        s.statuses["empty"] = _send(port, files / "empty.dcm")
        for key, uid in (("letters", "abc.def"), ("leading-zero", "1.2.3.04.5")):
            (files / f"{key}.dcm").write_bytes(_part10(uid))
            s.statuses[key] = _send(port, files / f"{key}.dcm")
        (files / "mg.dcm").write_bytes(_part10("1.2.826.0.1.3680043.10.1428.20.96", modality="MG"))
        s.statuses["mg"] = _send(port, files / "mg.dcm")
        echo = subprocess.run(
            ["echoscu", "-aet", "INTRUDER", "-aec", "DICOMLAKE", "127.0.0.1", str(port)],
            capture_output=True,
            timeout=30,
        )
        s.statuses["intruder"] = echo.returncode
        # the README's commands, with compressed files
        study = work / "study"
        study.mkdir()
        for name in COMPRESSED:
            shutil.copy(_testfile(name), study / name)
            s.sent_compressed[str(pydicom.dcmread(study / name).SOPInstanceUID)] = name
        s.dcmsend = _run_readme("dcmsend", port, study)
        jpeg = work / "jpeg" / "study"
        jpeg.mkdir(parents=True)
        shutil.copy(_testfile("SC_rgb_jpeg_dcmtk.dcm"), jpeg / "a.dcm")
        s.storescu = _run_readme("storescu", port, jpeg)
        # nothing changes for 3 s: no new status line in the log
        time.sleep(2.5)  # let the drainer and the last status line settle
        before = log.read_text(errors="replace").count(" · refused ")
        time.sleep(3.0)
        s.quiet_lines = (before, log.read_text(errors="replace").count(" · refused "))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    s.log = log.read_text(errors="replace")
    yield s


def _lake(lake: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    import duckdb

    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_an_empty_data_set_is_refused_and_keeps_the_stored_metadata(session: Session) -> None:
    import pydicom

    assert session.statuses["ct"] == 0x0000
    assert session.statuses["empty"] == 0xC210
    ds = pydicom.dcmread(_testfile(CT))
    rows = _lake(
        session.lake,
        "SELECT PatientID, StudyInstanceUID, Modality FROM instances WHERE SOPInstanceUID = ?",
        str(ds.SOPInstanceUID),
    )
    assert rows == [(str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.Modality))]


def test_uids_that_are_not_uids_are_refused(session: Session) -> None:
    assert session.statuses["letters"] == 0xC210
    assert session.statuses["leading-zero"] == 0xC210
    assert _lake(session.lake, "SELECT count(*) FROM instances WHERE SOPInstanceUID IN ('abc.def', '1.2.3.04.5')") == [
        (0,)
    ]
    assert "'abc.def' is not a UID" in session.log


def test_modality_filter_is_logged_and_counted(session: Session) -> None:
    assert session.statuses["mg"] == 0x0000  # a deliberate filter: the sender must not retry
    assert _lake(session.lake, "SELECT count(*) FROM instances WHERE Modality = 'MG'") == [(0,)]
    assert re.search(r"not stored: modality MG is not in dimse\.modalities", session.log), session.log[-3000:]
    assert "filtered 1" in session.log


def test_a_refused_calling_ae_title_is_told_what_to_add_on_our_side(session: Session) -> None:
    assert session.statuses["intruder"] != 0
    assert "to accept INTRUDER, add it to dimse.allowed_calling_aets" in session.log, session.log[-3000:]
    assert "check that the PACS knows us" not in session.log


def test_status_lines_in_a_log_file_have_no_carriage_returns_and_only_come_on_change(session: Session) -> None:
    assert "\r" not in session.log
    lines = [ln for ln in session.log.splitlines() if " · refused " in ln]
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d associations ", ln) for ln in lines), lines
    assert len(lines) == len(set(lines))  # a line only when something changed
    before, after = session.quiet_lines
    assert after == before, "status lines were written while nothing changed"


def test_readme_commands_send_compressed_files(session: Session) -> None:
    assert session.dcmsend is not None and session.storescu is not None
    in_lake = {
        str(r[0]): str(r[1]) for r in _lake(session.lake, "SELECT SOPInstanceUID, TransferSyntaxUID FROM instances")
    }
    for uid, name in session.sent_compressed.items():
        assert in_lake.get(uid) == COMPRESSED[name], (name, session.dcmsend.stdout + session.dcmsend.stderr)
    assert "Received Store Response (Success)" in session.storescu.stdout + session.storescu.stderr, (
        session.storescu.stdout + session.storescu.stderr
    )


def test_allow_host_takes_host_names_and_names_one_that_does_not_resolve(session: Session, tmp_path: Path) -> None:
    # the session's serve ran with --allow-host localhost and accepted 127.0.0.1
    assert session.statuses["ct"] == 0x0000
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    argv = [*DICOMLAKE, "serve", "--lake", str(tmp_path / "lake"), "--no-web", "--port", str(free_port())]
    proc = subprocess.run(
        [*argv, "--allow-host", "no-such-host.invalid"], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )
    assert proc.returncode == 2
    assert "--allow-host 'no-such-host.invalid'" in proc.stderr and "10.0.0.0/24" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
