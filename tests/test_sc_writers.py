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


# --- JPEG kept byte for byte: Photometric Interpretation from the stream's own headers -----


def _jpeg_inputs(directory):
    """Pillow JPEGs of one smooth colour picture: 4:4:4, 4:2:2, 4:2:0, untransformed RGB, grey."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)
    directory.mkdir()
    made = {}
    for name, kwargs in (
        ("s444", {"subsampling": 0}),
        ("s422", {"subsampling": 1}),
        ("s420", {"subsampling": 2}),
        ("rgb", {"keep_rgb": True}),  # Adobe APP14 transform 0, component IDs 'R','G','B'
    ):
        made[name] = directory / f"{name}.jpg"
        Image.fromarray(rgb).save(made[name], "JPEG", quality=90, **kwargs)
    made["grey"] = directory / "grey.jpg"
    Image.fromarray(rgb[..., 0]).save(made["grey"], "JPEG", quality=90)
    return made


def test_jpegs_of_every_chroma_sampling_are_kept_byte_for_byte_and_dciodvfy_clean(tmp_path):
    """Issue 21: a 4:4:4 JPEG was decoded and stored as native RGB (1.44 MB from 172 KB).

    PS3.5 Table 8.2.1-1 allows only YBR_FULL_422 or RGB for colour JPEG Baseline (dciodvfy
    rejects YBR_FULL there), and PS3.3 C.7.6.3.1.2 notes the stream's own subsampling may
    differ from that label: 4:4:4 is kept and labelled YBR_FULL_422. Oracles: dciodvfy (the
    object), dcmdump +W (the fragment bytes), dcmdjpeg (DCMTK's decoder gives Pillow's pixels).
    """
    import subprocess

    import numpy as np
    from PIL import Image

    from dicomlake.write import wrap_paths
    from tests.support import require_tool

    require_dciodvfy()
    dcmdump, dcmdjpeg = require_tool("dcmdump"), require_tool("dcmdjpeg")
    inputs = _jpeg_inputs(tmp_path / "in")
    report = wrap_paths(list(inputs.values()), tmp_path / "out")
    assert report.failed == []
    expected = {"s444": "YBR_FULL_422", "s422": "YBR_FULL_422", "s420": "YBR_FULL_422", "rgb": "RGB"}
    expected["grey"] = "MONOCHROME2"
    for written in report.written:
        name = written.path.stem
        source = inputs[name].read_bytes()
        ds = dcmread(written.path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50", name
        assert ds.PhotometricInterpretation == expected[name], name
        assert "ImageComments" not in ds or "decoded" not in ds.ImageComments, name
        assert dciodvfy_errors(written.path) == [], name
        # dcmdump writes each fragment out: the JPEG itself, plus pydicom's one pad byte when odd
        raw = tmp_path / "raw" / name
        raw.mkdir(parents=True)
        subprocess.run([dcmdump, "-q", "+W", str(raw), str(written.path)], check=True, capture_output=True)
        fragment = (raw / f"{written.path.name}.1.raw").read_bytes()
        assert fragment[: len(source)] == source and fragment[len(source) :] in (b"", b"\0"), name
        # DCMTK's own JPEG decoder, reading our label, gives exactly Pillow's decoding of the file
        plain = tmp_path / "raw" / f"{name}-plain.dcm"
        subprocess.run([dcmdjpeg, str(written.path), str(plain)], check=True, capture_output=True)
        with Image.open(inputs[name]) as img:
            want = np.asarray(img.convert("RGB" if name != "grey" else "L"))
        assert np.array_equal(dcmread(plain).pixel_array, want), name
        # and pydicom reads it as the same picture (its YCbCr conversion rounds differently)
        got = ds.pixel_array.astype(int)
        assert got.shape == want.shape and np.abs(got - want).mean() < 2.0, name
