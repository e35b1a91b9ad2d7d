"""The benchmark corpus generator writes realistic, valid, sparse and reproducible files."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `bench` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench import corpus  # noqa: E402  (after the sys.path line above)

N = 60
MB = 1_000_000

needs_dcmdump = pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk not installed")


@pytest.fixture(autouse=True)
def tolerant_reading() -> Iterator[None]:
    """Clones keep their sources' quirks (an over-long LO in the Philips EPIQ header)."""
    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    pydicom.config.settings.reading_validation_mode = old


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.generate(tmp_path_factory.mktemp("corpus"), n=N, seed=7)


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _dcmdump_problems(paths: list[Path]) -> tuple[int, list[str]]:
    """Run dcmdump (warnings on) over ``paths``; return its exit code and its E:/W: lines."""
    proc = subprocess.run(
        ["dcmdump", "-M", *map(str, paths)],
        check=False,
        capture_output=True,
        text=True,
        errors="replace",
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if line.startswith(("E:", "W:", "F:"))]


def test_corpus_has_the_requested_number_of_part10_files(small_corpus: Path) -> None:
    files = _files(small_corpus)
    assert len(files) == N
    for path in files:
        with path.open("rb") as fp:
            head = fp.read(132)
        assert head[:128] == b"\0" * 128 and head[128:] == b"DICM", path


@needs_dcmdump
def test_dcmdump_reads_every_file_without_warnings(small_corpus: Path) -> None:
    code, problems = _dcmdump_problems(_files(small_corpus))
    assert code == 0
    assert problems == []


@needs_dcmdump
def test_every_template_clones_into_a_file_dcmdump_reads_cleanly(tmp_path: Path) -> None:
    when = dt.datetime(2020, 5, 4, 10, 30)
    paths = []
    for key, spec in corpus.TEMPLATES.items():
        tpl = corpus.compile_template(spec)
        inst = corpus.Instance(
            path=f"{key}.dcm",
            template=key,
            study_uid="2.25.1",
            series_uid="2.25.2",
            sop_uid=f"2.25.{len(paths) + 3}",
            for_uid="2.25.9",
            study_start=when,
            factors=dict.fromkeys(corpus.FAMILIES, 1.5),
            values={
                "PatientName": "Test^Patient",
                "PatientID": "123",
                "CTDIvol": 12.5,
                "OrganDose": "0.12",
                "InstanceNumber": "1",
            },
        )
        size = corpus.write_instance(tmp_path, tpl, inst)
        assert os.stat(tmp_path / inst.path).st_size == size
        paths.append(tmp_path / inst.path)
    code, problems = _dcmdump_problems(paths)
    assert code == 0
    assert problems == []


def test_hierarchy_is_consistent(small_corpus: Path) -> None:
    patient_of_study: dict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
    study_of_series: dict[str, set[str]] = defaultdict(set)
    sops = set()
    for path in _files(small_corpus):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        patient = (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex)
        patient_of_study[ds.StudyInstanceUID].add(patient)
        study_of_series[ds.SeriesInstanceUID].add(ds.StudyInstanceUID)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == N
    assert len(patient_of_study) > 5
    assert all(len(p) == 1 for p in patient_of_study.values())
    assert all(len(s) == 1 for s in study_of_series.values())


def test_image_files_have_realistic_sizes_and_sr_files_have_no_pixels(small_corpus: Path) -> None:
    modalities = set()
    for path in _files(small_corpus):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        modalities.add(ds.Modality)
        size = path.stat().st_size
        if ds.Modality == "SR":
            assert size < MB // 2
        else:
            assert 0.5 * MB <= size <= 4 * MB, (path, size)
            expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
            expected *= int(ds.get("NumberOfFrames", 1) or 1)
            assert size > expected
    assert {"CT", "MG", "SR"} <= modalities


def test_pixel_data_is_a_sparse_hole(small_corpus: Path) -> None:
    files = _files(small_corpus)
    apparent = sum(p.stat().st_size for p in files)
    allocated = sum(p.stat().st_blocks * 512 for p in files)
    assert allocated < apparent / 20


def test_same_seed_gives_identical_bytes(small_corpus: Path, tmp_path: Path) -> None:
    again = corpus.generate(tmp_path / "again", n=N, seed=7)
    first, second = _files(small_corpus), _files(again)
    assert [p.relative_to(small_corpus) for p in first] == [p.relative_to(again) for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.relative_to(small_corpus)


def test_another_seed_gives_other_patients(small_corpus: Path, tmp_path: Path) -> None:
    other = corpus.generate(tmp_path / "other", n=10, seed=8)
    ids = {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in _files(other)}
    ours = {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in _files(small_corpus)}
    assert ids.isdisjoint(ours)
