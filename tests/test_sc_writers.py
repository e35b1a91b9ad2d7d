"""Issue 21, writers: `correct` and the capture writer checked by dciodvfy and pydicom."""

from __future__ import annotations

import hashlib

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from dicomlake.cli.main import app
from tests.dciodvfy import dciodvfy_errors, require_dciodvfy
from tests.factories_sc import write_dose_screen

runner = CliRunner()


@pytest.fixture
def sc_file(tmp_path):
    require_dciodvfy()
    case = write_dose_screen(tmp_path, "screen", seed=31)
    assert dciodvfy_errors(case.path) == []
    return case.path


def test_correct_body_part_of_a_wrapped_sc_leaves_no_empty_laterality(sc_file):
    assert "Laterality" in dcmread(sc_file) and dcmread(sc_file).Laterality == ""
    result = runner.invoke(app, ["correct", str(sc_file), "--set", "BodyPartExamined=CHEST", "--reason", "CORRECT"])
    assert result.exit_code == 0, result.output
    ds = dcmread(sc_file)
    assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds
    modified = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert "Laterality" in modified  # the removal is recorded (C.12.1.1.9)
    assert dciodvfy_errors(sc_file) == []


def test_correct_to_a_paired_body_part_keeps_the_type_2c_laterality(sc_file):
    result = runner.invoke(app, ["correct", str(sc_file), "--set", "BodyPartExamined=KNEE", "--reason", "CORRECT"])
    assert result.exit_code == 0, result.output
    ds = dcmread(sc_file)
    assert ds.BodyPartExamined == "KNEE" and ds.Laterality == ""
    assert dciodvfy_errors(sc_file) == []


def test_correct_refuses_a_body_part_that_is_not_a_defined_term(sc_file):
    before = hashlib.sha256(sc_file.read_bytes()).hexdigest()
    result = runner.invoke(app, ["correct", str(sc_file), "--set", "BodyPartExamined=BRAINZ", "--reason", "CORRECT"])
    assert result.exit_code != 0
    assert "BRAINZ" in result.output and "CID 4031" in result.output and "BRAIN" in result.output
    assert "Traceback" not in result.output
    assert hashlib.sha256(sc_file.read_bytes()).hexdigest() == before


def test_correct_patient_id_adds_no_issuer_to_the_dataset(sc_file):
    """The absent Issuer of Patient ID is recorded (zero length) only in the Modified Attributes
    Sequence item, as C.12.1.1.9 asks; the dataset itself gains no empty IssuerOfPatientID."""
    assert "IssuerOfPatientID" not in dcmread(sc_file)
    result = runner.invoke(app, ["correct", str(sc_file), "--set", "PatientID=NEW123", "--reason", "CORRECT"])
    assert result.exit_code == 0, result.output
    ds = dcmread(sc_file)
    assert ds.PatientID == "NEW123" and "IssuerOfPatientID" not in ds
    modified = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert modified.PatientID != "NEW123" and modified.IssuerOfPatientID in ("", None)
    assert dciodvfy_errors(sc_file) == []
