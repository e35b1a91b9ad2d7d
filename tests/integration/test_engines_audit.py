"""`curate run` and every audit on DuckDB, PostgreSQL (a real server on loopback) and a Parquet
lake made by `export --format lake`, over the same OpenREM sample files: the audits' numbers
are equal on the three engines, and the CT study totals equal dcmtk's dsr2xml reading of the
Siemens RDSRs (tests/oracles/dsr.py), never our parser.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomlake.audit import AUDITS, run_audit
from dicomlake.query.lake import Lake
from tests.integration.pg import PostgresCluster, start_or_skip
from tests.test_audit_study import CONTINUED, MULTI, _dsr_study_truth, openrem_dir

pytestmark = pytest.mark.integration

# small files, every audit served: CT (the dsr2xml oracle's cumulative and continued RDSRs, a
# dose screen for the SC catalogue), MG (RDSR and an image header), DX, RF, NM (SR and header)
FILES = (
    *MULTI,
    *CONTINUED,
    "CT-SC-Philips_Brilliance16P.dcm",
    "MG-RDSR-Hologic_2D.dcm",
    "MG-Im-GE-SenDS-scaled.dcm",
    "DX-RDSR-Canon_CXDI.dcm",
    "DX-Im-Carestream_DR7500-1.dcm",
    "Dual-RDSR-RF.dcm",
    "NM-RRDSR-Siemens.dcm",
    "NM-PetIm-GE.dcm",  # an administration read from an image header (elements), not an SR
)
ENGINES = ("duckdb", "postgres", "parquet")


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The same files in a DuckDB and a PostgreSQL lake, each curated by `curate run`, and the
    DuckDB lake exported as a Parquet lake."""
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.postgres import PostgresStore

    root = tmp_path_factory.mktemp("engines")
    files = root / "files"
    files.mkdir()
    for name in FILES:
        shutil.copy(openrem_dir() / name, files / name)
    cluster: PostgresCluster = start_or_skip()
    try:
        duck = root / "duck"
        url = cluster.create_database("engines")
        assert ingest_paths([files], duck, workers=1).instances == len(FILES)
        with PostgresStore(url) as st:
            assert ingest_paths([files], url, workers=1, store=st).instances == len(FILES)
        curated = {}
        for name, lake in (("duckdb", str(duck)), ("postgres", url)):
            res = _cli("curate", "run", "--lake", lake)
            assert res.exit_code == 0, res.output
            curated[name] = res.output.splitlines()[1:]  # per-rule counts (the first line has the time)
        assert curated["duckdb"] == curated["postgres"]
        parquet = root / "parquet"
        res = _cli("export", "--lake", str(duck), "--format", "lake", "--out", str(parquet))
        assert res.exit_code == 0, res.output
        yield {"duckdb": str(duck), "postgres": url, "parquet": str(parquet)}
    finally:
        cluster.stop()


