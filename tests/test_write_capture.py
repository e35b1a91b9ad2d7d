"""wrap: SC, VL Photographic and Encapsulated PDF from field inputs, checked by outside oracles.

Oracles: dicom3tools ``dciodvfy`` (0 errors), dcmtk ``dcmdump`` (reads back the same
values as pydicom), Pillow (the input pixels), the input bytes (JPEG and PDF payloads),
and the IOD/module tables of PS3.3 as shipped by highdicom (generated from the
standard, not from our writer).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from dicomlake.write.capture import PatientStudy, WrapOptions, wrap_paths
from dicomlake.write.codes import CaptureIOD, SourceKind
from tests import factories_write as fw
from tests.dciodvfy import dcmdump_top_level, run_dciodvfy

# what the writers produce must satisfy pydicom with validation raising, not warning
pytestmark = pytest.mark.usefixtures("strict_pydicom")

VR_BINARY = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}


# -- oracles from the standard ------------------------------------------------------------


def iod_requirements(sop_class_uid: str) -> list[tuple[str, str, str]]:
    """(module, keyword, type) of every top-level Type 1 and Type 2 attribute of the
    IOD's Mandatory modules, from PS3.3 tables (highdicom's copy of the standard)."""
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    iod = get_sop_class_iod_map()[sop_class_uid]
    modules = get_module_attribute_map()
    out = []
    for module in get_iod_module_map()[iod]:
        if module["usage"] != "M":
            continue
        for attr in modules[module["key"]]:
            if not attr["path"] and attr["type"] in ("1", "2"):
                out.append((module["key"], attr["keyword"], attr["type"]))
    return out


def missing_requirements(ds: pydicom.Dataset) -> list[str]:
    problems = []
    for module, keyword, typ in iod_requirements(str(ds.SOPClassUID)):
        if keyword not in ds:
            problems.append(f"{module}: {keyword} (Type {typ}) absent")
        elif typ == "1" and (ds[keyword].value is None or ds[keyword].value == ""):
            problems.append(f"{module}: {keyword} (Type 1) empty")
    return problems


def assert_dcmdump_matches(path: Path) -> None:
    """dcmtk reads every top-level text/number element with the value pydicom reads."""
    dumped = dcmdump_top_level(path)
    ds = pydicom.dcmread(path)
    elems = list(ds.file_meta) + list(ds)
    compared = 0
    for elem in elems:
        if elem.VR in VR_BINARY or (elem.tag.group == 0x0002 and elem.tag.element == 0):
            continue
        key = f"{elem.tag.group:04x}{elem.tag.element:04x}"
        assert key in dumped, f"dcmdump does not show {elem.keyword} in {path.name}"
        vr, text = dumped[key]
        assert vr == elem.VR, (elem.keyword, vr, elem.VR)
        value: Any = elem.value
        if value is None or value == "":
            expected = ""
        elif isinstance(value, (list, pydicom.multival.MultiValue)):
            expected = "\\".join(str(v) for v in value)
        else:
            expected = str(value)
        if elem.VR in ("DS", "FL", "FD"):
            assert [float(v) for v in text.split("\\")] == pytest.approx([float(v) for v in expected.split("\\")])
        else:
            assert text == expected, (elem.keyword, text, expected)
        compared += 1
    assert compared > 20


def assert_valid(path: Path) -> None:
    report = run_dciodvfy(path)
    assert report.errors == [], report.output
    assert_dcmdump_matches(path)
    assert missing_requirements(pydicom.dcmread(path)) == []


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    return {
        "photo": fw.phone_photo_jpeg(d),
        "photo444": fw.photo_jpeg_444(d),
        "gray_jpeg": fw.grayscale_jpeg(d),
        "scan": fw.skewed_scan_tiff(d),
        "screenshot": fw.screenshot_png(d),
        "png16": fw.png_16bit(d),
        "bmp": fw.bmp_rgb(d),
        "tiff": fw.tiff_rgb(d),
        "pdf": fw.three_page_pdf(d),
        "cmyk": fw.cmyk_jpeg(d),
        "progressive": fw.progressive_jpeg(d),
        "corrupt": fw.corrupt_jpeg(d),
        "text": fw.not_an_image(d),
    }


@pytest.fixture(scope="module")
def wrapped(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("wrapped")
    names = ["photo", "photo444", "gray_jpeg", "scan", "screenshot", "png16", "bmp", "tiff", "pdf"]
    report = wrap_paths(
        [inputs[n] for n in names],
        out,
        patient=PatientStudy(patient_id="MRN-0042", patient_name="Müller^Jürgen", accession_number="A1"),
        options=WrapOptions(body_part_examined="HAND"),
    )
    assert report.failed == []
    by_source: dict[str, list[Path]] = {}
    for written in report.written:
        name = next(n for n in names if inputs[n] == written.source)
        by_source.setdefault(name, []).append(written.path)
    return by_source


# -- every object is valid --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["photo", "photo444", "gray_jpeg", "scan", "screenshot", "png16", "bmp", "tiff", "pdf"]
)
def test_wrap_output_passes_dciodvfy_dcmdump_and_iod_tables(wrapped: dict[str, list[Path]], name: str) -> None:
    for path in wrapped[name]:
        assert_valid(path)


def test_wrap_photo_keeps_jpeg_bitstream_byte_identical(
    inputs: dict[str, Path], wrapped: dict[str, list[Path]]
) -> None:
    ds = pydicom.dcmread(wrapped["photo"][0])
    source = inputs["photo"].read_bytes()
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[: len(source)] == source
    assert frame[len(source) :] in (b"", b"\x00")  # one pad byte after EOI for even length
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    # Pillow reports the JPEG's own sampling: 4:2:0 → YBR_FULL_422 (PS3.5 8.2.1).
    with Image.open(inputs["photo"]) as img:
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0
        assert (ds.Columns, ds.Rows) == img.size
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.SamplesPerPixel == 3 and ds.BitsAllocated == 8
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"


def test_wrap_photo_is_vl_photographic_with_exif_time_icc_and_camera(
    inputs: dict[str, Path], wrapped: dict[str, list[Path]]
) -> None:
    ds = pydicom.dcmread(wrapped["photo"][0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert ds.Modality == "XC"
    # EXIF DateTimeOriginal 2024:03:15 14:22:05, SubsecTimeOriginal 250, offset +01:00
    assert ds.ContentDate == "20240315" and ds.ContentTime.startswith("142205.25")
    assert ds.AcquisitionDateTime.startswith("20240315142205.25") and ds.AcquisitionDateTime.endswith("+0100")
    assert ds.TimezoneOffsetFromUTC == "+0100"
    with Image.open(inputs["photo"]) as img:
        assert ds.ICCProfile == img.info["icc_profile"]
    assert ds.Manufacturer == fw.PHOTO_MAKE and ds.ManufacturerModelName == fw.PHOTO_MODEL
    assert ds.BurnedInAnnotation == "NO"
    assert ds.PatientName == "Müller^Jürgen" and ds.SpecificCharacterSet == "ISO_IR 192"
    # pydicom decodes the encapsulated JPEG to the same pixels Pillow decodes.
    with Image.open(inputs["photo"]) as img:
        expected = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(ds.pixel_array.astype(int) - expected).mean() < 2.0


@pytest.mark.parametrize("name", ["screenshot", "png16", "bmp", "tiff"])
def test_wrap_lossless_inputs_decode_to_the_input_pixels_exactly(
    inputs: dict[str, Path], wrapped: dict[str, list[Path]], name: str
) -> None:
    ds = pydicom.dcmread(wrapped[name][0])
    with Image.open(inputs[name]) as img:
        expected = np.asarray(img.convert("RGB") if img.mode == "RGBA" else img)
    assert ds.pixel_array.dtype == expected.dtype
    assert np.array_equal(ds.pixel_array, expected)
    assert ds.LossyImageCompression == "00"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_wrap_16bit_png_keeps_all_16_bits(wrapped: dict[str, list[Path]]) -> None:
    ds = pydicom.dcmread(wrapped["png16"][0])
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert int(ds.pixel_array.max()) == 65535 and int(ds.pixel_array.min()) == 0


def test_wrap_multipage_scan_becomes_one_series_of_sc_with_scan_attributes(
    inputs: dict[str, Path], wrapped: dict[str, list[Path]]
) -> None:
    paths = wrapped["scan"]
    assert len(paths) == fw.SCAN_PAGES
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert len({d.SOPInstanceUID for d in datasets}) == fw.SCAN_PAGES
    assert [int(d.InstanceNumber) for d in datasets] == list(range(1, fw.SCAN_PAGES + 1))
    with Image.open(inputs["scan"]) as img:
        for index, ds in enumerate(datasets):
            img.seek(index)
            assert np.array_equal(ds.pixel_array, np.asarray(img))
    for ds in datasets:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.ConversionType == "SD"
        assert ds.BurnedInAnnotation == "YES"
        assert [float(v) for v in ds.NominalScannedPixelSpacing] == pytest.approx([25.4 / 75] * 2, rel=1e-5)


def test_wrap_screenshot_is_workstation_capture_with_burned_in_text(wrapped: dict[str, list[Path]]) -> None:
    ds = pydicom.dcmread(wrapped["screenshot"][0])
    assert ds.ConversionType == "WSD"
    assert ds.BurnedInAnnotation == "YES"
    assert ds.PhotometricInterpretation == "RGB"
    assert "alpha channel is fully opaque" in ds.ImageComments


def test_wrap_pdf_is_encapsulated_byte_for_byte(inputs: dict[str, Path], wrapped: dict[str, list[Path]]) -> None:
    ds = pydicom.dcmread(wrapped["pdf"][0])
    source = inputs["pdf"].read_bytes()
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.EncapsulatedDocumentLength == len(source)
    assert ds.EncapsulatedDocument[: len(source)] == source
    assert ds.Modality == "DOC"
    assert ds.DocumentTitle == "Outside report"
    assert len(re.findall(rb"/Type\s*/Page(?![a-z])", source)) == fw.PDF_PAGES
    assert len(wrapped["pdf"]) == 1


def test_wrap_444_jpeg_is_kept_byte_for_byte_as_ybr_full_422(
    inputs: dict[str, Path], wrapped: dict[str, list[Path]]
) -> None:
    """Issue 21: a 4:4:4 JPEG was decoded and stored natively; PS3.5 Table 8.2.1-1 labels it
    YBR_FULL_422 (see tests/test_sc_writers.py for every sampling, checked by dciodvfy and DCMTK)."""
    ds = pydicom.dcmread(wrapped["photo444"][0])
    source = inputs["photo444"].read_bytes()
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[: len(source)] == source
    assert ds.LossyImageCompression == "01"
    with Image.open(inputs["photo444"]) as img:
        assert np.abs(ds.pixel_array.astype(int) - np.asarray(img).astype(int)).mean() < 2.0


def test_wrap_like_takes_patient_and_study_from_existing(inputs: dict[str, Path], tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    existing = Path(get_testdata_file("CT_small.dcm"))
    ref = pydicom.dcmread(existing)
    report = wrap_paths([inputs["bmp"]], tmp_path, patient=PatientStudy.like(existing))
    ds = pydicom.dcmread(report.written[0].path)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyID"):
        assert ds[keyword].value == ref[keyword].value
    assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
    assert run_dciodvfy(report.written[0].path).errors == []


# -- inputs that cannot be written as they are ---------------------------------------------


def _no_files_left(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_wrap_refuses_cmyk_jpeg_with_the_fix_and_writes_nothing(inputs: dict[str, Path], tmp_path: Path) -> None:
    report = wrap_paths([inputs["cmyk"]], tmp_path / "out")
    assert report.written == [] and len(report.failed) == 1
    message = report.failed[0][1]
    assert str(inputs["cmyk"]) in message and "CMYK" in message and "--convert" in message
    assert _no_files_left(tmp_path / "out") == []


def test_wrap_converts_cmyk_jpeg_when_asked_and_states_it(inputs: dict[str, Path], tmp_path: Path) -> None:
    report = wrap_paths([inputs["cmyk"]], tmp_path, options=WrapOptions(convert=True))
    assert report.failed == []
    ds = pydicom.dcmread(report.written[0].path)
    assert ds.PhotometricInterpretation == "RGB"
    assert "CMYK converted to RGB" in ds.ImageComments
    assert run_dciodvfy(report.written[0].path).errors == []


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("corrupt", ["corrupt JPEG", "truncated"]),
        ("text", ["unsupported format", "JPEG, PNG, TIFF, BMP and PDF"]),
        ("progressive", ["progressive", "--convert"]),
    ],
)
def test_wrap_bad_input_names_the_input_and_the_fix_and_leaves_nothing(
    inputs: dict[str, Path], tmp_path: Path, name: str, words: list[str]
) -> None:
    out = tmp_path / "out"
    report = wrap_paths([inputs[name], inputs["bmp"]], out)
    assert [Path(p) for p, _ in report.failed] == [inputs[name]]
    message = report.failed[0][1]
    assert str(inputs[name]) in message
    for word in words:
        assert word in message
    assert _no_files_left(out) == ["drawing.dcm"]  # the good input still written, no temp files
    assert report.exit_code == 1


def test_wrap_pdf_as_image_iod_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    report = wrap_paths([inputs["pdf"]], tmp_path, options=WrapOptions(iod=CaptureIOD.SC))
    assert "Encapsulated PDF" in report.failed[0][1]


def test_wrap_16bit_as_vl_photo_is_refused_with_sc_hint(inputs: dict[str, Path], tmp_path: Path) -> None:
    report = wrap_paths([inputs["png16"]], tmp_path, options=WrapOptions(iod=CaptureIOD.VL_PHOTO))
    assert "--as sc" in report.failed[0][1]


def test_wrap_existing_output_is_not_overwritten_without_flag(inputs: dict[str, Path], tmp_path: Path) -> None:
    first = wrap_paths([inputs["bmp"]], tmp_path)
    before = first.written[0].path.read_bytes()
    second = wrap_paths([inputs["bmp"]], tmp_path)
    assert "--overwrite" in second.failed[0][1]
    assert first.written[0].path.read_bytes() == before


def test_wrap_kind_and_burned_in_overrides_are_written(inputs: dict[str, Path], tmp_path: Path) -> None:
    report = wrap_paths(
        [inputs["bmp"]], tmp_path, options=WrapOptions(kind=SourceKind.SYNTHETIC, burned_in_annotation=False)
    )
    ds = pydicom.dcmread(report.written[0].path)
    assert ds.ConversionType == "SYN" and ds.BurnedInAnnotation == "NO"


def test_wrap_cli_exit_codes_and_messages(inputs: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    runner = CliRunner()
    ok = runner.invoke(app, ["wrap", str(inputs["bmp"]), "--patient-id", "P1", "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    partial = runner.invoke(
        app, ["wrap", str(inputs["corrupt"]), str(inputs["tiff"]), "--patient-id", "P1", "--out", str(tmp_path / "b")]
    )
    assert partial.exit_code == 1 and str(inputs["corrupt"]) in partial.output
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["photo.dcm"]
    usage = runner.invoke(app, ["wrap", str(inputs["bmp"]), "--as", "ct", "--out", str(tmp_path / "c")])
    assert usage.exit_code == 2 and not (tmp_path / "c").exists()
    like = runner.invoke(
        app, ["wrap", str(inputs["bmp"]), "--like", str(tmp_path / "a" / "drawing.dcm"), "--out", str(tmp_path / "d")]
    )
    assert like.exit_code == 0, like.output
    first, second = (pydicom.dcmread(tmp_path / d / "drawing.dcm") for d in ("a", "d"))
    assert first.StudyInstanceUID == second.StudyInstanceUID and second.PatientID == "P1"
