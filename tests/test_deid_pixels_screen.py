"""`deid --pixels` screens every image class and never declares an unverified image clean (issue 20).

Oracles: dcmdump reads Burned In Annotation from the output bytes, `strings` and pydicom read the
output bytes, tesseract (the OCR peer, run as a program) reads the output pixels.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from typer.testing import CliRunner

from dicomlake.cli.main import app
from tests.factories_sc import font
from tests.support import require_tool

NAME, PID = "Quigley^Marmaduke", "QX7731942"
CT = UID("1.2.840.10008.5.1.4.1.1.2")


def _ct(pixels: np.ndarray, *, bia: str | None = None, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, "19610304"
    ds.StudyDate, ds.Modality, ds.ImageType = "20240131", "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    if frames > 1:
        ds.NumberOfFrames = frames
    if bia is not None:
        ds.BurnedInAnnotation = bia
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def _anatomy(with_text: bool) -> np.ndarray:
    rng = np.random.default_rng(7)
    img = Image.new("L", (320, 320), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((60, 90, 280, 300), fill=110)
    draw.ellipse((120, 150, 200, 230), fill=170)
    if with_text:
        draw.text((8, 6), "QUIGLEY MARMADUKE", fill=255, font=font(18))
        draw.text((8, 32), f"ID {PID}", fill=255, font=font(18))
    a = np.asarray(img, dtype=np.float64) * 16
    a[a > 0] += rng.normal(0, 40, a.shape)[a > 0]
    return np.clip(a, 0, 4095).astype(np.uint16)


def _bia(path: Path) -> str:
    """Burned In Annotation as dcmdump reads it from the output bytes ('' when absent)."""
    out = subprocess.run(["dcmdump", "+P", "0028,0301", str(path)], capture_output=True, text=True, check=True)
    m = re.search(r"\[([^\]]*)\]", out.stdout)
    return m[1].strip() if m else ""


def _tesseract(arr: np.ndarray) -> str:
    grey = (arr.astype(np.float64) * 255 / max(float(arr.max()), 1.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).resize((grey.shape[1] * 2, grey.shape[0] * 2)).save(buf, format="PNG")
    out = subprocess.run(["tesseract", "stdin", "stdout", "--psm", "11"], input=buf.getvalue(), capture_output=True)
    return out.stdout.decode("utf-8", "replace").upper()


def _sources(directory: Path) -> dict[str, Path]:
    directory.mkdir()
    text, plain = _anatomy(True), _anatomy(False)
    cases = {
        "ct_text": _ct(text),  # CT, no Burned In Annotation: was never screened
        "ct_plain_yes": _ct(plain, bia="YES"),  # declares text, has none: was boxed over and marked NO
        "ct_plain": _ct(plain),  # no text: screened, nothing painted
        "ct_frames": _ct(np.stack([plain] * 3), frames=3, bia="NO"),  # more frames than screened
    }
    j2k = _ct(plain)  # a compressed stream that cannot be decoded
    j2k.file_meta.TransferSyntaxUID = JPEG2000Lossless
    j2k.PixelData = encapsulate([b"\xff\x4f\xff\x51not a codestream" * 4])
    j2k["PixelData"].VR = "OB"
    cases["ct_j2k"] = j2k
    paths = {}
    for name, ds in cases.items():
        paths[name] = directory / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    return paths


def test_deid_pixels_screens_every_image_class_and_lists_what_it_could_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("dcmdump")
    require_tool("tesseract")
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", "s" * 32)
    src = _sources(tmp_path / "in")
    assert "MARMADUKE" in _tesseract(pydicom.dcmread(src["ct_text"]).pixel_array)  # the peer reads the planted text
    out, rep = tmp_path / "out", tmp_path / "report.json"
    res = CliRunner().invoke(
        app,
        ["deid", str(tmp_path / "in"), "--out", str(out), "--pixels", "--screen-frames", "2", "--report", str(rep)],
    )
    assert res.exit_code == 0, res.output
    # the summary line names what was not screened, per instance, with the reason
    assert re.search(r"pixels: screened 3, NOT screened 2", res.output), res.output
    # declares burned-in text that OCR cannot find: on review, so the profile's exclusion of
    # Burned In Annotation YES stands (it was boxed over and written with NO)
    assert re.search(r"excluded .*ct_plain_yes\.dcm: Burned In Annotation YES", res.output)
    assert re.search(r"review .*ct_plain_yes\.dcm: Burned In Annotation YES but no text found", res.output)
    assert re.search(
        r"not screened .*ct_j2k\.dcm: pixel data cannot be decoded \(transfer syntax JPEG 2000", res.output
    )
    assert re.search(r"not screened .*ct_frames\.dcm: multi-frame: 3 frames, more than the 2", res.output)
    report = json.loads(rep.read_text())["pixels"]
    assert {Path(x["file"]).name for x in report["not_screened"]} == {"ct_j2k.dcm", "ct_frames.dcm"}
    assert report["screened"] == 3 and [Path(f).name for f in report["redacted"]] == ["ct_text.dcm"]

    outputs = {f: pydicom.dcmread(f) for f in out.rglob("*.dcm")}
    assert len(outputs) == 4, res.output
    for f in outputs:
        blob = f.read_bytes()
        assert b"Quigley" not in blob and PID.encode() not in blob  # `strings` over every output
    by_kind: dict[str, Path] = {}
    for f, ds in outputs.items():
        if ds.file_meta.TransferSyntaxUID == JPEG2000Lossless:
            by_kind["j2k"] = f
        elif int(ds.get("NumberOfFrames", 1) or 1) == 3:
            by_kind["frames"] = f
        elif "DERIVED" in list(ds.ImageType):
            by_kind["redacted"] = f
        else:
            by_kind["plain"] = f
    assert set(by_kind) == {"j2k", "frames", "redacted", "plain"}
    # the CT with burned-in text: redacted, verified by a second pass, declared clean; the peer
    # reads neither the name nor the ID in the output pixels
    assert _bia(by_kind["redacted"]) == "NO"
    seen = _tesseract(outputs[by_kind["redacted"]].pixel_array)
    assert "MARMADUKE" not in seen and "QUIGLEY" not in seen and "7731942" not in seen, seen
    # no text in the pixels: nothing painted over the anatomy, nothing declared
    plain = outputs[by_kind["plain"]]
    assert np.array_equal(plain.pixel_array, pydicom.dcmread(src["ct_plain"]).pixel_array)
    assert _bia(by_kind["plain"]) == ""
    # not screened: never declared clean, even where the source declared NO
    assert _bia(by_kind["j2k"]) == "YES" and _bia(by_kind["frames"]) == "YES"
