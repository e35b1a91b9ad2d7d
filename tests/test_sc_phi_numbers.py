"""Burned-in PHI screen: numbers on dose screens and box padding on turned pages (bench_sc defects).

The SC bench blacked out a CTDIvol "13.21" because it fuzzy-matched the last group of the
patient's telephone number "0117 496 0321", and covered the labels beside the PHI on a
screen turned 90° because boxes were padded by a fifth of their height (there, the word's
length). The OCR word lists and boxes are built here directly: no tesseract needed.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomlake.deid.pixels import _pad, find_phi, plan_redaction
from dicomlake.extract.ocr import OcrResult, Word
from dicomlake.extract.sc_class import ContentClass
from dicomlake.security.phi import identifying_terms, matches_term


def _row(result: OcrResult, r: int, texts: list[str], height: int = 14, char: int = 8) -> None:
    x = 10
    for text in texts:
        if text == "|":
            x += 120
            continue
        w = len(text) * char
        y = 10 + r * 2 * height
        result.words.append(Word(text, 95.0, x, y, w, height, (0, r, 0, 0), (x, y, x + w, y + height)))
        x += w + 10


def _patient() -> Dataset:
    ds = Dataset()
    ds.PatientName = "OKONKWO^DAVID"
    ds.PatientID = "77120345"
    ds.PatientBirthDate = "19700128"
    ds.PatientTelephoneNumbers = "0117 496 0321"
    return ds


def test_dose_value_is_not_matched_to_a_part_of_the_telephone_number() -> None:
    result = OcrResult()
    _row(result, 0, ["Series", "Type", "CTDIvol", "(mGy)", "DLP", "(mGy-cm)"])
    _row(result, 1, ["2", "Helical", "13.21", "|", "512.33"])
    _row(result, 2, ["3", "Helical", "03.21", "|", "496"])  # one folded glyph, and a short group alone
    _row(result, 3, ["Contact", "0117", "496", "0321"])  # the telephone number itself
    _row(result, 4, ["ref", "0321", "|", "MRN", "77120345"])  # a whole group of four digits
    hits = {(h.word.text, h.word.line_key[1]): h.reason for h in find_phi(result, identifying_terms(_patient()))}
    assert ("13.21", 1) not in hits
    assert ("03.21", 2) not in hits
    assert ("512.33", 1) not in hits
    assert ("496", 2) not in hits
    assert {("0117", 3), ("496", 3), ("0321", 3), ("0321", 4), ("77120345", 4)} <= set(hits)


@pytest.mark.parametrize(
    ("ocr_text", "value", "same"),
    [
        ("13.21", "0321", False),  # one edit: a clinical value, not the group
        ("1321", "0321", False),
        ("O321", "0321", True),  # O read for 0: the same digits
        ("0321", "0321", True),
        ("77I20345", "77120345", True),
        ("77120346", "77120345", True),  # a long ID: one misread digit
        ("771203", "77120345", False),
        ("SMlTH", "SMITH", True),  # names keep their OCR tolerance
    ],
)
def test_numeric_values_match_only_exactly_after_folding(ocr_text: str, value: str, same: bool) -> None:
    assert matches_term(ocr_text, value) is same


def test_short_phone_groups_are_not_matched_alone() -> None:
    terms = {t.text: t.distinctive for t in identifying_terms(_patient()) if t.source == "PatientTelephoneNumbers"}
    assert terms["496"] is False
    assert terms["0117"] is True and terms["0321"] is True


def test_padding_follows_the_text_height_on_a_turned_page() -> None:
    shape = (900, 600)
    # a 14 px word 150 px long, turned 90°: tall box, text height 14
    assert _pad((100, 200, 114, 350), shape) == (97, 197, 117, 353)
    assert _pad((100, 200, 114, 350), shape, 14.0) == (97, 197, 117, 353)
    assert _pad((100, 200, 250, 214), shape) == (97, 197, 253, 217)  # the same word upright
    assert _pad((0, 0, 400, 200), shape) == (0, 0, 408, 208)  # capped


def test_turned_screen_keeps_the_label_beside_the_phi_word() -> None:
    # page turned 90° clockwise: a line of text runs downwards; "Patient ID:" above the ID
    ds = _patient()
    result = OcrResult()
    x, h = 300, 14
    label = Word("ID:", 95.0, x, 100, h, 24, (0, 1, 0, 0), (100, 300, 124, 314))
    phi = Word("77120345", 95.0, x, 132, h, 64, (0, 1, 0, 0), (132, 300, 196, 314))
    after = Word("DOB:", 95.0, x, 226, h, 32, (0, 2, 0, 0), (226, 300, 258, 314))  # next column, a wide gap
    result.words += [label, phi, after]
    plan = plan_redaction(ds, ContentClass.DOSE_REPORT, arr=_blank(600, 400), result=result)
    assert [h.word.text for h in plan.hits] == ["77120345"]
    _, y0, _, y1 = plan.boxes[0]
    assert y0 >= label.top + label.height and y1 <= after.top  # the labels stay clear
    assert y0 <= phi.top - 2 and y1 >= phi.top + phi.height + 2


def _blank(h: int, w: int) -> np.ndarray:
    return np.full((h, w), 255, np.uint8)
