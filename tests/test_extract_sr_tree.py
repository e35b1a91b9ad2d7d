"""The SR content tree read from the reader's elements equals the one read through pydicom.

:func:`dicomlake.extract.sr.content_tree_from_elements` is the fast path ingest takes for
Radiation Dose SRs; :func:`~dicomlake.extract.sr.content_tree` over a pydicom Dataset is the
reference (itself checked against dcmtk's dsr2xml in ``test_extract_dose.py``). Every SR
among the sample files must give the same tree (dataclass equality, every item, value,
code and unit), or be handed to pydicom explicitly (``NeedsPydicom``), never differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomlake.dicom.dataset import to_pydicom
from dicomlake.dicom.reader import read_header
from dicomlake.errors import ExtractionError
from dicomlake.extract.sr import NeedsPydicom, content_tree, content_tree_from_elements
from dicomlake.samples import pydicom_test_files, repo_corpus

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _sr_files() -> list[Path]:
    roots = [pydicom_test_files()]
    corpus = repo_corpus()
    if corpus is not None:
        roots.append(corpus)
    out = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                header, _, _ = read_header(path)
            except (ExtractionError, OSError):
                continue
            sop_class = next((v for t, _vr, v, _l in header.elements if t == 0x00080016), None)
            if isinstance(sop_class, bytes) and sop_class.decode("ascii", "replace").startswith(SR_PREFIX):
                out.append(path)
    return out


SR_FILES = _sr_files()


def test_there_are_structured_reports_to_compare() -> None:
    assert len(SR_FILES) >= 20, [p.name for p in SR_FILES]


def test_most_trees_take_the_fast_path() -> None:
    """Only text that is not ASCII is left to pydicom (4 of the 33 sample SRs when written)."""
    handed = []
    for path in SR_FILES:
        header, _, _ = read_header(path)
        try:
            content_tree_from_elements(header.elements, header.little_endian)
        except NeedsPydicom as exc:
            handed.append((path.name, str(exc)))
    assert len(handed) <= len(SR_FILES) // 4, handed
    assert all("not ASCII" in why for _, why in handed), handed


@pytest.mark.parametrize("path", SR_FILES, ids=lambda p: p.name)
def test_tree_from_elements_equals_the_tree_through_pydicom(path: Path) -> None:
    header, _, _ = read_header(path)
    reference = content_tree(to_pydicom(header))
    try:
        fast = content_tree_from_elements(header.elements, header.little_endian)
    except NeedsPydicom:
        return  # handed to pydicom: ingest then uses the reference reader
    assert fast == reference
    if reference is not None:
        assert sum(1 for _ in fast.walk()) == sum(1 for _ in reference.walk())


@pytest.mark.parametrize("path", SR_FILES, ids=lambda p: p.name)
def test_ingest_dose_rows_equal_the_reference_reading(path: Path) -> None:
    """What ingest stores for an SR (fast tree, top-level Dataset without Content Sequence)
    equals dose_events over the whole file read through pydicom."""
    from dicomlake.extract.dose import dose_events
    from dicomlake.ingest.worker import _dose_rows

    header, _, _ = read_header(path)
    sop_class = next(v for t, _vr, v, _l in header.elements if t == 0x00080016).decode().strip("\x00 ")
    assert _dose_rows(header, sop_class, "SR") == dose_events(to_pydicom(header))
