"""`dicomlake sc analyse/catalogue/redact` and `dicomlake deid --pixels` on real files, checked by dciodvfy."""
# ruff: noqa: F811  (pytest fixtures imported from tests.sc_fixtures)

from __future__ import annotations

import json
import shutil

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from dicomlake.cli.main import app
from tests.factories_sc import leaked_words
from tests.sc_fixtures import case_path, sc_corpus  # noqa: F401

runner = CliRunner()


@pytest.fixture(scope="module")
def sc_lake(tmp_path_factory, sc_corpus):
    """A lake holding three SC objects (a dose screen, a photo, a PDF), analysed once."""
    from dicomlake.ingest.pipeline import ingest_paths

    lake = tmp_path_factory.mktemp("sc-lake")
    src = tmp_path_factory.mktemp("sc-src")
    for name in ("dose_siemens_small", "photo_stamp_sc", "report_pdf"):
        shutil.copy(case_path(sc_corpus, name), src / f"{name}.dcm")
    ingest_paths([src], lake, workers=1)
    result = runner.invoke(app, ["sc", "analyse", "--lake", str(lake), "--report", str(lake / "sc.json")])
    assert result.exit_code == 0, result.output
    return lake


def test_sc_analyse_writes_sc_analysis_rows_keyed_by_sop_instance(sc_lake):
    from dicomlake.store.duckdb import DuckDBStore

    with DuckDBStore(sc_lake, read_only=True) as store:
        rows = store.query(
            "SELECT content_class, decided_by, review, dose_check, dose_status FROM sc_analysis ORDER BY content_class"
        ).to_pylist()
    assert [r["content_class"] for r in rows] == ["document", "dose_report", "photo"]
    dose = rows[1]
    assert dose["dose_check"] == "sum-ok" and dose["dose_status"] == "stored"
    assert rows[0]["review"] and rows[2]["review"]  # a PDF's text is not checked; photos always
    report = json.loads((sc_lake / "sc.json").read_text())
    assert report["analysed"] == 3 and report["failed"] == []


def test_sc_analyse_puts_ocr_dose_rows_in_dose_events(sc_lake):
    from dicomlake.lakeschema import DOSE_EVENT_COLUMNS
    from dicomlake.store.duckdb import DuckDBStore

    with DuckDBStore(sc_lake, read_only=True) as store:
        table = store.query("SELECT * FROM dose_events WHERE source = 'ocr' ORDER BY record DESC, CTDIvol_mGy")
    assert set(DOSE_EVENT_COLUMNS) <= set(table.column_names)
    rows = table.to_pylist()
    assert [r["record"] for r in rows] == ["event", "event", "accumulated"]
    events = rows[:2]
    total = rows[2]["ct_dose_length_product_total_mGycm"]
    assert abs(sum(r["DLP_mGycm"] for r in events) - total) < 0.15
    assert events[0]["CTDIvol_mGy"] == 0.14


def test_sc_analyse_again_replaces_rows_and_an_rdsr_wins(sc_lake, tmp_path):
    from dicomlake.store.duckdb import DuckDBStore

    with DuckDBStore(sc_lake) as store:
        study = store.query("SELECT StudyInstanceUID FROM sc_analysis WHERE content_class = 'dose_report'").to_pylist()[
            0
        ]["StudyInstanceUID"]
        store.con.execute(
            "INSERT INTO dose_events (SOPInstanceUID, StudyInstanceUID, source, record) VALUES ('1.2.3.4', ?, 'rdsr', 'accumulated')",
            [study],
        )
    result = runner.invoke(app, ["sc", "analyse", "--lake", str(sc_lake)])
    assert result.exit_code == 0, result.output
    assert "superseded by an RDSR 1" in result.output
    with DuckDBStore(sc_lake) as store:
        n = store.query("SELECT count(*) AS n FROM sc_analysis").to_pylist()[0]["n"]
        ocr_rows = store.query("SELECT count(*) AS n FROM dose_events WHERE source = 'ocr'").to_pylist()[0]["n"]
        status = store.query("SELECT dose_status FROM sc_analysis WHERE content_class = 'dose_report'").to_pylist()
        store.con.execute("DELETE FROM dose_events WHERE SOPInstanceUID = '1.2.3.4'")
    assert n == 3 and ocr_rows == 0 and status == [{"dose_status": "rdsr-wins"}]


