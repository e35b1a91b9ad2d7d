"""De-identification, round 2 (issue 20): dates, pixel-data attributes, overlays, animals,
deviations, free-text cleaning, the vault's file modes and its log of refused attempts.

Oracles: pydicom readings of the output bytes, byte scans of every output file for the
planted values, dciodvfy (dicom3tools) for IOD conformance, os.stat for file modes.
"""

from __future__ import annotations

import json
import stat
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.deid import Deidentifier, DeidSettings
from dicomlake.deid.engine import write_bytes
from tests.dciodvfy import dciodvfy_errors, require_dciodvfy

SECRET = "round-two-secret-0123456789abcdef"
VAULT_KEY = "11" * 32
runner = CliRunner()


def _testfile(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))  # type: ignore[arg-type]


def _deid(ds: Dataset, profile: str | Path) -> Dataset:
    out = Deidentifier(profile, DeidSettings(secret=SECRET)).deidentify_bytes(write_bytes(ds))
    assert out is not None
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(out))


def _day(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


@pytest.mark.parametrize("profile", ["research", "dose-audit"])
def test_deid_device_dates_shift_with_the_study_date(profile: str) -> None:
    ds = _testfile("CT_small.dcm")
    ds.StudyDate = "20150929"
    device = {
        "DateOfLastDetectorCalibration": "20150302",
        "DateOfLastCalibration": "20150301",
        "DateOfManufacture": "20100104",
        "DateOfInstallation": "20110207",
    }
    for kw, value in device.items():
        setattr(ds, kw, value)
    out = _deid(ds, profile)
    offset = _day(out.StudyDate) - _day(ds.StudyDate)
    assert offset.days != 0
    for kw, value in device.items():
        got = str(out.data_element(kw).value)
        assert got != value, kw  # a kept device date gives the patient's offset away
        assert _day(got) - _day(value) == offset, kw


def _multiframe(name: str, frames: int) -> Dataset:
    ds = _testfile(name)
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    ds.BurnedInAnnotation = "NO"
    return ds


@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb.dcm"])
def test_deid_keeps_number_of_frames_the_pixel_data_needs(tmp_path: Path, name: str) -> None:
    require_dciodvfy()
    ds = _multiframe(name, 2)
    out = _deid(ds, "basic")
    assert out.NumberOfFrames == 2
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    path = tmp_path / "out.dcm"
    out.save_as(path)
    # "PixelData has incorrect value length" when Number of Frames is dropped
    assert [e for e in dciodvfy_errors(path) if "PixelData" in e or ("Missing" in e and "Frames" in e)] == []


def _with_overlay(ds: Dataset) -> Dataset:
    ds.add_new(0x60000010, "US", ds.Rows)
    ds.add_new(0x60000011, "US", ds.Columns)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    bits = np.zeros((ds.Rows, ds.Columns), dtype=np.uint8)
    bits[10:20, 10:60] = 1  # burned-in "text"
    ds.add_new(0x60003000, "OW", np.packbits(bits.ravel(), bitorder="little").tobytes())
    return ds


def test_deid_clean_graphics_keeps_the_overlay_plane_and_zeroes_its_bits(tmp_path: Path) -> None:
    require_dciodvfy()
    profile = tmp_path / "graphics.toml"
    profile.write_text('options = ["clean-graphics"]\n')
    ds = _with_overlay(_testfile("CT_small.dcm"))
    out = _deid(ds, profile)
    for tag in (0x60000010, 0x60000011, 0x60000040, 0x60000050, 0x60000100, 0x60000102):
        assert tag in out and out[tag].value == ds[tag].value, hex(tag)
    data = out[0x60003000].value
    assert len(data) == len(ds[0x60003000].value) and not any(data)
    path = tmp_path / "out.dcm"
    out.save_as(path)
    assert [e for e in dciodvfy_errors(path) if "Overlay" in e] == []


def test_deid_animal_patient_keeps_responsible_person_empty(tmp_path: Path) -> None:
    require_dciodvfy()
    ds = _testfile("CT_small.dcm")
    ds.PatientSpeciesDescription = "Canis lupus familiaris"
    ds.PatientBreedDescription = "Beagle"
    ds.PatientBreedCodeSequence = Sequence()
    ds.BreedRegistrationSequence = Sequence()
    ds.ResponsiblePerson = "Quillfeather^Ondine"
    ds.ResponsiblePersonRole = "OWNER"
    ds.ResponsibleOrganization = "Quillfeather Kennels Ltd"
    out = _deid(ds, "basic")
    assert "ResponsiblePerson" in out and out.ResponsiblePerson in ("", None)
    assert "ResponsibleOrganization" in out and out.ResponsibleOrganization in ("", None)
    path = tmp_path / "out.dcm"
    out.save_as(path)
    assert b"Quillfeather" not in path.read_bytes()
    assert [e for e in dciodvfy_errors(path) if "Responsible" in e] == []


def test_deid_profiles_name_their_deviations_from_the_table() -> None:
    res = runner.invoke(app, ["deid", "profiles"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    deviations = [line for line in lines if "deviates from Table E.1-1" in line]
    assert any("PatientAddress" in line and "postcode-district" in line for line in deviations)
    for kw in ("PerformingPhysicianName", "InstitutionalDepartmentName"):
        assert any(kw in line and "keyed pseudonym" in line and "(E.1-1 X)" in line for line in deviations)
    assert not any("basic" in line for line in deviations)


def _free_text_set(folder: Path) -> Path:
    folder.mkdir()
    ct = _testfile("CT_small.dcm")
    ct.StudyDescription = "CT HEAD derived by Smithwick"
    ct.SeriesDescription = "Reported by Dr. Jonesbury MRN4471902"
    ct.ImageComments = "Thorax^01 repeat, see Harrowgate^Elspeth"
    ct.save_as(folder / "ct.dcm")
    sr = _testfile("test-SR.dcm")
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = Sequence([code])
    item.TextValue = "Lesion stable, dictated by Harrowgate; NHS 9434765919"
    sr.ContentSequence.append(item)
    sr.save_as(folder / "sr.dcm")
    return folder


def test_deid_clean_descriptors_remove_anyones_names_and_identifiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", SECRET)
    src = _free_text_set(tmp_path / "in")
    out, report = tmp_path / "out", tmp_path / "report.json"
    res = runner.invoke(app, ["deid", str(src), "--out", str(out), "--profile", "research", "--report", str(report)])
    assert res.exit_code == 0, res.output
    files = list(out.rglob("*.dcm"))
    assert len(files) == 2
    needles = [b"Smithwick", b"Jonesbury", b"MRN4471902", b"Harrowgate", b"Elspeth", b"9434765919"]
    leaks = [(f.name, n) for f in files for n in needles if n in f.read_bytes()]
    assert leaks == []
    texts = [str(e.value) for f in files for e in pydicom.dcmread(f).iterall() if e.VR in ("LO", "UT", "LT", "ST")]
    assert any(t.startswith("CT HEAD derived by") for t in texts)  # the clinical words stay
    assert any("Lesion stable" in t for t in texts)
    kept = json.loads(report.read_text())["kept_text"]
    assert any(v.startswith("CT HEAD") for v in kept["StudyDescription"])
    assert "cleaned free text kept" in res.output


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_deid_vault_is_private_and_refused_attempts_are_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", SECRET)
    monkeypatch.setenv("DICOMLAKE_DEID__VAULT_KEY", VAULT_KEY)
    src = tmp_path / "in"
    src.mkdir()
    _testfile("CT_small.dcm").save_as(src / "ct.dcm")
    vault = tmp_path / "secure" / "vault.db"
    res = runner.invoke(app, ["deid", str(src), "--out", str(tmp_path / "out"), "--vault", str(vault)])
    assert res.exit_code == 0, res.output
    modes = {p.name: _mode(p) for p in vault.parent.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes
    pseudonym = str(pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm"))).PatientID)
    ok = runner.invoke(app, ["reidentify", pseudonym, "--vault", str(vault), "--purpose", "audit query"])
    assert ok.exit_code == 0, ok.output
    monkeypatch.delenv("DICOMLAKE_DEID__VAULT_KEY")
    no_key = runner.invoke(app, ["reidentify", pseudonym, "--vault", str(vault), "--purpose", "curious"])
    monkeypatch.setenv("DICOMLAKE_DEID__VAULT_KEY", "22" * 32)
    wrong = runner.invoke(app, ["reidentify", pseudonym, "--vault", str(vault), "--purpose", "guessing"])
    assert no_key.exit_code == 2 and wrong.exit_code == 2
    log = Path(f"{vault}.access.log")
    assert _mode(log) == 0o600
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["action"], e.get("reason"), e["purpose"]) for e in entries] == [
        ("reidentify", None, "audit query"),
        ("refused", "no key", "curious"),
        ("refused", "wrong key", ""),
    ]
    assert all(e["pseudonyms"] in ([pseudonym], []) for e in entries)
    original = str(_testfile("CT_small.dcm").PatientID)
    assert original not in log.read_text()
