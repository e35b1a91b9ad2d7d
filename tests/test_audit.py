"""Audits over a synthetic lake with an answer key, over the real OpenREM files, and their
reports in headless Chromium. Every audit number is recomputed here with numpy from the
answer key (never with dicomlake's code)."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import itertools
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomlake.audit import AUDITS, Selection, run_audit, write_report
from dicomlake.curate import names
from dicomlake.curate.engine import curate
from dicomlake.curate.normalise import format_size
from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.query.lake import Lake
from dicomlake.store.duckdb import DuckDBStore
from tests.conftest import IN_CI
from tests.factories_audit import DRIFT_ROOM, SITE_OF, AnswerKey, build, simulate_receipt
from tests.support import OPENREM

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnswerKey]:
    """The synthetic corpus ingested (curation on ingest), received by a 'listener', re-curated,
    with the institution names a physicist confirmed."""
    root = tmp_path_factory.mktemp("synth")
    key = build(root / "files")
    report = ingest_paths([root / "files"], root / "lake", workers=2)
    assert report.instances == len(key.uids) and not report.rejected
    with DuckDBStore(root / "lake") as st:
        simulate_receipt(st.con, key)
        curate(st.curation())
        props = [p for p in names.propose("institution", names.variants_in_lake(st.curation())["institution"])]
        csv_path = root / "names.csv"
        names.write_proposals(csv_path, props)
        rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
        for r in rows:
            r["status"] = "confirmed"
        with csv_path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        names.apply_mapping(st.curation(), names.read_mapping(csv_path), confirmed_by="test")
    return root / "lake", key


def _site(std: str) -> str:
    return "St Mary's" if "mary" in std.lower() else "Royal Surrey" if "surrey" in std.lower() else std


# ---- curation ------------------------------------------------------------------------------


def test_every_planted_error_is_flagged_and_the_clean_part_has_none(
    synth: tuple[Path, AnswerKey], capsys: pytest.CaptureFixture[str]
) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        got = set(lk.sql("SELECT SOPInstanceUID, rule FROM quality_flags").iter_rows())
        batch_runs = lk.sql("SELECT count(*) FROM curate_runs WHERE scope = 'batch' AND flags > 0").item()
    missed, extra = key.planted - got, got - key.planted
    planted_uids = {u for u, _ in key.planted}
    clean = set(key.uids) - planted_uids
    with capsys.disabled():
        by_rule = collections.Counter(r for _, r in key.planted)
        print(
            f"\nplanted {len(key.planted)} flags on {len(planted_uids)} instances "
            f"({', '.join(f'{r} {n}' for r, n in sorted(by_rule.items()))}); found {len(key.planted & got)}, "
            f"missed {len(missed)}; false flags {len(extra)} (on {len(clean)} clean instances: "
            f"{len({u for u, _ in extra} & clean)})"
        )
    assert not missed, f"planted errors not flagged: {sorted(missed)}"
    assert not extra, f"false flags: {sorted(extra)}"
    assert batch_runs >= 1  # curation ran on ingest too


def test_clock_drift_names_the_device_and_its_offset(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        rows = lk.sql("SELECT SOPInstanceUID, value, message FROM quality_flags WHERE rule = 'clock-drift'").rows()
    assert {r[0] for r in rows} == key.drift_uids
    assert all(DRIFT_ROOM in r[2] and "ahead of" in r[2] for r in rows)
    assert {round(abs(float(r[1]))) for r in rows} == {45}


def test_curate_cli_rerun_and_name_history(synth: tuple[Path, AnswerKey], tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    lake = tmp_path / "lake"
    shutil.copytree(synth[0], lake)
    r = CliRunner().invoke(app, ["curate", "run", "--lake", str(lake)])
    assert r.exit_code == 0, r.output
    assert "clock-drift" in r.output and "instances checked" in r.output
    r = CliRunner().invoke(app, ["curate", "names", "--history", "--lake", str(lake)])
    assert r.exit_code == 0 and "v1:" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[[range]]\nid = 'x'\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["curate", "run", "--rules", str(bad), "--lake", str(lake)])
    assert r.exit_code == 2 and "needs id and attribute" in r.output


# ---- dose audits against numpy -------------------------------------------------------------


MG_VALUE_RULES = {"mg-organ-dose": "agd_mGy", "mg-breast-thickness": "compressed_breast_thickness_mm",
                  "mg-compression-force": "compression_force_N", "mg-kvp": "kvp"}  # fmt: skip


def test_mg_dose_numbers_equal_an_independent_computation(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("mg-dose", lk)

    def flagged(m: dict, rule: str) -> bool:
        return (m["uid"], rule) in key.planted

    assert res.numbers["exposures"] == len(key.mg)
    # values curation flags as errors are left out of the statistics, and listed with their rule
    want_excluded = {(u, MG_VALUE_RULES[r]) for u, r in key.planted if r in MG_VALUE_RULES}
    excl = res.table("excluded")
    assert {(r["SOPInstanceUID"], r["column"]) for r in excl.to_dicts()} == want_excluded
    assert set(excl.get_column("rule").to_list()) == set(MG_VALUE_RULES)
    assert res.numbers["excluded_values"] == len(want_excluded) == 4
    mg = [m for m in key.mg if not flagged(m, "mg-organ-dose") and not flagged(m, "mg-breast-thickness")]
    assert res.numbers["exposures_with_dose_and_thickness"] == len(mg) == len(key.mg) - 2
    assert max(m["agd"] for m in mg) < 10  # the 90 mGy exposure is out
    sets = sorted({m["set"] for m in mg})
    # median per set and view
    for s in sets:
        for v in ("CC", "MLO"):
            want = float(np.median([m["agd"] for m in mg if m["set"] == s and m["view"] == v]))
            assert res.numbers["set_view_medians"][(s, v)] == pytest.approx(want, rel=1e-9)
    # DRL: third quartile of set medians (numpy's default linear interpolation), per view and band
    for v in ("CC", "MLO"):
        set_meds = [np.median([m["agd"] for m in mg if m["set"] == s and m["view"] == v]) for s in sets]
        assert res.numbers["drl"][("2D", v)] == pytest.approx(float(np.percentile(set_meds, 75)), rel=1e-9)
        band = [np.median(x) for s in sets if (x := [m["agd"] for m in mg if m["set"] == s and m["view"] == v
                                                     and 50 <= m["thickness"] < 60])]  # fmt: skip
        assert res.numbers["drl_band"][("2D", v)] == pytest.approx(float(np.percentile(band, 75)), rel=1e-9)
    # fitted curve per set: ln AGD = ln a + b t
    for s in sets:
        t = np.array([m["thickness"] for m in mg if m["set"] == s])
        d = np.array([m["agd"] for m in mg if m["set"] == s])
        b, ln_a = np.polyfit(t, np.log(d), 1)
        a_got, b_got = res.numbers["fits"][s]
        assert a_got == pytest.approx(math.exp(ln_a), rel=1e-7) and b_got == pytest.approx(b, rel=1e-7)
    # mean dose in 10 mm bands
    for (s, band), mean in res.numbers["band_means"].items():
        lo = float(band.split("–")[0])
        want = np.mean([m["agd"] for m in mg if m["set"] == s and lo <= m["thickness"] < lo + 10])
        assert mean == pytest.approx(float(want), rel=1e-9)
    # compression force by (standardised) site and view, the 900 N exposure left out
    forced = [m for m in key.mg if not flagged(m, "mg-compression-force")]
    got = {(_site(site), v): med for (site, v), med in res.numbers["compression_median_by_site_view"].items()}
    assert {k[0] for k in got} == {"St Mary's", "Royal Surrey"}
    for (site, v), med in got.items():
        want = np.median([m["force"] for m in forced if SITE_OF[m["set"]] == site and m["view"] == v])
        assert med == pytest.approx(float(want), rel=1e-9)
    # operators pseudonymised, name variants of one operator are one pseudonym
    ops = res.table("compression-operator")
    assert ops.get_column("operator").n_unique() == len({m["operator"] for m in mg})
    assert not any("SMITH" in (o or "") for o in ops.get_column("operator").to_list())


def test_ct_dose_numbers_equal_an_independent_computation(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("ct-dose", lk)
    ev = key.ct_events
    assert res.numbers["events"] == len(ev) and res.numbers["studies"] == len(key.ct_studies)
    for (prot, scanner), med in res.numbers["median_CTDIvol"].items():
        assert med == pytest.approx(
            float(np.median([e["ctdivol"] for e in ev if e["protocol"] == prot and e["scanner"] == scanner]))
        )
    for prot in {e["protocol"] for e in ev}:
        meds = [
            np.median([e["ctdivol"] for e in ev if e["protocol"] == prot and e["scanner"] == s]) for s in ("CT1", "CT2")
        ]
        assert res.numbers["drl_CTDIvol"][prot] == pytest.approx(float(np.percentile(meds, 75)))
    for (desc, scanner), med in res.numbers["median_DLP"].items():
        want = np.median(
            [s["dlp_total"] for s in key.ct_studies if s["description"] == desc and s["scanner"] == scanner]
        )
        assert med == pytest.approx(float(want), rel=1e-6)
    assert res.numbers["alerts"] >= 1  # the 900 mGy event


def test_dx_dose_numbers_equal_an_independent_computation(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("dx-dose", lk, Selection(where=["Modality = DX"]))
    assert res.numbers["events"] == len(key.dx)
    for (prot, room), med in res.numbers["median_dap"].items():
        want = np.median([d["dap_cGycm2"] for d in key.dx if d["protocol"] == prot and d["room"] == room])
        assert med == pytest.approx(float(want), rel=1e-6)
    for prot in ("CHEST", "KNEE"):
        meds = [
            np.median([d["dap_cGycm2"] for d in key.dx if d["protocol"] == prot and d["room"] == r])
            for r in ("DXR1", DRIFT_ROOM)
        ]
        assert res.numbers["drl_dap"][prot] == pytest.approx(float(np.percentile(meds, 75)), rel=1e-6)


def test_workflow_numbers_equal_an_independent_computation(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("workflow", lk)
    exams = [(room, t[0], t[1]) for (study, room), t in key.exams.items()]
    assert res.numbers["exams"] == len(exams)
    rooms = sorted({e[0] for e in exams})
    for room in rooms:
        mine = sorted((s, e) for r, s, e in exams if r == room)
        got = res.numbers["by_room"][room]
        durs = [(e - s).total_seconds() / 60 for s, e in mine]
        assert got["median_duration_min"] == pytest.approx(float(np.median(durs)))
        gaps = [(b[0] - a[1]).total_seconds() / 60 for a, b in itertools.pairwise(mine)
                if a[1].date() == b[0].date() and 0 <= (b[0] - a[1]).total_seconds() / 60 <= 120]  # fmt: skip
        if gaps:
            assert got["median_gap_min"] == pytest.approx(float(np.median(gaps)))
        days = {s.date() for s, _ in mine}
        assert got["exams_per_day"] == pytest.approx(len(mine) / len(days))
    # utilisation: busy seconds per weekday × hour / (rooms × weekday occurrences × 3600)
    busy = np.zeros((7, 24))
    for _, s, e in exams:
        secs = np.arange(int(s.timestamp()), int(e.timestamp()))
        stamps = [dt.datetime.fromtimestamp(x) for x in secs]
        np.add.at(busy, ([x.weekday() for x in stamps], [x.hour for x in stamps]), 1)
    first, last = min(e[1] for e in exams).date(), max(e[2] for e in exams).date()
    occ = np.zeros(7)
    for n in range((last - first).days + 1):
        occ[(first + dt.timedelta(days=n)).weekday()] += 1
    want = np.divide(busy, (len(rooms) * occ * 3600)[:, None], out=np.zeros_like(busy), where=occ[:, None] > 0)
    assert np.allclose(np.array(res.numbers["utilisation"]), want, atol=1e-9)
    assert res.numbers["utilisation"][0][8] > 0  # Monday 08:00, the mammography lists


def test_quality_audit_reports_body_part_error_rate_and_pending_names(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("quality", lk)
    assert res.numbers["bpe_instances"] == key.bpe_judged
    assert res.numbers["bpe_errors"] == len(key.bpe_wrong)
    assert res.numbers["bpe_error_rate"] == pytest.approx(len(key.bpe_wrong) / key.bpe_judged)
    assert res.numbers["name_mapping_version"] == 1
    pending = res.table("names")
    assert pending.height > 0 and "institution" not in pending.get_column("field").to_list()
    assert res.numbers["flags"] == len(key.planted)


def test_sc_catalogue_has_the_seed_columns(synth: tuple[Path, AnswerKey]) -> None:
    lake, key = synth
    with Lake.open(lake, read_only=True) as lk:
        res = run_audit("sc-catalogue", lk)
    df = res.table("catalogue")
    assert df.columns[:7] == ["Gender", "Age", "Age_years", "Modality", "Description", "Size_raw", "Size_bytes"]
    for want in key.sc:
        row = df.filter(df["SOPInstanceUID"] == want["uid"]).to_dicts()[0]
        for col in ("Gender", "Age", "Description", "Size_bytes", "Matrix", "ConversionType"):
            assert row[col] == want[col], col
        assert row["Size_raw"] == format_size(want["Size_bytes"])
        assert re.fullmatch(r"\d+(\.\d)? (B|KB|MB)", row["Size_raw"])


# ---- the real OpenREM files ----------------------------------------------------------------


def _openrem() -> Path:
    assert OPENREM.is_dir(), f"{OPENREM} is missing from the checkout"
    return OPENREM


@pytest.fixture(scope="module")
def openrem_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("openrem") / "lake"
    ingest_paths([_openrem()], lake, workers=2)
    return lake


def _sr_nums(path: Path, code: str) -> list[float]:
    """Every NUM of a concept in an SR's content tree, read with pydicom (independently)."""
    out: list[float] = []

    def walk(items: object) -> None:
        for it in items or []:  # type: ignore[attr-defined]
            name = it.get("ConceptNameCodeSequence")
            if it.get("ValueType") == "NUM" and name and name[0].CodeValue == code and it.get("MeasuredValueSequence"):
                out.append(float(it.MeasuredValueSequence[0].NumericValue))
            walk(it.get("ContentSequence"))

    walk(pydicom.dcmread(path).get("ContentSequence"))
    return out


