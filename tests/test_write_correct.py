"""correct: in-place corrections with the Original Attributes Sequence (PS3.3 C.12.1.1.9).

Requirements listed from the standard, not from our writer: the Type 1 and Type 2
attributes of the Original Attributes Macro (highdicom's copy of PS3.3 Table
C.12.1.1.9-1); C.12.1.1.9.1 (prior values in a single Modified Attributes Sequence Item,
added attributes with zero length, existing Items preserved); the SOP Instance UID is
unchanged. Checked also by dciodvfy, dcmdump and, for the lake, SQL over the elements.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.errors import WriteError
from dicomlake.write.capture import PatientStudy, wrap_paths
from dicomlake.write.correct import correct_file
from tests import factories_write as fw
from tests.dciodvfy import dcmdump_top_level, run_dciodvfy

# what the writers produce must satisfy pydicom with validation raising, not warning
pytestmark = pytest.mark.usefixtures("strict_pydicom")


def macro_attributes(typ: str) -> list[str]:
    """Keywords of the given Type in Original Attributes Sequence Items (PS3.3)."""
    from highdicom._standard_utils import get_module_attribute_map

    return [
        a["keyword"]
        for a in get_module_attribute_map()["sop-common"]
        if a["path"] == ["OriginalAttributesSequence"] and a["type"] == typ
    ]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ct = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    d = tmp_path / "in"
    d.mkdir()
    report = wrap_paths(
        [fw.phone_photo_jpeg(d), fw.three_page_pdf(d)], tmp_path / "sc", patient=PatientStudy(patient_id="OLD-1")
    )
    assert report.failed == []
    photo, pdf = (w.path for w in report.written)
    return {"ct": ct, "photo": photo, "pdf": pdf}


def assert_item_as_standard_requires(item: pydicom.Dataset) -> None:
    for keyword in macro_attributes("1"):
        if keyword in ("ModifiedAttributesSequence",):
            assert len(item.ModifiedAttributesSequence) == 1  # "Only a single Item"
            continue
        assert item.get(keyword) not in (None, ""), keyword
    for keyword in macro_attributes("2"):
        assert keyword in item, keyword
    assert item.ReasonForTheAttributeModification in ("CORRECT", "COERCE")


@pytest.mark.parametrize("name", ["ct", "photo", "pdf"])
def test_correct_keeps_uid_records_old_values_and_validates(files: dict[str, Path], name: str) -> None:
    path = files[name]
    before = pydicom.dcmread(path)
    result = correct_file(
        path,
        {"PatientID": "NEW-9", "PatientName": "Ørsted^Hans", "AccessionNumber": "ACC-77"},
        reason="CORRECT",
        source_of_previous_values="St Elsewhere Radiology",
    )
    after = pydicom.dcmread(path)
    assert after.SOPInstanceUID == before.SOPInstanceUID == result.sop_instance_uid
    assert (after.PatientID, str(after.PatientName), after.AccessionNumber) == ("NEW-9", "Ørsted^Hans", "ACC-77")
    assert {"Type 1": macro_attributes("1"), "Type 2": macro_attributes("2")} == {
        "Type 1": [
            "ModifiedAttributesSequence",
            "AttributeModificationDateTime",
            "ModifyingSystem",
            "ReasonForTheAttributeModification",
        ],
        "Type 2": ["SourceOfPreviousValues"],
    }
    item = after.OriginalAttributesSequence[-1]
    assert_item_as_standard_requires(item)
    old = item.ModifiedAttributesSequence[0]
    assert old.PatientID == before.PatientID
    assert old.PatientName == before.PatientName
    # absent/empty before → present with zero length (C.12.1.1.9.1)
    assert old.AccessionNumber in ("", None) and not before.get("AccessionNumber")
    assert "IssuerOfPatientID" in old  # C.12.1.1.9: included with a Patient ID change
    assert item.SourceOfPreviousValues == "St Elsewhere Radiology"
    assert item.ModifyingSystem == "dicomlake"
    assert run_dciodvfy(path).errors == []
    dumped = dcmdump_top_level(path)
    assert dumped["00100020"][1] == "NEW-9" and dumped["00100010"][1] == "Ørsted^Hans"
    assert dumped["00080018"][1] == before.SOPInstanceUID


def test_correct_twice_appends_and_preserves_existing_items(files: dict[str, Path]) -> None:
    path = files["ct"]
    correct_file(path, {"PatientID": "A"}, reason="CORRECT")
    correct_file(path, {"PatientID": "B"}, reason="COERCE", source_of_previous_values="MPI")
    ds = pydicom.dcmread(path)
    items = ds.OriginalAttributesSequence
    assert len(items) == 2
    assert items[0].ReasonForTheAttributeModification == "CORRECT"
    assert items[1].ReasonForTheAttributeModification == "COERCE"
    assert items[1].ModifiedAttributesSequence[0].PatientID == "A"
    assert ds.PatientID == "B"
    assert run_dciodvfy(path).errors == []


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"PatientIdentifier": "1"}, ["'PatientIdentifier' is not a DICOM keyword"]),
        ({"PatientBirthDate": "1970-13-45"}, ["PatientBirthDate", "not a valid DA"]),
        ({"InstanceNumber": "three"}, ["InstanceNumber", "not a valid IS"]),
        ({"SOPInstanceUID": "1.2.3"}, ["cannot be corrected in place", "derive"]),
        ({"PatientID": "x", "Foo": "1", "StudyDate": "2024"}, ["'Foo'", "StudyDate"]),
    ],
)
def test_correct_bad_requests_name_the_problem_and_leave_the_file_unchanged(
    files: dict[str, Path], changes: dict[str, str], words: list[str]
) -> None:
    path = files["ct"]
    before = path.read_bytes()
    with pytest.raises(WriteError) as info:
        correct_file(path, changes, reason="CORRECT")
    for word in words:
        assert word in str(info.value)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_correct_cli_batch_from_csv(files: dict[str, Path], tmp_path: Path) -> None:
    sheet = tmp_path / "fixes.csv"
    sheet.write_text(
        "path,PatientID,AccessionNumber,reason,source\n"
        f"{files['ct']},MRN-1,,COERCE,PAS import\n"
        f"{files['photo'].relative_to(tmp_path)},MRN-2,ACC-2,,\n"
    )
    result = CliRunner().invoke(app, ["correct", "--csv", str(sheet), "--reason", "CORRECT"])
    assert result.exit_code == 0, result.output
    ct, photo = pydicom.dcmread(files["ct"]), pydicom.dcmread(files["photo"])
    assert ct.PatientID == "MRN-1" and ct.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "COERCE"
    assert ct.OriginalAttributesSequence[-1].SourceOfPreviousValues == "PAS import"
    assert photo.PatientID == "MRN-2" and photo.AccessionNumber == "ACC-2"
    assert photo.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "CORRECT"


def test_correct_cli_exit_codes(files: dict[str, Path]) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["correct", str(files["pdf"]), "--set", "PatientID=Z", "--reason", "CORRECT"])
    assert ok.exit_code == 0, ok.output
    missing = files["pdf"].parent / "missing.dcm"
    partial = runner.invoke(
        app, ["correct", str(files["pdf"]), str(missing), "--set", "PatientSex=O", "--reason", "CORRECT"]
    )
    assert partial.exit_code == 1 and str(missing) in partial.output
    assert pydicom.dcmread(files["pdf"]).PatientSex == "O"
    bad = runner.invoke(app, ["correct", str(files["pdf"]), "--set", "Nope=1", "--reason", "CORRECT"])
    assert bad.exit_code == 1 and "Nope" in bad.output
    usage = runner.invoke(app, ["correct", str(files["pdf"]), "--set", "PatientID=1", "--reason", "FIX"])
    assert usage.exit_code == 2
    usage2 = runner.invoke(app, ["correct", str(files["pdf"]), "--reason", "CORRECT"])
    assert usage2.exit_code == 2


def test_correct_with_lake_updates_rows_and_history_is_queryable(files: dict[str, Path], tmp_path: Path) -> None:
    pipeline = pytest.importorskip("dicomlake.ingest.pipeline", reason="core ingest not present yet")
    import dicomlake

    lake = tmp_path / "lake"
    pipeline.ingest_paths([files["photo"]], lake, workers=1)
    uid = pydicom.dcmread(files["photo"]).SOPInstanceUID
    result = CliRunner().invoke(
        app,
        [
            "correct",
            str(files["photo"]),
            str(files["ct"]),
            "--set",
            "PatientID=LAKE-2",
            "--reason",
            "CORRECT",
            "--source",
            "Outside",
            "--lake",
            str(lake),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "not in the lake; not added" in result.output  # ct.dcm was never ingested
    with dicomlake.open(lake) as handle:
        rows = handle.sql("SELECT SOPInstanceUID, PatientID FROM instances")
        assert rows["SOPInstanceUID"].to_list() == [uid]  # upsert, no duplicate, ct not added
        assert rows["PatientID"].to_list() == ["LAKE-2"]
        history = handle.sql(
            "SELECT path, value_text FROM elements WHERE SOPInstanceUID = ? AND keyword = 'PatientID' ORDER BY path",
            [uid],
        )
        assert "OLD-1" in history["value_text"].to_list()
        assert any(p.startswith("OriginalAttributesSequence") for p in history["path"].to_list())
        reasons = handle.sql(
            "SELECT value_text FROM elements "
            "WHERE SOPInstanceUID = ? AND keyword = 'ReasonForTheAttributeModification'",
            [uid],
        )
        assert reasons["value_text"].to_list() == ["CORRECT"]
