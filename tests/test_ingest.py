"""Ingest: sources of every kind, bad input kept and listed, upserts, exit codes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import duckdb
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.samples import pydicom_test_files

CT = pydicom_test_files() / "CT_small.dcm"
MR = pydicom_test_files() / "MR_small.dcm"


def _con(lake: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(lake / "lake.duckdb"), read_only=True)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_ingest_reads_folder_recursively_and_counts_non_dicom_as_skipped(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a" / "b"
    src.mkdir(parents=True)
    shutil.copy(CT, src / "ct")  # no extension
    shutil.copy(MR, tmp_path / "in" / "mr.dcm")
    (tmp_path / "in" / "README.txt").write_text("not dicom")
    (tmp_path / "in" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    rep = ingest_paths([tmp_path / "in"], tmp_path / "lake", workers=1)
    assert (rep.files, rep.instances, rep.skipped, rep.rejected) == (4, 2, 2, 0)
    assert rep.exit_code == 0
    with _con(tmp_path / "lake") as con:
        uids = {r[0] for r in con.execute("SELECT SOPInstanceUID FROM instances").fetchall()}
    assert uids == {pydicom.dcmread(CT).SOPInstanceUID, pydicom.dcmread(MR).SOPInstanceUID}


def test_file_without_preamble_is_read(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT)
    raw = tmp_path / "raw"
    raw.mkdir()
    # a bare dataset (no preamble, no file meta), as some archives store them
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buf, ds)  # explicit VR little endian, as in the source
    (raw / "bare.dcm").write_bytes(buf.getvalue())
    rep = ingest_paths([raw], tmp_path / "lake", workers=1)
    assert rep.instances == 1 and rep.rejected == 0
    with _con(tmp_path / "lake") as con:
        (rows, kvp) = con.execute("SELECT Rows, KVP FROM instances").fetchone()
    assert (rows, kvp) == (ds.Rows, float(ds.KVP))


def _bad_inputs(folder: Path) -> dict[str, bytes]:
    good = CT.read_bytes()
    ds = pydicom.dcmread(CT)
    bad_vr = bytearray(good)
    # corrupt the VR of a dataset element (SOP Class UID)
    i = good.index(b"\x08\x00\x16\x00UI")
    bad_vr[i + 4 : i + 6] = b"QZ"  # dcmtk: a later edition's VR, 4-byte length (2-byte VRs like "Q!" are read)
    bad_len = bytearray(good)
    j = good.index(b"\x08\x00\x08\x00CS")
    bad_len[j + 6 : j + 8] = (60000).to_bytes(2, "little")
    files = {
        "empty.dcm": b"",
        "random.dcm": os.urandom(4096),
        "truncated.dcm": good[: len(good) // 3][:2000],
        "bad_vr.dcm": bytes(bad_vr),
        "bad_length.dcm": bytes(bad_len),
    }
    assert ds.SOPInstanceUID
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_every_unreadable_input_is_a_reject_with_its_bytes_kept(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    files = _bad_inputs(src)
    with zipfile.ZipFile(src / "evil.zip", "w") as zf:
        zf.writestr("../x.dcm", CT.read_bytes())
        zf.writestr("/abs/y.dcm", MR.read_bytes())
        zf.writestr("ok/ct.dcm", CT.read_bytes())
    lake = tmp_path / "lake"
    outside_before = _tree(tmp_path)
    rep = ingest_paths([src], lake, workers=2)
    assert rep.instances == 1  # ok/ct.dcm from the zip
    assert rep.rejected == len(files) + 2
    assert rep.exit_code == 1
    # nothing written outside the lake folder
    new = {p for p in _tree(tmp_path) - outside_before if not p.startswith("lake")}
    assert new == set()
    assert not (tmp_path / "x.dcm").exists()
    with _con(lake) as con:
        rows = con.execute("SELECT source_path, reason, sha256, quarantine_path, size_bytes FROM rejects").fetchall()
    by_name = {Path(r[0].split("!/")[-1]).name: r for r in rows}
    assert set(by_name) == set(files) | {"x.dcm", "y.dcm"}
    assert "empty" in by_name["empty.dcm"][1]
    assert "not DICOM" in by_name["random.dcm"][1]
    assert "truncated" in by_name["truncated.dcm"][1]
    assert "invalid VR" in by_name["bad_vr.dcm"][1]
    assert "traversal" in by_name["x.dcm"][1] and "absolute" in by_name["y.dcm"][1]
    for name, data in files.items():
        _path, _reason, digest, qpath, size = by_name[name]
        assert size == len(data)
        kept = (lake / qpath).read_bytes()
        assert kept == data and hashlib.sha256(kept).hexdigest() == digest
    # the zip members' bytes are kept too, and were never extracted by name
    assert (lake / by_name["x.dcm"][3]).read_bytes() == CT.read_bytes()


def test_reingest_is_an_upsert_and_a_changed_header_updates_the_row(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CT, src / "a.dcm")
    shutil.copy(CT, src / "copy-of-a.dcm")  # the same instance twice in one run
    lake = tmp_path / "lake"
    rep = ingest_paths([src], lake, workers=1)
    assert rep.instances == 2 and rep.inserted + rep.replaced == 2
    with _con(lake) as con:
        assert con.execute("SELECT count(*) FROM instances").fetchone() == (1,)
        n_elements = con.execute("SELECT count(*) FROM elements").fetchone()[0]
        assert con.execute("SELECT count(*) FROM dicom_json").fetchone() == (1,)
    ds = pydicom.dcmread(src / "a.dcm")
    ds.StationName = "CHANGED-STATION"
    ds.KVP = 99
    ds.save_as(src / "a.dcm")
    (src / "copy-of-a.dcm").unlink()
    rep2 = ingest_paths([src], lake, workers=1)
    assert (rep2.inserted, rep2.replaced) == (0, 1)
    with _con(lake) as con:
        assert con.execute("SELECT count(*) FROM instances").fetchone() == (1,)
        assert con.execute("SELECT StationName, KVP FROM instances").fetchone() == ("CHANGED-STATION", 99.0)
        assert con.execute("SELECT count(*) FROM elements").fetchone()[0] == n_elements
        assert con.execute("SELECT value_text FROM elements WHERE path = 'StationName'").fetchall() == [
            ("CHANGED-STATION",)
        ]


def test_zip_and_dicomdir_sources(tmp_path: Path) -> None:
    dd = pydicom_test_files() / "dicomdirtests"
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(CT, "study/CT_small.dcm")
        zf.write(MR, "study/MR_small.dcm")
    rep = ingest_paths([dd / "DICOMDIR", zpath], tmp_path / "lake", workers=1)
    ds = pydicom.dcmread(dd / "DICOMDIR")
    refs = {
        tuple(r.ReferencedFileID) if not isinstance(r.ReferencedFileID, str) else (r.ReferencedFileID,)
        for r in ds.DirectoryRecordSequence
        if "ReferencedFileID" in r
    }
    assert rep.instances == len(refs) + 2
    with _con(tmp_path / "lake") as con:
        sources = dict(con.execute("SELECT source, count(*) FROM instances GROUP BY ALL").fetchall())
        zip_paths = [r[0] for r in con.execute("SELECT source_path FROM instances WHERE source = 'zip'").fetchall()]
    assert sources == {"dicomdir": len(refs), "zip": 2}
    assert sorted(p.split("!/")[1] for p in zip_paths) == ["study/CT_small.dcm", "study/MR_small.dcm"]


def test_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(CT, good / "ct.dcm")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"garbage" * 10)
    cli = [sys.executable, "-m", "dicomlake.cli.main"]
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    ok = subprocess.run([*cli, "ingest", str(good), "--lake", str(tmp_path / "l1"), "-q"], env=env, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    partial = subprocess.run(
        [*cli, "ingest", str(bad), str(good), "--lake", str(tmp_path / "l2"), "-q"], env=env, capture_output=True
    )
    assert partial.returncode == 1
    usage = subprocess.run(
        [*cli, "ingest", str(tmp_path / "nope"), "--lake", str(tmp_path / "l3"), "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert usage.returncode == 2 and "no such file" in usage.stderr
    listed = subprocess.run(
        [*cli, "rejects", "--lake", str(tmp_path / "l2"), "-f", "csv"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0 and "x.dcm" in listed.stdout and "not DICOM" in listed.stdout


def test_instance_without_sop_instance_uid_is_rejected_with_reason(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT)
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = ""
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "nouid.dcm", enforce_file_format=False)
    rep = ingest_paths([src], tmp_path / "lake", workers=1)
    assert rep.rejected == 1
    with _con(tmp_path / "lake") as con:
        assert "SOP Instance UID" in con.execute("SELECT reason FROM rejects").fetchone()[0]


@pytest.mark.parametrize("n", [3])
def test_many_instances_spread_over_workers_give_one_row_each(tmp_path: Path, n: int) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(CT)
    uids = []
    for i in range(150 * n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i
        uids.append(ds.SOPInstanceUID)
        ds.save_as(src / f"{i:04d}.dcm")
    rep = ingest_paths([src], tmp_path / "lake", workers=2, batch_size=100)
    assert rep.instances == len(uids)
    with _con(tmp_path / "lake") as con:
        got = [r[0] for r in con.execute("SELECT SOPInstanceUID FROM instances").fetchall()]
        per = con.execute("SELECT count(DISTINCT SOPInstanceUID), count(*) FROM dicom_json").fetchone()
    assert sorted(got) == sorted(uids)
    assert per == (len(uids), len(uids))