def test_openrem_mammography_and_ct_sr_doses_reach_the_audit_tables(openrem_lake: Path) -> None:
    corpus = _openrem()
    with Lake.open(openrem_lake, read_only=True) as lk:
        mg = run_audit("mg-dose", lk)
        ct = run_audit("ct-dose", lk)
    exp = mg.all_data
    for name in ("MG-RDSR-Hologic_2D.dcm", "MG-RDSR-GEPristina-2D.dcm", "MG-RDSR-Giotto-DBT.dcm"):
        ds = pydicom.dcmread(corpus / name, stop_before_pixels=True)
        rows = exp.filter(exp["SOPInstanceUID"] == ds.SOPInstanceUID)
        assert sorted(rows.get_column("agd_mGy").to_list()) == pytest.approx(sorted(_sr_nums(corpus / name, "111631")))
        assert sorted(rows.get_column("compressed_breast_thickness_mm").to_list()) == pytest.approx(
            sorted(_sr_nums(corpus / name, "111633"))
        )
    studies = ct.table("studies")
    checked = 0
    for path in sorted(corpus.glob("CT-RDSR-*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        totals = _sr_nums(path, "113813")
        row = studies.filter(studies["StudyInstanceUID"] == ds.StudyInstanceUID)
        if totals and row.height:
            if (
                len(
                    {
                        p
                        for p in corpus.glob("CT-RDSR-*.dcm")
                        if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == ds.StudyInstanceUID
                    }
                )
                > 1
            ):
                continue  # several SRs of one study (Siemens "continued"): the total is their largest
            assert row.get_column("DLP_total_mGycm")[0] == pytest.approx(totals[0])
            checked += 1
    assert checked >= 4
    events = ct.all_data
    ge = pydicom.dcmread(corpus / "CT-RDSR-GEPixelMed.dcm", stop_before_pixels=True)
    assert sorted(
        v
        for v in events.filter(events["SOPInstanceUID"] == ge.SOPInstanceUID).get_column("CTDIvol_mGy").to_list()
        if v is not None
    ) == pytest.approx(sorted(_sr_nums(corpus / "CT-RDSR-GEPixelMed.dcm", "113830")))


# ---- reports in a browser ------------------------------------------------------------------


def _xlsx_sheets(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return re.findall(r'<sheet name="([^"]+)"', z.read("xl/workbook.xml").decode("utf-8"))


@pytest.mark.integration
def test_every_report_opens_in_chromium_with_charts_drawn_and_no_console_errors(
    synth: tuple[Path, AnswerKey], openrem_lake: Path
) -> None:
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is not installed (make install installs it)")
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / "audit-reports"
    reports = []
    with Lake.open(synth[0], read_only=True) as lk:
        for name in AUDITS:
            if name == "nm-dose":
                continue  # the synthetic lake has no nuclear medicine: the OpenREM files do
            res = run_audit(name, lk)
            paths = write_report(res, out / f"{name}.html")
            reports.append((name, res, paths))
    with Lake.open(openrem_lake, read_only=True) as lk:
        for name in ("mg-dose", "ct-dose", "dx-dose", "rf-dose", "nm-dose", "workflow"):
            res = run_audit(name, lk)
            reports.append((f"openrem-{name}", res, write_report(res, out / f"openrem-{name}.html")))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for name, res, paths in reports:
                html = paths["html"][0]
                assert "cdn.plot.ly" not in html.read_text("utf-8")[:2000]  # plotly.js is embedded, not fetched
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
                page.route("http*://**", lambda route: route.abort())  # offline: nothing may be fetched
                page.goto(html.as_uri())
                page.wait_for_function(
                    f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(res.charts)}", timeout=30000
                )
                drawn = page.evaluate(
                    "Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.querySelectorAll('.main-svg').length > 0"
                    " && d.getBoundingClientRect().height > 100)"
                )
                assert len(drawn) == len(res.charts) and all(drawn), f"{name}: charts not drawn {drawn}"
                # every chart has data: a trace with at least one value (Plotly's own data, in the page)
                points = page.evaluate(
                    "Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => (d.data || []).reduce("
                    "(n, t) => n + [t.y, t.z, t.x].map(a => (a || []).flat ? (a || []).flat().filter("
                    "v => v !== null && v !== undefined).length : 0).reduce((p, q) => Math.max(p, q), 0), 0))"
                )
                empty = [c.id for c, n in zip(res.charts, points, strict=True) if n == 0]
                assert not empty, f"{name}: charts without data {empty}"
                assert page.locator("a.dl").count() == len(res.charts) + len(res.tables)
                page.screenshot(path=str(ARTIFACTS / f"audit-{name}.png"), full_page=True)
                page.close()
                assert not errors, f"{name}: console errors {errors}"
                sheets = _xlsx_sheets(paths["xlsx"][0])
                assert sheets[0] == "Summary" and ("All data" in sheets or res.all_data is None)
                assert all(p.exists() for p in paths["csv"])
        finally:
            browser.close()


def test_audit_cli_writes_html_csv_xlsx_and_applies_filters(synth: tuple[Path, AnswerKey], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    out = tmp_path / "mg.html"
    r = CliRunner().invoke(app, ["audit", "mg-dose", "--lake", str(synth[0]), "--out", str(out),
                                 "--from", "2024-03-04", "--to", "20240305", "--where", "StationName = MAMMO1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    n_key = sum(
        1
        for m in synth[1].mg
        if m["set"] == "MAMMO1"
        and m["study"] in {s for (s, room), t in synth[1].exams.items() if t[0].date() <= dt.date(2024, 3, 5)}
    )
    assert f"{n_key:,} mammography exposures" in r.output
    assert out.exists() and out.with_suffix(".xlsx").exists() and (tmp_path / "mg-all-data.csv").exists()
    r = CliRunner().invoke(app, ["audit", "bone-density", "--lake", str(synth[0]), "--out", str(out)])
    assert r.exit_code == 2 and "choose one of" in r.output