def _plain(value: Any) -> Any:
    """Numbers as the audits report them, floats to 9 significant digits (engines sum in another order)."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.9g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def test_curate_run_on_a_parquet_lake_says_it_cannot_in_one_line(lakes: dict[str, str]) -> None:
    res = _cli("curate", "run", "--lake", lakes["parquet"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Parquet lake" in lines[0] and "read-only" in lines[0], res.output


@functools.cache
def _truth(files: tuple[str, ...]) -> dict[str, dict[str, object]]:
    return _dsr_study_truth(files)  # dsr2xml once per file set, not once per engine


def _assert_dsr2xml_totals(studies: Any) -> None:
    for files in (MULTI, CONTINUED):
        for study, truth in _truth(files).items():
            events: dict[str, float] = truth["events"]  # type: ignore[assignment]
            (row,) = studies.filter(studies["StudyInstanceUID"] == study).to_dicts()
            assert row["events"] == len(events)
            assert row["DLP_total_mGycm"] == pytest.approx(sum(events.values()), rel=1e-9)


@pytest.mark.parametrize("audit", AUDITS)
def test_every_audit_gives_the_same_numbers_on_duckdb_postgres_and_parquet(lakes: dict[str, str], audit: str) -> None:
    numbers = {}
    for engine in ENGINES:
        with Lake.open(lakes[engine], read_only=True) as lk:
            res = run_audit(audit, lk)
        numbers[engine] = _plain(res.numbers)
        assert not [n for n in res.notes if "not read" in n or "Error" in n], (engine, res.notes)
        if audit == "ct-dose":  # the outside oracle: dsr2xml's distinct events of each study
            _assert_dsr2xml_totals(res.table("studies"))
    assert numbers["postgres"] == numbers["duckdb"]
    assert numbers["parquet"] == numbers["duckdb"]
    assert any(v not in (0, None, {}, []) for v in numbers["duckdb"].values()), numbers["duckdb"]
    if audit == "nm-dose":  # the SR's administration and the PET header's (split_part, not regexp_extract)
        assert numbers["duckdb"]["administrations"] == 2, numbers["duckdb"]


@pytest.mark.parametrize("audit", AUDITS)
def test_audits_filtered_by_modality_and_date_agree_on_every_engine(lakes: dict[str, str], audit: str) -> None:
    """A Parquet lake adds partition conditions to Modality/StudyDate filters: through the audits'
    alias (``s``) too (it raised "Referenced table i not found" on Parquet). Runs before the tests
    below that curate and confirm on DuckDB and PostgreSQL only (the Parquet lake is not re-exported)."""
    from dicomlake.audit.common import Selection

    sel = Selection(where=["Modality = CT,SR,MG,DX,RF,NM,PT", "StudyDate = 19000101-"])
    numbers = {}
    for engine in ENGINES:
        with Lake.open(lakes[engine], read_only=True) as lk:
            numbers[engine] = _plain(run_audit(audit, lk, sel).numbers)
    assert numbers["parquet"] == numbers["duckdb"] == numbers["postgres"]


def test_dose_charts_widened_to_the_study_agree_on_every_engine(lakes: dict[str, str]) -> None:
    """``Modality = CT`` on a dose chart also takes the study's RDSR (Modality SR, in the SR
    partition of a Parquet lake): the partition condition must not narrow that OR (0 rows on
    Parquet before)."""
    from dicomlake.query.dashboards import chart

    rows = {}
    for engine in ENGINES:
        with Lake.open(lakes[engine], read_only=True) as lk:
            t = chart(lk.store, "ct-dose", [], modalities=["Modality = CT"])
        rows[engine] = sorted(_plain(list(r.values())) for r in t.to_pylist())
    assert rows["duckdb"], "the CT RDSRs give dose rows"
    assert rows["parquet"] == rows["duckdb"] == rows["postgres"]


def test_curate_names_propose_confirm_history_on_duckdb_and_postgres(lakes: dict[str, str], tmp_path: Path) -> None:
    """The same proposals from both engines; confirmed as they are, the same ``instances_std``
    view; on the Parquet lake ``--confirm`` is refused in one line. (Last: it adds a mapping.)"""
    proposals = {}
    for engine in ("duckdb", "postgres"):
        out = tmp_path / f"{engine}.csv"
        res = _cli("curate", "names", "--propose", str(out), "--lake", lakes[engine])
        assert res.exit_code == 0, res.output
        proposals[engine] = out.read_text("utf-8")
    assert proposals["postgres"] == proposals["duckdb"]
    confirmed = tmp_path / "confirmed.csv"
    confirmed.write_text(proposals["duckdb"].replace(",proposed\n", ",confirmed\n"), "utf-8")
    views = {}
    for engine in ("duckdb", "postgres"):
        res = _cli("curate", "names", "--confirm", str(confirmed), "--by", "tester", "--lake", lakes[engine])
        assert res.exit_code == 0, res.output
        res = _cli("curate", "names", "--history", "--lake", lakes[engine])
        assert res.exit_code == 0 and res.output.startswith("v1: ") and "by tester" in res.output, res.output
        with Lake.open(lakes[engine], read_only=True) as lk:
            views[engine] = sorted(
                lk.sql('SELECT "SOPInstanceUID", protocol_std, station_std, institution_std FROM instances_std').rows()
            )
    assert views["postgres"] == views["duckdb"] and views["duckdb"]
    res = _cli("curate", "names", "--confirm", str(confirmed), "--lake", lakes["parquet"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


def test_sc_dose_in_review_is_confirmed_alike_on_duckdb_and_postgres(lakes: dict[str, str]) -> None:
    """A dose screen's reading kept in review (sc_analysis.dose_pending) goes into dose_events
    by `sc confirm-dose` on both engines, and is refused on a Parquet lake in one line. (After
    the audits: it adds a dose row.)"""
    import json

    import pyarrow as pa

    from dicomlake.extract.sc import SC_ANALYSIS_SCHEMA
    from dicomlake.store.open import open_store
    from dicomlake.store.sc_tables import sc_tables_of

    uid, study = "1.2.826.0.1.3680043.8.498.99001", "1.2.826.0.1.3680043.8.498.99000"
    pending = [{"SOPInstanceUID": uid, "StudyInstanceUID": study, "source": "ocr", "record": "event",
                "modality_family": "CT", "CTDIvol_mGy": 7.25, "DLP_mGycm": 311.5}]  # fmt: skip
    got = {}
    for engine in ("duckdb", "postgres"):
        with open_store(lakes[engine]) as store:
            door = sc_tables_of(store)
            door.ensure_table(SC_ANALYSIS_SCHEMA)
            row = {"SOPInstanceUID": uid, "StudyInstanceUID": study, "content_class": "dose_screen",
                   "dose_status": "review", "dose_pending": json.dumps(pending)}  # fmt: skip
            door.replace_analysis(pa.Table.from_pylist([row], schema=SC_ANALYSIS_SCHEMA), None)
        res = _cli("sc", "confirm-dose", uid, "--lake", lakes[engine])
        assert res.exit_code == 0 and f"confirmed {uid}: 1 dose rows stored" in res.output, res.output
        with Lake.open(lakes[engine], read_only=True) as lk:
            got[engine] = (
                lk.sql(f"SELECT source, CTDIvol_mGy, DLP_mGycm FROM dose_events WHERE SOPInstanceUID = '{uid}'").rows(),
                lk.sql(f"SELECT dose_status, dose_pending FROM sc_analysis WHERE SOPInstanceUID = '{uid}'").rows(),
            )
        again = _cli("sc", "confirm-dose", uid, "--lake", lakes[engine])  # nothing in review any more
        assert again.exit_code == 2 and "no dose reading in review" in again.output, again.output
    assert got["duckdb"] == ([("ocr", 7.25, 311.5)], [("confirmed", None)])
    assert got["postgres"] == got["duckdb"]
    res = _cli("sc", "confirm-dose", uid, "--lake", lakes["parquet"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
