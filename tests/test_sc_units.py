"""Small pieces of the SC analysis without tesseract: matching, patterns, labels, dose table, geometry."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomlake.deid.pixels import (
    date_forms,
    find_phi,
    fuzzy_equal,
    identifying_terms,
    nhs_number_valid,
    redact_array,
)
from dicomlake.extract.ocr import OcrResult, Word, _turn, _unmap, parse_tsv
from dicomlake.extract.ocr_dose import number, read_dose_table
from dicomlake.extract.sc_class import (
    ContentClass,
    DecidedBy,
    decide,
    header_evidence,
    ocr_evidence,
    pixel_evidence,
    pixel_stats,
)
from dicomlake.extract.sc_quality import jpeg_blockiness, laplacian_variance, noise_sigma


def _words(rows: list[list[str]], height: int = 12, char: int = 7, gap: int = 8) -> OcrResult:
    """An OCR result laid out as rows of words, left to right."""
    result = OcrResult()
    for r, row in enumerate(rows):
        x = 10
        for text in row:
            if text == "|":  # a wide gap (a new column)
                x += 120
                continue
            w = len(text) * char
            y = 10 + r * 2 * height
            result.words.append(Word(text, 95.0, x, y, w, height, (0, r, 0, 0), (x, y, x + w, y + height)))
            x += w + gap
    return result


def _patient() -> Dataset:
    ds = Dataset()
    ds.PatientName = "SMITH^JOHN"
    ds.PatientID = "48213067"
    ds.PatientBirthDate = "19560403"
    ds.AccessionNumber = "A20240815"
    ds.InstitutionName = "St Elsewhere Hospital"
    return ds


def test_nhs_number_checksum():
    assert nhs_number_valid("9434765919")
    assert not nhs_number_valid("9434765918")
    assert not nhs_number_valid("943476591")


def test_birth_date_forms_cover_common_printings():
    forms = date_forms("19560403")
    for printed in (
        "03/04/1956",
        "1956-04-03",
        "3 APR 1956",
        "03-APR-1956",
        "03.04.1956",
        "APRIL 3, 1956",
        "04/03/1956",
    ):
        assert printed in forms


@pytest.mark.parametrize(
    ("ocr_text", "value", "same"),
    [
        ("48213O67", "48213067", True),  # O read for 0
        ("SMlTH", "SMITH", True),  # l read for I
        ("A2024O8I5", "A20240815", True),
        ("iii", "Mill", False),  # a filled box read as letters is not a short value
        ("JONES", "SMITH", False),
        ("12.34", "48213067", False),
    ],
)
def test_fuzzy_matching_allows_ocr_errors_only(ocr_text, value, same):
    assert fuzzy_equal(ocr_text, value) is same


def test_phi_found_by_header_value_pattern_and_label_but_clinical_numbers_not():
    result = _words(
        [
            ["Patient", "Name:", "SMlTH,", "JOHN", "|", "MRN", "48213O67"],
            ["DOB:", "3", "Apr", "1956", "|", "NHS", "No:", "943", "476", "5919"],
            ["Phone:", "0113", "496", "0123", "|", "LS6", "2AB"],
            ["Creatinine", "88", "umol/L", "|", "eGFR", "72"],
            ["Hospital", "number:", "Q77"],
        ]
    )
    hits = find_phi(result, identifying_terms(_patient()))
    found = {h.word.text for h in hits}
    assert {
        "SMlTH,",
        "JOHN",
        "48213O67",
        "3",
        "Apr",
        "1956",
        "943",
        "476",
        "5919",
        "0113",
        "496",
        "0123",
        "LS6",
        "2AB",
        "Q77",
    } <= found
    assert not {"Creatinine", "88", "72", "eGFR", "Name:", "Patient"} & found
    reasons = {h.word.text: h.reason for h in hits}
    assert reasons["Q77"].startswith("label:")
    assert reasons["5919"] in ("pattern:nhs", "label:NO")


def test_label_value_stops_at_a_wide_gap():
    result = _words([["Name:", "SMITH", "|", "12.5", "300"]])
    found = {h.word.text for h in find_phi(result, [])}
    assert found == {"SMITH"}


def test_dose_table_is_read_by_columns_and_checked_against_the_total():
    result = _words(
        [
            ["Series", "|", "Type", "|", "CTDIvol", "(mGy)", "|", "DLP", "(mGy-cm)"],
            ["1", "|", "Scout", "|", "-", "|", "-"],
            ["2", "|", "Helical", "|", "10.27", "|", "760.67"],
            ["3", "|", "Helical", "|", "l9.30", "|", "290.93"],
            ["|", "Total", "Exam", "DLP:", "|", "1051.60"],
        ]
    )
    reading = read_dose_table(result)
    assert [(s.number, s.CTDIvol_mGy, s.DLP_mGycm) for s in reading.series] == [(2, 10.27, 760.67), (3, 19.3, 290.93)]
    assert reading.total_DLP_mGycm == 1051.6 and reading.check == "sum-ok" and reading.confidence > 0.9


def test_dose_sum_mismatch_lowers_confidence():
    result = _words(
        [
            ["CTDIvol", "|", "DLP"],
            ["10.0", "|", "100.0"],
            ["Total", "DLP", "150.0"],
        ]
    )
    reading = read_dose_table(result)
    assert reading.check == "sum-mismatch" and reading.confidence < 0.5


def test_ocr_number_folds_confusable_letters():
    assert number("l2.O5") == 12.05 and number("S00") == 500.0 and number("Body") is None


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_word_boxes_map_back_through_a_turn(turn):
    h, w = 40, 60
    page = np.zeros((h, w), np.uint8)
    page[5:9, 10:30] = 255  # a "word" at x 10…30, y 5…9
    turned = _turn(page, turn)
    ys, xs = np.nonzero(turned)
    box = Word("x", 90.0, int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    back = _unmap(box, turn, page.shape, 1.0, 0)
    assert back.box == (10, 5, 30, 9)


def test_parse_tsv_keeps_word_rows():
    tsv = (
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
        "1\t1\t0\t0\t0\t0\t0\t0\t100\t50\t-1\t\n"
        "5\t1\t1\t1\t1\t1\t10\t12\t30\t9\t91.5\tDLP\n"
        "5\t1\t1\t1\t1\t2\t50\t12\t20\t9\t-1\t \n"
    )
    words = parse_tsv(tsv)
    assert [(w.text, w.box, w.conf) for w in words] == [("DLP", (10, 12, 40, 21), 91.5)]


def test_header_decides_vl_photo_and_pdf_and_defers_a_bare_screenshot():
    photo = Dataset()
    photo.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    c = decide(header_evidence(photo), DecidedBy.HEADER)
    assert c is not None and c.klass is ContentClass.PHOTO
    pdf = Dataset()
    pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    assert decide(header_evidence(pdf), DecidedBy.HEADER).klass is ContentClass.DOCUMENT  # type: ignore[union-attr]
    screen = Dataset()
    screen.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    screen.ConversionType = "WSD"
    assert decide(header_evidence(screen), DecidedBy.HEADER) is None


def test_pixel_statistics_tell_screens_photos_paper_and_anatomy_apart():
    rng = np.random.default_rng(0)
    screen = np.full((100, 200, 3), 236, np.uint8)
    screen[20:30, 20:120] = 20
    photo = np.clip(rng.normal([180, 120, 100], 15, (100, 200, 3)), 0, 255).astype(np.uint8)
    paper = np.clip(rng.normal(240, 3, (100, 200)), 0, 255).astype(np.uint8)
    anatomy = np.zeros((100, 200), np.uint8)
    anatomy[20:80, 40:160] = np.clip(rng.normal(100, 8, (60, 120)), 0, 255).astype(np.uint8)
    klass = {}
    for name, arr in (("screen", screen), ("photo", photo), ("paper", paper), ("anatomy", anatomy)):
        ev = pixel_evidence(pixel_stats(arr))
        klass[name] = ev.leader()[0]
    assert klass == {
        "screen": ContentClass.DOSE_REPORT,
        "photo": ContentClass.PHOTO,
        "paper": ContentClass.DOCUMENT,
        "anatomy": ContentClass.OUTSIDE_IMAGE,
    }


def test_ocr_keywords_point_at_dose_screens():
    ev = ocr_evidence(["CTDIvol", "(mGy)", "DLP", "(mGy-cm)", "Total", "Exam", "DLP:"])
    assert ev.leader()[0] is ContentClass.DOSE_REPORT and ev.decided()


def test_quality_measures_respond_to_blur_noise_and_blocking():
    rng = np.random.default_rng(1)
    sharp = (np.indices((64, 64)).sum(axis=0) % 16 < 8).astype(np.uint8) * 255
    blurred = np.asarray(np.convolve(sharp.ravel().astype(float), np.ones(5) / 5, "same").reshape(64, 64), np.uint8)
    assert laplacian_variance(sharp) > laplacian_variance(blurred)
    noisy = np.clip(128 + rng.normal(0, 10, (64, 64)), 0, 255).astype(np.uint8)
    assert 7 < noise_sigma(noisy) < 13
    blocks = np.kron(rng.integers(0, 255, (8, 8)), np.ones((8, 8))).astype(np.uint8)
    assert jpeg_blockiness(blocks) > 1.0 and jpeg_blockiness(noisy) < 0.2


def test_redact_array_fills_boxes_and_leaves_the_rest():
    arr = np.full((10, 10, 3), 200, np.uint8)
    out = redact_array(arr, [(2, 3, 5, 6)], (0, 0, 0))
    assert (out[3:6, 2:5] == 0).all() and (out[:3] == 200).all() and (arr == 200).all()
