"""Audit cohorts: DRL matching by precedence, localisers, MG acquisition modes, the RF alert
quantity, and workflow gaps (no gap across the 'unknown room' bucket; tied start times give
the same gaps whatever order the rows come in)."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomlake.audit import drl, load_settings, run_audit
from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.query.lake import Lake
from tests.conftest import require_tool
from tests.factories_audit import DX_CLASS, PREFIX, AnswerKey, _base, _pixels, _write
from tests.oracles import dsr
from tests.test_audit_study import openrem_dir, openrem_lake  # noqa: F401 (fixture)

# ---- DRL matching: most specific rule first ----------------------------------------------

CT_RULES = drl.parse_rules(load_settings()["ct"]["drl"], "ct")
DRL_CASES = [  # (study description, rule of the shipped example settings or None, why)
    ("CT Thorax & abdo & pelvis with contrast", "chest-abdomen-pelvis", "three terms beat the chest rule"),
    ("CT CHEST ABDOMEN PELVIS", "chest-abdomen-pelvis", ""),
    ("CT CAP +C", None, "CAP alone names no abdomen or pelvis: not guessed"),
    ("CT Abdomen and Pelvis", "abdomen-pelvis", "two terms beat abdomen"),
    ("CT Chest With Contrast", "chest", ""),
    ("Thorax^RTP_4DCT_Thorax_C (Adult)", "chest", ""),
    ("CT HEAD W/O", "head", ""),
    ("Brain perfusion", "head", ""),
    ("CT Abdomen", "abdomen", ""),
    ("Colonography", None, "no rule"),
    ("CT Chest and Head", None, "ambiguous: chest vs head"),
    ("CTabdomen", None, "abdo must start a word"),
]


@pytest.mark.parametrize(("name", "rule", "why"), DRL_CASES)
def test_drl_rule_is_the_most_specific_match(name: str, rule: str | None, why: str) -> None:
    got = drl.match(CT_RULES, name, "DLP_mGycm")
    assert got.rule == rule, (name, got, why)
    if name == "CT Chest and Head":
        assert got.note.startswith("ambiguous") and got.value is None


def test_explicit_precedence_beats_term_count() -> None:
    rules = drl.parse_rules(
        [{"name": "paediatric head", "match": "paed", "precedence": 5, "DLP_mGycm": 300},
         {"name": "head", "all": ["head", "ct"], "DLP_mGycm": 970}], "ct")  # fmt: skip
    assert drl.match(rules, "CT HEAD PAED", "DLP_mGycm").rule == "paediatric head"
    assert drl.match(rules, "CT HEAD", "DLP_mGycm").value == 970


def test_ct_report_shows_the_rule_per_study_and_leaves_localisers_out(openrem_lake: Path) -> None:  # noqa: F811
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("ct-dose", lk)
    studies = {r["study_description_std"]: r for r in res.table("studies").to_dicts()}
    cap = studies["CT Thorax & abdo & pelvis with contrast"]
    assert cap["drl_rule"] == "chest-abdomen-pelvis" and cap["national_drl_DLP_mGycm"] == 1000
    # the Philips dose screenshot (CT-SC-Philips_Brilliance16P, read by OCR): OpenREM's own test
    # value for its total DLP is 1102.44609 mGy·cm
    assert cap["DLP_total_mGycm"] == pytest.approx(1102.44609, abs=0.01)
    assert cap["over_national_DLP_mGycm"] == pytest.approx(1102.44609 / 1000, abs=1e-5)
    assert "chest" in cap["drl_match"]  # the chest rule matched too, and lost
    exe = require_tool("dsr2xml")
    # localisers: the CT Acquisitions dsr2xml reads as Constant Angle Acquisition (113805); none
    # is in a CTDIvol median or DRL
    constant = set()
    for path in sorted(p for p in openrem_dir().glob("*.dcm") if "RDSR" in p.name or "ESR" in p.name):
        out = subprocess.run([exe, *dsr.DSR2XML_FLAGS, str(path)], capture_output=True, check=False)
        if out.returncode != 0:
            continue
        for item in ET.fromstring(out.stdout).iter("item"):
            concept = item.find("concept")
            if concept is None or concept.get("codValue") != "113819":
                continue
            codes = [v.get("codValue") for v in item.iter("value")]
            uid = next((i.findtext("value") for i in item.iter("item") if (c := i.find("concept")) is not None
                        and c.get("codValue") == "113769"), None)  # fmt: skip
            if "113805" in codes and uid:
                constant.add(uid.strip())
    assert len(constant) >= 5
    loc = res.all_data.filter(res.all_data["localiser"] & (res.all_data["source"] == "rdsr"))
    assert set(loc.get_column("IrradiationEventUID").to_list()) == constant
    assert res.numbers["localisers"] == res.all_data.filter(res.all_data["localiser"]).height
    assert all(v > 0 for v in res.table("ctdivol").get_column("median_CTDIvol_mGy").to_list())
    assert "Topogram" not in res.table("drl-ctdivol").get_column("protocol").to_list()


def _dsr_codes(path: Path) -> list[str]:
    out = subprocess.run([require_tool("dsr2xml"), *dsr.DSR2XML_FLAGS, str(path)], capture_output=True, check=True)
    doc = ET.fromstring(out.stdout)
    return [v.get("codValue") or "" for v in doc.iter("value")]


def test_mg_tomosynthesis_is_audited_apart_from_2d(openrem_lake: Path) -> None:  # noqa: F811
    corpus = openrem_dir()
    assert "113613" in _dsr_codes(corpus / "MG-RDSR-Giotto-DBT.dcm")  # Rotational Acquisition, per dcmtk
    assert "113613" not in _dsr_codes(corpus / "MG-RDSR-Hologic_2D.dcm")
    giotto = str(pydicom.dcmread(corpus / "MG-RDSR-Giotto-DBT.dcm", stop_before_pixels=True).SOPInstanceUID)
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("mg-dose", lk)
    rows = res.all_data
    assert set(rows.filter(rows["SOPInstanceUID"] == giotto).get_column("mode").to_list()) == {"DBT"}
    assert set(rows.filter(rows["SOPInstanceUID"] != giotto).get_column("mode").to_list()) == {"2D"}
    drl_rows = {(r["mode"], r["view"]): r for r in res.table("drl").to_dicts()}
    # the 2D DRL is computed without the Giotto's DBT medians, and DBT has no 2D national DRL
    assert drl_rows[("2D", "CC")]["sets"] == 4 and drl_rows[("DBT", "CC")]["national_drl_mGy"] is None
    assert ("GIOTTO CLASS (DBT)", "CC") in res.numbers["set_view_medians"]


def test_rf_alerts_name_their_quantity(openrem_lake: Path) -> None:  # noqa: F811
    exe = require_tool("dsr2xml")
    rep = dsr.read(openrem_dir() / "RF-RDSR-Philips_Azurion.dcm", exe)
    assert rep.events
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("rf-dose", lk)
    alerts = res.table("alerts")
    assert {"quantity", "value", "unit", "threshold"} <= set(alerts.columns)
    rp = alerts.filter(alerts["quantity"] == "dose_rp_total_mGy")
    assert rp.height >= 1 and set(rp.get_column("unit").to_list()) == {"mGy"}
    # every dose (RP) alert value is a Dose (RP) Total (113725) of some RF SR, read by dsr2xml, in mGy
    totals = []
    for path in sorted([*openrem_dir().glob("RF-*.dcm"), openrem_dir() / "Dual-RDSR-RF.dcm"]):
        for a in dsr.read(path, exe).accumulated:
            totals += [dsr.to_unit(n.value, n.unit, "mGy") for n in a.values("113725")]
    for v in rp.get_column("value").to_list():
        assert any(v == pytest.approx(t, rel=1e-6) for t in totals) or v == pytest.approx(sum(totals), rel=1e-6)
    assert max(rp.get_column("value").to_list()) == pytest.approx(7688.97, abs=0.01)


# ---- workflow: unknown room and ties ------------------------------------------------------


def _dx(folder: Path, room: str | None, study: str, t: dt.datetime, n: int, key: AnswerKey) -> None:
    patient = {"name": f"P^{study[-4:]}", "id": f"P{study[-6:]}", "birth": dt.date(1970, 1, 1), "sex": "F"}
    st = {"uid": study, "start": t, "accession": "A" + study[-6:], "room": room or "", "description": "XR CHEST",
          "institution": "Test Hospital"}  # fmt: skip
    ds = _base("DX", DX_CLASS, patient, st, generate_uid(PREFIX, entropy_srcs=[study]), 1, n)
    if room is None:
        del ds.StationName
    ds.AcquisitionDate, ds.AcquisitionTime = t.strftime("%Y%m%d"), t.strftime("%H%M%S")
    _pixels(ds, n)
    _write(ds, folder, key)


@pytest.fixture(scope="module")
def tie_lakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict]:
    """The same exams written in two orders into two lakes. Room XR1: exams A and B start at the
    same second (A ends later), then C; two exams without a station name ('unknown room')."""
    root = tmp_path_factory.mktemp("ties")
    day = dt.datetime(2024, 5, 6, 9, 0, 0)
    studies = {
        "A": ("XR1", [day, day + dt.timedelta(minutes=6)]),
        "B": ("XR1", [day, day + dt.timedelta(minutes=2)]),
        "C": ("XR1", [day + dt.timedelta(minutes=20), day + dt.timedelta(minutes=21)]),
        "U1": (None, [day + dt.timedelta(minutes=1), day + dt.timedelta(minutes=3)]),
        "U2": (None, [day + dt.timedelta(minutes=10), day + dt.timedelta(minutes=12)]),
    }
    uids = {k: generate_uid(PREFIX) for k in studies}
    lakes = []
    for order in (sorted(studies), sorted(studies, reverse=True)):
        folder = root / f"files-{order[0]}"
        folder.mkdir()
        key = AnswerKey()
        for k in order:
            room, times = studies[k]
            for n, t in enumerate(times, start=1):
                _dx(folder, room, uids[k], t, n, key)
        lake = root / f"lake-{order[0]}"
        ingest_paths([folder], lake, workers=1)
        lakes.append(lake)
    return lakes, {"studies": studies, "uids": uids}


def test_workflow_gaps_skip_unknown_room_and_break_ties_the_same_way(tie_lakes: tuple[list[Path], dict]) -> None:
    lakes, info = tie_lakes
    studies, uids = info["studies"], info["uids"]
    # the answer: XR1 ordered by (start, end, study UID)
    xr1 = sorted(((t[0], t[-1], uids[k]) for k, (room, t) in studies.items() if room == "XR1"))
    want = [((b[0] - a[1]).total_seconds() / 60, a[2], b[2]) for a, b in itertools.pairwise(xr1)]
    got_all = []
    for lake in lakes:
        with Lake.open(lake, read_only=True) as lk:
            res = run_audit("workflow", lk)
        gaps = res.table("gaps")
        assert set(gaps.get_column("room").to_list()) == {"XR1"}  # none in 'unknown room'
        got = [(r["gap_min"], r["after"], r["before"]) for r in gaps.to_dicts() if r["gap_min"] >= 0]
        got_all.append(got)
        assert "unknown room" in res.table("rooms").get_column("room").to_list()
    assert got_all[0] == got_all[1]
    assert [g for g in got_all[0]] == [w for w in want if w[0] >= 0]


# ---- nuclear medicine: administered activity --------------------------------------------


def _dcmdump_values(path: Path, tag: str) -> list[str]:
    out = subprocess.run([require_tool("dcmdump"), "+P", tag, str(path)], capture_output=True, text=True, check=True)
    return [line.split("[", 1)[1].split("]", 1)[0] for line in out.stdout.splitlines() if "[" in line]


def test_nm_activity_audit_counts_each_administration_once_in_mbq(openrem_lake: Path) -> None:  # noqa: F811
    corpus = openrem_dir()
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("nm-dose", lk)
    rows = {r["radiopharmaceutical"]: r for r in res.all_data.to_dicts()}
    # NM images: Radionuclide Total Dose (0018,1074) in MBq (dcmdump); two images, one administration
    assert _dcmdump_values(corpus / "NM-NmIm-Siemens.dcm", "0018,1074") == ["764"]
    assert rows["DPD"]["activity_MBq"] == 764.0 and rows["DPD"]["drl_rule"] == "99mTc bone (MDP/HDP/DPD)"
    assert _dcmdump_values(corpus / "NM-NmIm-Siemens-s1-1.dcm", "0018,1074") == ["320"]
    assert _dcmdump_values(corpus / "NM-NmIm-Siemens-s1-2.dcm", "0018,1074") == ["320"]
    assert [r["radiopharmaceutical"] for r in res.all_data.to_dicts()].count("Sestamibi") == 1
    # PET images: in Bq (GE: 221596288 Bq = 221.596288 MBq)
    (bq,) = _dcmdump_values(corpus / "NM-PetIm-GE.dcm", "0018,1074")
    assert rows["FDG -- fluorodeoxyglucose"]["activity_MBq"] == pytest.approx(float(bq) / 1e6)
    # the study with a Radiopharmaceutical Radiation Dose SR: the SR's administration (113507), not its
    # PET images' again
    rep = dsr.read(corpus / "NM-RRDSR-Siemens.dcm", require_tool("dsr2xml"))
    sr_mbq = [dsr.to_unit(n.value, n.unit, "MBq") for ev in rep.events for n in ev.values("113507")]
    sr_study = str(pydicom.dcmread(corpus / "NM-RRDSR-Siemens.dcm", stop_before_pixels=True).StudyInstanceUID)
    in_study = res.all_data.filter(res.all_data["StudyInstanceUID"] == sr_study)
    assert sorted(in_study.get_column("activity_MBq").to_list()) == pytest.approx(sorted(sr_mbq))
    assert set(in_study.get_column("source").to_list()) == {"rdsr"}
    assert res.numbers["administrations"] == 4
    alerts = res.table("alerts")
    assert alerts.get_column("value").to_list() == [764.0] and alerts.get_column("unit").to_list() == ["MBq"]


def test_trend_table_medians_per_month_and_quarter() -> None:
    import polars as pl

    from dicomlake.audit.trends import trend_table

    df = pl.DataFrame({
        "StudyDate": [dt.date(2024, 1, 5), dt.date(2024, 1, 20), dt.date(2024, 2, 1), dt.date(2024, 4, 2), None],
        "room": ["CT1", "CT1", "CT1", "CT2", "CT1"],
        "dlp": [100.0, 300.0, 50.0, 80.0, 999.0],
    })  # fmt: skip
    month = trend_table(df, "StudyDate", "room", "dlp", "month").to_dicts()
    assert [(r["period"], r["room"], r["n"], r["median_dlp"]) for r in month] == [
        ("2024-01", "CT1", 2, 200.0), ("2024-02", "CT1", 1, 50.0), ("2024-04", "CT2", 1, 80.0)]  # fmt: skip
    quarter = trend_table(df, "StudyDate", "room", "dlp", "quarter").to_dicts()
    assert [(r["period"], r["room"], r["n"], r["median_dlp"]) for r in quarter] == [
        ("2024-Q1", "CT1", 3, 100.0), ("2024-Q2", "CT2", 1, 80.0)]  # fmt: skip
    with pytest.raises(ValueError, match="month or quarter"):
        trend_table(df, "StudyDate", "room", "dlp", "week")


def test_cumulative_fluoroscopy_alerts_sum_a_patients_studies_in_the_window() -> None:
    """Two studies of one patient 30 days apart, each under the threshold, together over it; a
    third 200 days later starts afresh; another patient never adds to the first."""
    import polars as pl

    from dicomlake.audit.dose import _cumulative_alerts

    d = dt.date(2024, 1, 10)
    studies = pl.DataFrame({
        "StudyInstanceUID": ["s1", "s2", "s3", "s4"],
        "StudyDate": [d, d + dt.timedelta(days=30), d + dt.timedelta(days=230), d + dt.timedelta(days=31)],
        "dap_total_cGycm2": [6000.0, 5000.0, 6000.0, 9000.0],
        "dose_rp_total_mGy": [1000.0, 1500.0, 1000.0, 2000.0],
    })  # fmt: skip
    events = pl.DataFrame({"StudyInstanceUID": ["s1", "s2", "s3", "s4"], "PatientID": ["P1", "P1", "P1", "P2"]})
    got = _cumulative_alerts(events, studies, {"cumulative_window_days": 84, "alert_cumulative_dap_cGycm2": 10000,
                                               "alert_cumulative_dose_rp_mGy": 3000})  # fmt: skip
    assert got.select("StudyInstanceUID", "studies_in_window", "cumulative_dap_cGycm2", "exceeds").rows() == [
        ("s2", 2, 11000.0, "DAP")]  # fmt: skip
    assert got.get_column("patient")[0].startswith("PT-") and "P1" not in got.get_column("patient")[0]


def test_ct_ctdivol_is_split_by_phantom_and_dlp_by_patient_weight(openrem_lake: Path) -> None:  # noqa: F811
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("ct-dose", lk)
    prot = res.table("ctdivol").get_column("protocol").to_list()
    assert "4DCT [32 cm phantom]" in prot and "10.13 RADIOTHERAPY QA [16 cm phantom]" in prot
    size = res.table("dlp-by-size").to_dicts()
    # CT-RDSR-Siemens_Flash-QA-DS: Patient's Weight (0010,1030) read by dcmdump
    ds = pydicom.dcmread(openrem_dir() / "CT-RDSR-Siemens_Flash-QA-DS.dcm", stop_before_pixels=True)
    weight = float(_dcmdump_values(openrem_dir() / "CT-RDSR-Siemens_Flash-QA-DS.dcm", "0010,1030")[0])
    want_band = "70–90 kg" if 70 <= weight < 90 else ("≥ 90 kg" if weight >= 90 else None)
    row = [r for r in size if r["study_description_std"] == ds.StudyDescription]
    assert row and row[0]["weight_band"] == want_band


def test_a_flag_on_a_dose_sr_excludes_only_the_event_it_names() -> None:
    """The Hologic case: an RDSR with a 0.0 mGy event among good ones; curation's rdsr-agd flag
    names the event by its UID (engine message format), and only that AGD leaves the statistics."""
    import polars as pl

    from dicomlake.audit.mg import exclude_flagged

    df = pl.DataFrame({
        "SOPInstanceUID": ["sr1", "sr1", "sr1", "img1"], "IrradiationEventUID": ["e1", "e2", "e3", None],
        "source": ["rdsr", "rdsr", "rdsr", "header"], "x_ray_set": ["H"] * 4, "mode": ["2D"] * 4,
        "view": ["CC", "CC", "MLO", "CC"], "agd_mGy": [1.2, 0.0, 1.3, 1.1], "kvp": [28.0, 20.0, 29.0, 28.0],
        "compressed_breast_thickness_mm": [50.0, 128.0, 55.0, 4.0], "compression_force_N": [90.0, 80.0, 85.0, 70.0],
    })  # fmt: skip
    flags = pl.DataFrame({
        "SOPInstanceUID": ["sr1", "img1"], "rule": ["rdsr-agd", "mg-breast-thickness"],
        "attribute": ["agd_mGy", "BodyPartThickness"], "value": ["0.0", "4.0"],
        "message": ["Average Glandular Dose (111631) outside 0.1-10 mGy (found 0.0 mGy in irradiation event e2; "
                    "plausible 0.1–10 mGy)", "Compressed breast thickness implausible (found 4.0 mm)"],
    })  # fmt: skip
    kept, excluded = exclude_flagged(df, flags)
    assert kept.get_column("agd_mGy").to_list() == [1.2, None, 1.3, 1.1]
    assert kept.get_column("compressed_breast_thickness_mm").to_list() == [50.0, 128.0, 55.0, None]
    assert excluded.select("IrradiationEventUID", "column", "value", "rule").rows() == [
        ("e2", "agd_mGy", 0.0, "rdsr-agd"), (None, "compressed_breast_thickness_mm", 4.0, "mg-breast-thickness")]  # fmt: skip


def test_log_axis_option(openrem_lake: Path) -> None:  # noqa: F811
    cfg = load_settings()
    cfg["ct"]["log_axis"] = True
    cfg["mg"]["log_axis"] = True
    with Lake.open(openrem_lake, read_only=True) as lk:
        ct = run_audit("ct-dose", lk, settings=cfg)
        mg = run_audit("mg-dose", lk, settings=cfg)
        plain = run_audit("ct-dose", lk)
    assert {c.id: c.figure.layout.yaxis.type for c in ct.charts if c.id in ("ctdivol", "dlp")} == {
        "ctdivol": "log", "dlp": "log"}  # fmt: skip
    assert next(c for c in mg.charts if c.id == "dose-vs-thickness").figure.layout.yaxis.type == "log"
    assert next(c for c in plain.charts if c.id == "ctdivol").figure.layout.yaxis.type == "linear"


def test_no_gap_between_two_devices_that_share_a_station_name(openrem_lake: Path) -> None:  # noqa: F811
    """NM-NmIm-Siemens (Encore2) and NM-PetIm-Siemens (Biograph64_Vision 600) both say StationName
    REMOVED (dcmdump); 94 minutes between them is not a gap between patients in one room."""
    corpus = openrem_dir()
    assert _dcmdump_values(corpus / "NM-NmIm-Siemens.dcm", "0008,1010") == ["REMOVED"]
    assert _dcmdump_values(corpus / "NM-PetIm-Siemens.dcm", "0008,1010") == ["REMOVED"]
    assert _dcmdump_values(corpus / "NM-NmIm-Siemens.dcm", "0008,1090") != _dcmdump_values(
        corpus / "NM-PetIm-Siemens.dcm", "0008,1090"
    )
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("workflow", lk)
    assert res.table("gaps").height == 0


def test_bands_in_thickness_order_and_heat_map_from_zero(openrem_lake: Path) -> None:  # noqa: F811
    with Lake.open(openrem_lake, read_only=True) as lk:
        mg = run_audit("mg-dose", lk)
        wf = run_audit("workflow", lk)
    bands = next(c for c in mg.charts if c.id == "bands").figure.layout.xaxis
    order = list(bands.categoryarray)
    assert bands.categoryorder == "array" and order[0] == "20–30 mm"
    assert [float(b.split("–")[0]) for b in order] == sorted(float(b.split("–")[0]) for b in order)
    heat = next(c for c in wf.charts if c.id == "utilisation").figure.data[0]
    assert heat.zmin == 0
