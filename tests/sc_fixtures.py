"""Session fixtures for the Secondary Capture tests: the corpus, analysed and redacted once.

Import them into a test module (``from tests.sc_fixtures import sc_corpus, sc_analysed,
sc_redacted  # noqa: F401``); OCR is the slow part, so every test shares one pass over
the corpus and one second pass over the redacted output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.conftest import require_tool
from tests.factories_sc import SCCase, build_sc_corpus


@pytest.fixture(scope="session")
def sc_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[SCCase]:
    require_tool("tesseract")
    return build_sc_corpus(tmp_path_factory.mktemp("sc-corpus"))


@pytest.fixture(scope="session")
def sc_analysed(sc_corpus: list[SCCase]) -> dict[str, object]:
    """Case name → :class:`dicomlake.extract.sc.SCAnalysis`."""
    from dicomlake.extract.sc import analyse_dataset

    return {case.name: analyse_dataset(dcmread(case.path)) for case in sc_corpus}


@dataclass
class Redacted:
    """One case after redaction and the second OCR pass over the result."""

    pixels: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    second_words: list[tuple[str, tuple[int, int, int, int]]]
    second_hits: list[str]
    """Header and pattern PHI hits of the second pass (label-follow hits on the filled boxes
    themselves are not PHI)."""


@pytest.fixture(scope="session")
def sc_redacted(sc_corpus: list[SCCase], sc_analysed: dict[str, object]) -> dict[str, Redacted]:
    from dicomlake.deid.pixels import (
        fill_value,
        find_phi,
        first_frame,
        identifying_terms,
        ocr_for_class,
        redact_array,
    )

    out: dict[str, Redacted] = {}
    for case in sc_corpus:
        analysis = sc_analysed[case.name]
        ds = dcmread(case.path)
        if "PixelData" not in ds:
            continue
        arr = first_frame(ds)
        plan = analysis.plan  # type: ignore[attr-defined]
        red = redact_array(arr, plan.boxes, fill_value(ds, arr))
        second = ocr_for_class(red, plan.klass, str(ds.PhotometricInterpretation))
        hits = [
            f"{h.word.text} ({h.reason})"
            for h in find_phi(second, identifying_terms(ds))
            if h.reason.startswith(("header", "pattern")) and sum(c.isalnum() for c in h.word.text) >= 3
        ]
        out[case.name] = Redacted(red, plan.boxes, [(w.text, w.box) for w in second.words], hits)
    return out


def case_path(corpus: list[SCCase], name: str) -> Path:
    return next(c.path for c in corpus if c.name == name)