def test_sc_catalogue_shows_class_quality_and_review(sc_lake, tmp_path):
    out = tmp_path / "cat.json"
    result = runner.invoke(app, ["sc", "catalogue", "--lake", str(sc_lake), "--format", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert {r["content_class"] for r in rows} == {"document", "dose_report", "photo"}
    assert all(r["PatientID"] for r in rows)
    result = runner.invoke(app, ["sc", "catalogue", "--lake", str(sc_lake), "--review", "--format", "csv"])
    assert result.exit_code == 0 and "dose_report" not in result.output


def test_sc_redact_writes_valid_derived_objects_without_phi(sc_corpus, tmp_path):
    from tests.dciodvfy import dciodvfy_errors, require_dciodvfy

    require_dciodvfy()
    src = tmp_path / "in"
    src.mkdir()
    for name in ("form_lab_report", "outside_ct_16bit"):
        shutil.copy(case_path(sc_corpus, name), src / f"{name}.dcm")
    # files beside the DICOM (a source PNG, a JSON sidecar) are skipped, not failed (issue 21)
    (src / "screen.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (src / "sidecar.json").write_text("{}")
    out = tmp_path / "out"
    result = runner.invoke(app, ["sc", "redact", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "failed 0" in result.output and "skipped (not DICOM) 2" in result.output
    for name in ("form_lab_report", "outside_ct_16bit"):
        path = out / f"{name}.dcm"
        assert dciodvfy_errors(path) == [], name
        ds, orig = dcmread(path), dcmread(src / f"{name}.dcm")
        assert ds.BurnedInAnnotation == "NO"
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.SOPInstanceUID != orig.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == orig.SOPInstanceUID
        assert ds.DerivationCodeSequence[0].CodeValue == "113101"
        assert (ds.pixel_array != orig.pixel_array).any()


def test_deid_pixels_writes_deidentified_redacted_objects_with_mapped_uids(sc_corpus, tmp_path, monkeypatch):
    from dicomlake.deid.pixels import ocr_for_class
    from dicomlake.deid.pseudonym import Keyring
    from dicomlake.extract.sc_class import ContentClass
    from tests.dciodvfy import dciodvfy_errors, require_dciodvfy

    require_dciodvfy()
    secret = "sc-test-secret-0123456789abcdef"
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", secret)
    src = tmp_path / "in"
    src.mkdir()
    names = ("dose_ge_dark", "photo_label_vl")
    for name in names:
        shutil.copy(case_path(sc_corpus, name), src / f"{name}.dcm")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        args = ["deid", str(src), "--out", str(out), "--pixels", "--profile", "basic", "--keep-names"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "pixels: screened 2, NOT screened 0, redacted 2 (" in result.output
        assert "review" in result.output and "photo_label_vl" in result.output
        outs.append(out)
    keys = Keyring(secret.encode())
    for name in names:
        case = next(c for c in sc_corpus if c.name == name)
        orig = dcmread(src / f"{name}.dcm")
        a, b = dcmread(outs[0] / f"{name}.dcm"), dcmread(outs[1] / f"{name}.dcm")
        assert dciodvfy_errors(outs[0] / f"{name}.dcm") == [], name
        # new UIDs from the de-identification maps: the same in both runs, unlinkable to the source
        assert a.SOPInstanceUID == b.SOPInstanceUID == keys.uid(f"{orig.SOPInstanceUID}#pixels")
        assert a.SourceImageSequence[0].ReferencedSOPInstanceUID == keys.uid(str(orig.SOPInstanceUID))
        assert a.StudyInstanceUID == keys.uid(str(orig.StudyInstanceUID))
        # a photograph is on the review list: never declared clean (issue 20)
        assert a.BurnedInAnnotation == ("YES" if "photo" in name else "NO") and a.PatientIdentityRemoved == "YES"
        assert "113101" in [item.CodeValue for item in a.DeidentificationMethodCodeSequence]
        raw = (outs[0] / f"{name}.dcm").read_bytes()
        assert b"SMITH" not in raw and str(orig.PatientID).encode() not in raw
        klass = ContentClass.PHOTO if "photo" in name else ContentClass.DOSE_REPORT
        second = ocr_for_class(a.pixel_array, klass, str(a.PhotometricInterpretation))
        assert leaked_words(case, [(w.text, w.box) for w in second.words]) == []


def test_audit_sc_catalogue_shows_the_sc_analyse_results(sc_lake, sc_corpus):
    """Issue 21: the audit showed header-derived categories only."""
    from dicomlake.audit import run_audit
    from dicomlake.query.lake import Lake

    expected = {
        str(dcmread(case_path(sc_corpus, n)).SOPInstanceUID): n
        for n in ("dose_siemens_small", "photo_stamp_sc", "report_pdf")
    }
    klass = {c.name: c.klass for c in sc_corpus}
    with Lake.open(sc_lake, read_only=True) as lk:
        df = run_audit("sc-catalogue", lk).all_data
    for col in ("Class", "PHI_found", "PHI_redacted", "Review", "Quality_flags", "Dose_check", "Dose_status"):
        assert col in df.columns, col
    rows = {r["SOPInstanceUID"]: r for r in df.iter_rows(named=True)}
    expected = {u: n for u, n in expected.items() if n != "report_pdf"}  # an Encapsulated PDF is not an SC
    for uid, name in expected.items():
        assert rows[uid]["Class"] == klass[name], name
    dose = rows[next(u for u, n in expected.items() if n == "dose_siemens_small")]
    assert dose["Dose_check"] == "sum-ok" and dose["PHI_found"] >= 4 and dose["PHI_redacted"] == dose["PHI_found"]
    photo = rows[next(u for u, n in expected.items() if n == "photo_stamp_sc")]
    assert photo["Review"] is True
