"""Referential integrity across a de-identified set, and byte-identical output across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

SECRET = "integrity-test-secret-0123456789abcdef"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _make_set(folder: Path) -> None:
    """A CT series, a derived image, an SR and an RT structure set that reference each other."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    images = []
    for n in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.save_as(folder / f"ct{n}.dcm")
        images.append(ds.SOPInstanceUID)
    derived = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    derived.StudyInstanceUID, derived.FrameOfReferenceUID = study, frame
    derived.SeriesInstanceUID = generate_uid()
    derived.SOPInstanceUID = derived.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    derived.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    derived.SourceImageSequence = Sequence([_ref(CT, images[0])])
    derived.ReferencedImageSequence = Sequence([_ref(CT, images[1])])
    derived.save_as(folder / "derived.dcm")

    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    sr.StudyInstanceUID = study
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = series
    evidence_series.ReferencedSOPSequence = Sequence([_ref(CT, u) for u in images])
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    evidence.ReferencedSeriesSequence = Sequence([evidence_series])
    sr.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    image_item = Dataset()
    image_item.RelationshipType = "CONTAINS"
    image_item.ValueType = "IMAGE"
    image_item.ReferencedSOPSequence = Sequence([_ref(CT, images[2])])
    sr.ContentSequence = Sequence([image_item])
    sr.save_as(folder / "sr.dcm")

    rt = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    rt.StudyInstanceUID = study
    contour_images = Sequence([_ref(CT, u) for u in images])
    rseries = Dataset()
    rseries.SeriesInstanceUID = series
    rseries.ContourImageSequence = contour_images
    rstudy = Dataset()
    rstudy.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    rstudy.ReferencedSOPInstanceUID = study
    rstudy.RTReferencedSeriesSequence = Sequence([rseries])
    rframe = Dataset()
    rframe.FrameOfReferenceUID = frame
    rframe.RTReferencedStudySequence = Sequence([rstudy])
    rt.ReferencedFrameOfReferenceSequence = Sequence([rframe])
    for roi in rt.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = frame
    for roi in rt.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            contour.ContourImageSequence = Sequence([_ref(CT, images[0])])
    if not hasattr(rt, "file_meta") or "TransferSyntaxUID" not in rt.file_meta:
        rt.file_meta = pydicom.dataset.FileMetaDataset()
        rt.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    rt.file_meta.MediaStorageSOPClassUID = rt.SOPClassUID
    rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPInstanceUID
    rt.save_as(folder / "rtstruct.dcm", enforce_file_format=True)


def _run_cli(src: Path, out: Path) -> None:
    env = {**os.environ, "DICOMLAKE_DEID__SECRET": SECRET}
    res = subprocess.run(
        [sys.executable, "-m", "dicomlake.cli.main", "deid", str(src), "--out", str(out), "--profile", "basic"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("integrity")
    src = base / "in"
    src.mkdir()
    _make_set(src)
    a, b = base / "a", base / "b"
    _run_cli(src, a)
    _run_cli(src, b)
    return src, a, b


def test_deid_same_input_in_two_processes_is_byte_identical(runs: tuple[Path, Path, Path]) -> None:
    src, a, b = runs
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*.dcm"))
    assert len(names) == len(list(src.iterdir()))
    assert sorted(str(p.relative_to(b)) for p in b.rglob("*.dcm")) == names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


_REF_KEYWORDS = {
    "ReferencedSOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedFrameOfReferenceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
}


def _entities(sets: list[Dataset]) -> set[str]:
    out: set[str] = set()
    for ds in sets:
        for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            if kw in ds:
                out.add(str(ds.data_element(kw).value))
    return out


def _references(sets: list[Dataset]) -> list[tuple[str, str]]:
    return [(elem.keyword, str(elem.value)) for ds in sets for elem in ds.iterall() if elem.keyword in _REF_KEYWORDS]


def test_deid_every_uid_reference_resolves_inside_the_output_set(runs: tuple[Path, Path, Path]) -> None:
    src, out, _ = runs
    inputs = [pydicom.dcmread(p, force=True) for p in sorted(src.iterdir())]
    outputs = [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]
    in_entities, out_entities = _entities(inputs), _entities(outputs)
    internal_in = [r for r in _references(inputs) if r[1] in in_entities]
    internal_out = [r for r in _references(outputs) if r[1] in out_entities]
    dangling = [r for r in _references(outputs) if r[1] in in_entities]  # an original UID survived
    print(
        f"\nreferential integrity: {len(internal_in)} references inside the input set, "
        f"{len(internal_out)} resolve inside the output set, {len(dangling)} originals left"
    )
    assert not dangling
    assert sorted(k for k, _ in internal_out) == sorted(k for k, _ in internal_in)
    assert len(internal_in) >= 20
    instances = {str(ds.SOPInstanceUID) for ds in outputs}
    sr = next(ds for ds in outputs if "ContentSequence" in ds)
    assert sr.ContentSequence[-1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID in instances
    derived = next(ds for ds in outputs if "SourceImageSequence" in ds)
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID in instances
    rt = next(ds for ds in outputs if "ROIContourSequence" in ds)
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    contour_refs = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence
    assert {str(i.ReferencedSOPInstanceUID) for i in contour_refs} <= instances
