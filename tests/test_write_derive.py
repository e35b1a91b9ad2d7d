"""derive: derived images carry what PS3.3 requires, checked against the standard's tables.

Requirements listed from the standard, not from our writer:
- C.7.6.1.1.2 Image Type: value 1 DERIVED, value 2 SECONDARY; a new SOP Instance UID
  when the pixels differ.
- C.12.4 General Reference Module (highdicom's copy of the PS3.3 tables): the Type 1
  attributes of each Source Image Sequence Item and of the code Items.
- PS3.16 CID 7202 / CID 7203 (pydicom's tables generated from PS3.16).
- dciodvfy: 0 errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr.codedict import codes
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.errors import WriteError
from dicomlake.write.capture import PatientStudy, wrap_paths
from dicomlake.write.derive import Derivation, derive_files, derive_image
from tests import factories_write as fw
from tests.dciodvfy import dcmdump_top_level, run_dciodvfy

# what the writers produce must satisfy pydicom with validation raising, not warning
pytestmark = pytest.mark.usefixtures("strict_pydicom")


def type1_in_items(module: str, path: list[str]) -> list[str]:
    """Keywords of Type 1 attributes inside the Items at *path* of *module* (PS3.3)."""
    from highdicom._standard_utils import get_module_attribute_map

    return [a["keyword"] for a in get_module_attribute_map()[module] if a["path"] == path and a["type"] == "1"]


def cid_code_values(cid: int) -> set[str]:
    """Every code value of a PS3.16 context group."""
    values: set[str] = set()
    collection = getattr(codes, f"cid{cid}")
    for names in cid_concepts[cid].values():
        for name in names:
            values.add(str(getattr(collection, name).value))
    return values


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("derive-src")
    report = wrap_paths(
        [fw.phone_photo_jpeg(d), fw.png_16bit(d), fw.skewed_scan_tiff(d)],
        d / "dcm",
        patient=PatientStudy(patient_id="P-7"),
    )
    assert report.failed == []
    found = {w.path.stem: w.path for w in report.written}
    return {
        "ct": Path(get_testdata_file("CT_small.dcm")),
        "mr": Path(get_testdata_file("MR_small.dcm")),
        "photo": found["phone_photo"],
        "png16": found["gray16"],
        "page1": found["scan_75dpi-p001"],
        "page2": found["scan_75dpi-p002"],
    }


def assert_derived_as_standard_requires(derived: Path, srcs: list[Path], code: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(derived)
    originals = [pydicom.dcmread(p) for p in srcs]
    first = originals[0]
    assert run_dciodvfy(derived).errors == []
    # C.7.6.1.1.2
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert list(ds.ImageType)[2:] == list(first.get("ImageType", []))[2:]
    assert ds.SOPInstanceUID not in {o.SOPInstanceUID for o in originals}
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID
    assert ds.SOPClassUID == first.SOPClassUID
    # Patient and study kept; acquisition kept; creation and content new.
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert ds.get(keyword) == first.get(keyword)
    for keyword in ("AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime"):
        assert ds.get(keyword) == first.get(keyword)
    assert ds.InstanceCreationDate and ds.ContentDate == ds.InstanceCreationDate
    # C.12.4: Source Image Sequence Items with their Type 1 attributes and a CID 7202 purpose.
    required = type1_in_items("general-reference", ["SourceImageSequence"])
    assert {"ReferencedSOPClassUID", "ReferencedSOPInstanceUID"} <= set(required)
    assert len(ds.SourceImageSequence) == len(originals)
    for item, original in zip(ds.SourceImageSequence, originals, strict=True):
        for keyword in required:
            assert item.get(keyword), keyword
        assert item.ReferencedSOPInstanceUID == original.SOPInstanceUID
        assert item.ReferencedSOPClassUID == original.SOPClassUID
        purpose = item.PurposeOfReferenceCodeSequence[0]
        for keyword in type1_in_items("general-reference", ["SourceImageSequence", "PurposeOfReferenceCodeSequence"]):
            assert purpose.get(keyword), keyword
        assert purpose.CodeValue in cid_code_values(7202) and purpose.CodingSchemeDesignator == "DCM"
    # Derivation Code Sequence from CID 7203, with its Type 1 attributes; a description.
    derivation = ds.DerivationCodeSequence[0]
    for keyword in type1_in_items("general-reference", ["DerivationCodeSequence"]):
        assert derivation.get(keyword), keyword
    assert derivation.CodeValue == code and code in cid_code_values(7203)
    assert ds.DerivationDescription
    # Private attributes removed; pixel module consistent with the pixels.
    assert not any(elem.tag.is_private for elem in ds.iterall())
    arr = ds.pixel_array
    assert (ds.Rows, ds.Columns) == arr.shape[:2]
    assert int(arr.max()) < (1 << ds.BitsStored) and ds.HighBit == ds.BitsStored - 1
    if ds.SamplesPerPixel == 1:
        assert ds.SmallestImagePixelValue == int(arr.min())
        assert ds.LargestImagePixelValue == int(arr.max())
    # dcmtk reads the same new identity.
    dumped = dcmdump_top_level(derived)
    assert dumped["00080018"][1] == ds.SOPInstanceUID
    assert dumped["00080008"][1].startswith("DERIVED\\SECONDARY")
    return ds


@pytest.mark.parametrize("name", ["ct", "mr", "photo", "png16", "page1"])
def test_derive_gaussian_blur_meets_ps33_requirements(sources: dict[str, Path], tmp_path: Path, name: str) -> None:
    report = derive_files([sources[name]], tmp_path, Derivation.of("113088", "Gaussian blur, sigma 1.5 px"))
    assert report.failed == []
    ds = assert_derived_as_standard_requires(report.written[0].path, [sources[name]], "113088")
    original = pydicom.dcmread(sources[name])
    assert not np.array_equal(ds.pixel_array, original.pixel_array)


def test_derive_ct_keeps_axial_and_private_tags_go(sources: dict[str, Path], tmp_path: Path) -> None:
    original = pydicom.dcmread(sources["ct"])
    assert any(elem.tag.is_private for elem in original)  # the source has private tags
    report = derive_files([sources["ct"]], tmp_path, Derivation.of("113087", "3x3 smoothing"))
    ds = assert_derived_as_standard_requires(report.written[0].path, [sources["ct"]], "113087")
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.ContributingEquipmentSequence[0].Manufacturer == original.Manufacturer
    assert ds.Manufacturer == "dicomlake"


def test_derive_mean_of_pages_references_every_source(sources: dict[str, Path], tmp_path: Path) -> None:
    report = derive_files([sources["page1"], sources["page2"]], tmp_path, Derivation.of("113049", "mean of two pages"))
    assert len(report.written) == 1
    ds = assert_derived_as_standard_requires(report.written[0].path, [sources["page1"], sources["page2"]], "113049")
    a, b = (pydicom.dcmread(sources[k]).pixel_array.astype(float) for k in ("page1", "page2"))
    assert np.array_equal(ds.pixel_array, np.rint((a + b) / 2).astype(ds.pixel_array.dtype))


def test_derive_python_api_recomputes_bits_for_signed_output(sources: dict[str, Path], tmp_path: Path) -> None:
    src = pydicom.dcmread(sources["png16"])
    ds = derive_image(src, lambda a: a.astype(np.int32) // 4 - 8000, Derivation.of("113062", "minus offset"))
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    assert ds.SmallestImagePixelValue == -8000 and ds.LargestImagePixelValue == 65535 // 4 - 8000
    assert ds.BitsStored >= 15 and ds.HighBit == ds.BitsStored - 1
    assert "WindowCenter" in ds
    path = tmp_path / "api.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert_derived_as_standard_requires(path, [sources["png16"]], "113062")


def test_derive_unknown_code_is_refused_with_the_list(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="not in CID 7203"):
        Derivation.of("999999", "nonsense")


def test_derive_cli_writes_and_exits_zero(sources: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["derive", str(sources["mr"]), "--code", "113088", "--description", "blur", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    written = list(tmp_path.glob("*.dcm"))
    assert len(written) == 1 and run_dciodvfy(written[0]).errors == []


def test_derive_cli_bad_code_is_usage_error(sources: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["derive", str(sources["mr"]), "--code", "12", "--description", "x", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and list(tmp_path.iterdir()) == []
