"""Study-level audit numbers over the real OpenREM files, against outside readings.

- Siemens cumulative RDSRs (``CT-RDSR-Siemens-Multi-1/2/3``: each repeats the previous
  events) and "continued" RDSRs (``CT-RDSR-Siemens-Continued-1/2``: one study over two
  SRs): the study's event count and DLP total must be the distinct-event sums computed from
  the SR trees as dcmtk's ``dsr2xml`` reads them (tests/oracles/dsr.py), never our parser.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest

from dicomlake.audit import run_audit
from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.query.lake import Lake
from tests.conftest import IN_CI, require_tool
from tests.oracles import dsr

MULTI = ("CT-RDSR-Siemens-Multi-1.dcm", "CT-RDSR-Siemens-Multi-2.dcm", "CT-RDSR-Siemens-Multi-3.dcm")
CONTINUED = ("CT-RDSR-Siemens-Continued-1.dcm", "CT-RDSR-Siemens-Continued-2.dcm")


def openrem_dir() -> Path:
    from dicomlake.samples import repo_corpus

    corpus = repo_corpus()
    if corpus is None or not (corpus / "openrem").is_dir():
        if IN_CI:
            pytest.fail("tests/data/corpus/openrem is missing")
        pytest.skip("tests/data/corpus/openrem is missing")
    return corpus / "openrem"


@pytest.fixture(scope="module")
def openrem_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("openrem-study") / "lake"
    report = ingest_paths([openrem_dir()], lake, workers=2)
    assert not report.rejected
    return lake


def _dsr_study_truth(files: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """Per study: distinct Irradiation Event UIDs and the sum of their DLP (113838), from
    dsr2xml's reading of every SR of the study; plus each SR's own 113813 total."""
    exe = require_tool("dsr2xml")
    corpus = openrem_dir()
    by_study: dict[str, dict[str, object]] = defaultdict(lambda: {"events": {}, "sr_totals": []})
    for name in files:
        study = str(pydicom.dcmread(corpus / name, stop_before_pixels=True).StudyInstanceUID)
        rep = dsr.read(corpus / name, exe)
        events: dict[str, float] = by_study[study]["events"]  # type: ignore[assignment]
        for ev in rep.events:
            assert ev.uid, f"{name}: an event without an Irradiation Event UID"
            dlp = [dsr.to_unit(n.value, n.unit, "mGy.cm") for n in ev.values("113838")]
            events[ev.uid] = dlp[0]  # the same event in a later report: the later reading
        totals = [dsr.to_unit(n.value, n.unit, "mGy.cm") for a in rep.accumulated for n in a.values("113813")]
        by_study[study]["sr_totals"].append(totals[0])  # type: ignore[union-attr]
    return dict(by_study)


@pytest.mark.parametrize("files", [MULTI, CONTINUED], ids=["cumulative", "continued"])
def test_ct_study_totals_equal_distinct_event_sums_read_by_dsr2xml(openrem_lake: Path, files: tuple[str, ...]) -> None:
    truth = _dsr_study_truth(files)
    assert len(truth) == 1
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("ct-dose", lk)
    studies = res.table("studies")
    for study, t in truth.items():
        events: dict[str, float] = t["events"]  # type: ignore[assignment]
        row = studies.filter(studies["StudyInstanceUID"] == study).to_dicts()
        assert len(row) == 1
        assert row[0]["events"] == len(events)
        assert row[0]["DLP_total_mGycm"] == pytest.approx(sum(events.values()), rel=1e-9)
        # and the row-level data holds each distinct event exactly once
        rows = res.all_data.filter(res.all_data["StudyInstanceUID"] == study)
        assert rows.height == len(events)
    if files == CONTINUED:  # the two SRs' own totals add up (60.17 + 56.44)
        (t,) = truth.values()
        assert sum(t["sr_totals"]) == pytest.approx(116.61)  # type: ignore[arg-type]
        assert row[0]["DLP_total_mGycm"] == pytest.approx(116.61)
    else:  # the newest cumulative report's total is the study's
        (t,) = truth.values()
        assert row[0]["DLP_total_mGycm"] == pytest.approx(max(t["sr_totals"]))  # type: ignore[type-var]


def test_cumulative_reports_count_each_protocol_event_once(openrem_lake: Path) -> None:
    """The issue's figure: 4DCT on CTAWP12345 is n = 2 (not 3) with median CTDIvol of the two
    distinct 4DCT events that dsr2xml reads in the newest report."""
    exe = require_tool("dsr2xml")
    newest = dsr.read(openrem_dir() / MULTI[-1], exe)
    ctdi = sorted(n.value for ev in newest.events for n in ev.values("113830"))
    with Lake.open(openrem_lake, read_only=True) as lk:
        res = run_audit("ct-dose", lk)
    # 4DCT in the 32 cm (body) phantom: dsr2xml reads CTDIw Phantom Type (113835) as 113691
    out = subprocess.run([exe, *dsr.DSR2XML_FLAGS, str(openrem_dir() / MULTI[-1])], capture_output=True, check=True)
    assert "113691" in {v.get("codValue") for v in ET.fromstring(out.stdout).iter("value")}
    med = res.table("ctdivol").filter(res.table("ctdivol")["protocol"] == "4DCT [32 cm phantom]").to_dicts()
    assert [r["n"] for r in med] == [2]
    four_d = sorted(ctdi)[-2:]  # the two 4DCT events are the non-topogram ones (8.13, 7.02)
    assert med[0]["median_CTDIvol_mGy"] == pytest.approx(sum(four_d) / 2)


def test_distinct_event_view_serves_other_consumers(openrem_lake: Path) -> None:
    """The helper SQL is usable on its own: one row per (study, event UID) for the RDSR events."""
    from dicomlake.events import distinct_events_sql

    with Lake.open(openrem_lake, read_only=True) as lk:
        raw = lk.sql("SELECT count(*) AS n FROM dose_events WHERE source = 'rdsr' AND record = 'event'").item()
        d = lk.sql(
            f"SELECT StudyInstanceUID, IrradiationEventUID, count(*) AS n FROM ({distinct_events_sql()}) x "
            "WHERE source = 'rdsr' AND record = 'event' AND IrradiationEventUID IS NOT NULL GROUP BY 1, 2"
        )
    assert d.height and d["n"].max() == 1
    assert raw - d["n"].sum() >= 3  # Multi-2 repeats one event, Multi-3 two


def test_name_variants_count_each_protocol_event_once(openrem_lake: Path) -> None:
    """`curate names --propose` counts a protocol's uses from dose_events too: 4DCT was used twice
    (two distinct Irradiation Event UIDs in the newest cumulative report, read by dsr2xml)."""
    from dicomlake.curate import names
    from dicomlake.store.curation import curation_of

    rep = dsr.read(openrem_dir() / MULTI[-1], require_tool("dsr2xml"))
    assert len({ev.uid for ev in rep.events}) == 3  # topogram + two 4DCT
    with Lake.open(openrem_lake, read_only=True) as lk:
        counts = dict(names.variants_in_lake(curation_of(lk.store), ["protocol"])["protocol"])
    assert counts["4DCT"] == 2
