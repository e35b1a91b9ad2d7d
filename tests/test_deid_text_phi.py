"""Clean Descriptors / Clean Structured Content use the PHI detector of the burned-in text
screen (issue 20): one module, :mod:`dicomlake.security.phi`, for both.

Values planted that the cleaning's own regexes let through (a grouped NHS number, dates with
month names, a name after "Witness", a value after "DOB"/"born", the patient's own surname
with no cue); the oracle is the output bytes, searched as `strings` would and read by pydicom.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

import dicomlake.deid.pixels as pixels
import dicomlake.deid.text as text
import dicomlake.security.phi as phi
from dicomlake.cli.main import app

PLANTED = [
    "Fairweather",
    "Zebedee",
    "943 476 5919",
    "March 1961",
    "Feb 2024",
    "Blackwood",
    "Quarrington",
    "0113 496 0321",
]
CLINICAL = ["ABDOMEN", "PELVIS", "CONTRAST", "Axial", "5mm", "Lesion stable", "CTDIvol 8.73 mGy"]


def _planted(folder: Path) -> Path:
    folder.mkdir()
    ct = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ct.PatientName = "Quarrington^Ines"
    ct.StudyDescription = "CT ABDOMEN PELVIS WITH CONTRAST, Witness Zebedee Fairweather"
    ct.SeriesDescription = "Axial 5mm NHS 943 476 5919 born 3 March 1961"
    ct.ImageComments = "quarrington repeat; CTDIvol 8.73 mGy; tel 0113 496 0321"
    ct.save_as(folder / "ct.dcm")
    sr = pydicom.dcmread(str(get_testdata_file("test-SR.dcm")))
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = Sequence([code])
    item.TextValue = "Lesion stable; discussed with Dr Blackwood on 14 Feb 2024"
    sr.ContentSequence.append(item)
    sr.save_as(folder / "sr.dcm")
    return folder


def test_deid_cleaning_uses_the_ocr_phi_detector_on_planted_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", "t" * 32)
    src = _planted(tmp_path / "in")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["deid", str(src), "--out", str(out), "--profile", "research"])
    assert res.exit_code == 0, res.output
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 2
    for f in files:
        strings = subprocess.run(["strings", "-n", "4", str(f)], capture_output=True, text=True, check=True).stdout
        leaks = [p for p in PLANTED if p.lower() in strings.lower()]
        assert leaks == [], (f.name, leaks)
    texts = " ".join(
        str(e.value) for f in files for e in pydicom.dcmread(f).iterall() if e.VR in ("LO", "UT", "LT", "ST")
    )
    for word in CLINICAL:
        assert word in texts, (word, texts)


def test_deid_cleaning_and_the_pixel_screen_share_one_detector() -> None:
    # the patterns and vocabularies are phi's own objects in both paths, not copies
    assert pixels._NHS is phi._NHS and pixels._DATE_PATTERNS is phi._DATE_PATTERNS
    assert pixels.identifying_terms is phi.identifying_terms
    assert text.TextDetector is phi.TextDetector
    assert not hasattr(text, "_CUED_NAME") and not hasattr(text, "_IDENTIFIER")
