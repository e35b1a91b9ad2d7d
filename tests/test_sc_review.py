"""Issue 21: dose screens are read exactly or sent to review (never a wrong value stored as fact),
review rows stay out of the audits until confirmed, and no digit run on a dose screen is taken
for an NHS number."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.deid.pixels import _digitised, find_phi, nhs_number_valid
from tests.factories_sc import write_dose_screen
from tests.test_sc_units import _words

runner = CliRunner()
_OLD_NHS = re.compile(r"\b\d(?:[\s.\-]?\d){9}\b")
"""The pattern before issue 21: digits strung across decimals and scan ranges."""


def _ge_rows(n: int, seed: int = 5) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        top, bottom = rng.uniform(5, 150), rng.uniform(300, 600)
        ctdi, dlp = rng.uniform(4, 25), rng.uniform(150, 900)
        rows.append([str(i + 2), "Helical", f"S{top:.1f}-I{bottom:.1f}", f"{ctdi:.2f}", f"{dlp:.2f}", "Body", "32"])
    return rows


def test_no_digit_run_on_a_ge_dose_row_is_taken_for_an_nhs_number():
    rows = _ge_rows(300)
    # the old pattern strung a scan range and the CTDIvol into a checksum-valid "NHS number"
    old = [
        r
        for r in rows
        for m in _OLD_NHS.finditer(_digitised(" ".join(r)))
        if nhs_number_valid(re.sub(r"\D", "", m.group()))
    ]
    assert len(old) >= 10
    hits = find_phi(_words(rows), [])
    assert [h.word.text for h in hits] == []
    # a real one, plain or grouped, is still found
    found = {h.word.text for h in find_phi(_words([["Ref", "943", "476", "5919"], ["x", "9434765919", "y"]]), [])}
    assert {"943", "476", "5919", "9434765919"} <= found


def test_a_dlp_read_into_the_ctdivol_column_is_doubted_even_when_the_sum_holds():
    from dicomlake.extract.ocr_dose import DoseReading, DoseSeries

    swapped = DoseReading(
        [DoseSeries(2, "Helical", 429.11, 429.11, 90.0), DoseSeries(3, "Helical", 4.02, 120.0, 90.0)],
        549.11,
        "sum-ok",
        0.9,
    )
    assert any("CTDIvol 429.11 > DLP" in d for d in swapped.doubts()) is False  # equal, not above
    swapped.series[0] = DoseSeries(2, "Helical", 429.11, 4.02, 90.0)
    assert any("CTDIvol 429.11 > DLP 4.02" in d for d in swapped.doubts())
    missing = DoseReading([DoseSeries(2, "Helical", None, 429.11, 90.0)], 429.11, "sum-ok", 0.9)
    assert any("not read" in d for d in missing.doubts())
    mismatch = DoseReading([DoseSeries(2, "Helical", 8.73, 429.11, 90.0)], 433.13, "sum-mismatch", 0.48)
    assert any("sum-mismatch" in d for d in mismatch.doubts())
    good = DoseReading([DoseSeries(2, "Helical", 8.73, 429.11, 90.0)], 429.11, "sum-ok", 0.9)
    assert good.doubts() == []


@pytest.fixture(scope="module")
def review_lake(tmp_path_factory):
    """A lake with two dose screens: one whose printed total is not its series' sum (CTDIvol 95.5)."""
    from dicomlake.ingest.pipeline import ingest_paths
    from tests.conftest import require_tool

    require_tool("tesseract")
    gen = tmp_path_factory.mktemp("dose-screens")
    good = write_dose_screen(gen, "dose_ok", patient=0, values=((8.73, 429.11), (12.4, 310.5)), seed=21)
    bad = write_dose_screen(
        gen, "dose_bad_total", patient=1, values=((95.5, 620.25), (10.2, 300.0)), total_shown=1020.25, seed=22
    )
    src = tmp_path_factory.mktemp("dose-src")
    for c in (good, bad):
        shutil.copy(c.path, src / c.path.name)
    lake = tmp_path_factory.mktemp("dose-lake")
    ingest_paths([src], lake, workers=1)
    result = runner.invoke(app, ["sc", "analyse", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    assert "dose screens in review, not stored 1" in result.output
    return lake, good, bad


def _ocr_rows(lake):
    from dicomlake.store.duckdb import DuckDBStore

    with DuckDBStore(lake, read_only=True) as store:
        return store.query(
            "SELECT SOPInstanceUID, record, CTDIvol_mGy, DLP_mGycm, ct_dose_length_product_total_mGycm "
            "FROM dose_events WHERE source = 'ocr' ORDER BY SOPInstanceUID, record DESC, CTDIvol_mGy"
        ).to_pylist()


def _ct_alerts(lake) -> int:
    from dicomlake.audit import Selection, load_settings, run_audit
    from dicomlake.query.lake import Lake

    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("ct-dose", lk, Selection(None, None, []), load_settings(None))
    return int(res.numbers.get("alerts", 0))


def test_every_stored_dose_value_equals_the_answer_key_or_the_row_is_in_review(review_lake):
    from pydicom import dcmread

    from dicomlake.store.duckdb import DuckDBStore

    lake, good, bad = review_lake
    good_uid, bad_uid = str(dcmread(good.path).SOPInstanceUID), str(dcmread(bad.path).SOPInstanceUID)
    with DuckDBStore(lake, read_only=True) as store:
        status = {
            r["SOPInstanceUID"]: r
            for r in store.query("SELECT SOPInstanceUID, dose_status, review, dose_review FROM sc_analysis").to_pylist()
        }
    assert status[good_uid]["dose_status"] == "stored"
    assert status[bad_uid]["dose_status"] == "review" and status[bad_uid]["review"]
    assert "sum-mismatch" in status[bad_uid]["dose_review"]
    rows = _ocr_rows(lake)
    assert {r["SOPInstanceUID"] for r in rows} == {good_uid}
    events = sorted((r["CTDIvol_mGy"], r["DLP_mGycm"]) for r in rows if r["record"] == "event")
    assert events == sorted((c, d) for _, c, d in good.dose.series)
    assert [r["ct_dose_length_product_total_mGycm"] for r in rows if r["record"] == "accumulated"] == [
        good.dose.total_dlp
    ]


def test_audit_ct_dose_ignores_a_row_in_review_until_it_is_confirmed(review_lake):
    from pydicom import dcmread

    lake, _, bad = review_lake
    assert _ct_alerts(lake) == 0  # CTDIvol 95.5 > 80 sits in review
    bad_uid = str(dcmread(bad.path).SOPInstanceUID)
    result = runner.invoke(app, ["sc", "confirm-dose", bad_uid, "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    assert f"confirmed {bad_uid}" in result.output
    assert _ct_alerts(lake) >= 1
    again = runner.invoke(app, ["sc", "confirm-dose", bad_uid, "--lake", str(lake)])
    assert again.exit_code != 0 and "no dose reading in review" in again.output


def test_sc_redact_repairs_a_malformed_header_value_says_so_and_redacts(tmp_path):
    """PatientAge AS '33Y' made `sc redact` refuse the whole file (exit 1, nothing redacted)."""
    import warnings

    from pydicom import dcmread

    from tests.conftest import require_tool

    require_tool("tesseract")
    case = write_dose_screen(tmp_path / "gen", "dose_age", patient=2, seed=23)
    ds = dcmread(case.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientAge = "33Y"
        ds.save_as(case.path)
    assert dcmread(case.path).PatientAge == "33Y"
    out = tmp_path / "out"
    result = runner.invoke(app, ["sc", "redact", str(case.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PatientAge AS '33Y'" in result.output and "'033Y'" in result.output
    written = list(out.rglob("*.dcm"))
    assert len(written) == 1
    red = dcmread(written[0])
    assert red.PatientAge == "033Y" and red.BurnedInAnnotation == "NO"
    # the PHI on the screen is gone (answer key: each PHI word's ink covered)
    from dicomlake.deid.pixels import first_frame

    before, after = first_frame(dcmread(case.path)), first_frame(red)
    for w in case.phi:
        ink = case.labels == w.id
        assert (before[ink] != after[ink]).any(axis=-1).mean() > 0.5, w.text


def test_a_clinicians_name_after_a_person_label_or_a_title_is_phi_but_prose_is_not():
    result = _words(
        [
            ["Clinician:", "Dr", "Priya", "Raman"],
            ["Consent", "taken", "by:", "Tomasz", "Nowak"],
            ["Signed", "by:", "Mr", "Oluwaseun", "Adeyemi", "|", "Date:"],
            ["Doctor:", "Helen", "Achterberg"],
            ["The", "risks", "have", "been", "explained", "to", "me"],
            ["Weight", "81", "kg.", "No", "known", "allergy"],
        ]
    )
    found = {h.word.text for h in find_phi(result, [])}
    assert {"Priya", "Raman", "Tomasz", "Nowak", "Oluwaseun", "Adeyemi", "Helen", "Achterberg"} <= found
    assert not {"The", "risks", "Weight", "81", "No", "known", "Consent", "taken", "Date:"} & found


def test_second_independent_ocr_pass_reads_phi_back_from_a_missed_redaction_and_none_after_a_good_one(tmp_path):
    from pydicom import dcmread

    from dicomlake.deid.pixels import (
        classify_for_redaction,
        fill_value,
        first_frame,
        identifying_terms,
        plan_redaction,
        read_back,
        redact_array,
    )
    from tests.conftest import require_tool

    require_tool("tesseract")
    case = write_dose_screen(tmp_path, "dose_gate", patient=3, theme="dark", seed=24)
    ds = dcmread(case.path)
    arr = first_frame(ds)
    plan = plan_redaction(ds, classify_for_redaction(ds, arr), arr=arr)
    terms = identifying_terms(ds)
    photometric = str(ds.PhotometricInterpretation)
    # nothing filled (a redaction that missed everything): the gate reads the identifiers back
    assert read_back(arr, plan, terms, photometric)
    # the answer key's PHI words all covered by the plan, and nothing read back afterwards
    red = redact_array(arr, plan.boxes, fill_value(ds, arr))
    for w in case.phi:
        ink = case.labels == w.id
        assert (red[ink] == 0).all(axis=-1).mean() > 0.95, w.text
    assert read_back(red, plan, terms, photometric) == []


def test_a_person_label_followed_by_form_words_takes_no_name():
    result = _words([["Signed:", "Date:", "15/08/2024"], ["Signed:", "Hospital", "number:"]])
    found = {h.word.text: h.reason for h in find_phi(result, [])}
    assert "Date:" not in found and "Hospital" not in found


def test_a_ris_worklist_screenshot_is_a_screenshot_and_loses_all_its_names(tmp_path):
    """Issue 21: a non-dose worklist screenshot came out 'unknown'; its other patients are in no header."""
    from pydicom import dcmread

    from dicomlake.extract.sc import analyse_dataset
    from tests.conftest import require_tool
    from tests.factories_sc import redaction_mask, score_redaction, write_worklist_screen

    require_tool("tesseract")
    case = write_worklist_screen(tmp_path, "worklist", patient=1, seed=3)
    analysis = analyse_dataset(dcmread(case.path))
    assert analysis.classification.klass.value == "screenshot", analysis.classification
    assert analysis.plan.policy == "all-text"
    score = score_redaction(case, redaction_mask(case.labels.shape, analysis.plan.boxes))
    assert score.phi_redacted == score.phi_total, score.missed
    assert analysis.dose_rows == []
