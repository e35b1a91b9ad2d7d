"""The PostgreSQL element store (store/pg_elements.py) on a real server: the ``elements`` view
gives every element pydicom reads, from runs and from the delta alike; a replaced instance's
old rows never show and ``compact`` drops them; a filter on one attribute reads that
attribute's runs only (PostgreSQL's own executor counts); writers folding at the same time
lose and double nothing. Bytes per instance and filter times: bench/bench_growth.py."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.query.lake import Lake
from dicomlake.store import pg_elements
from dicomlake.store.postgres import PostgresStore
from tests.integration.pg import PostgresCluster, start_or_skip
from tests.test_elementstore import _files, _filter_uids, _pydicom_counts, _pydicom_having

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    cluster = start_or_skip()
    yield cluster
    cluster.stop()


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold every ~3 of the sample instances; a batch of ~5 or more is written as runs directly."""
    monkeypatch.setattr(pg_elements, "FOLD_ROWS", 2_500)
    monkeypatch.setattr(pg_elements, "DIRECT_ROWS", 5_000)
    monkeypatch.setattr(pg_elements, "RUN_INSTANCES", 4)


def _count(st: PostgresStore, sql: str) -> int:
    row = st.connection.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _check_against_pydicom(st: PostgresStore, files: list[Path]) -> None:
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        rows = st.query("SELECT depth, tag FROM elements WHERE SOPInstanceUID = ?", [uid]).to_pylist()
        ours = Counter(
            (int(r["depth"]), str(r["tag"]).replace("(", "").replace(",", "").replace(")", "").upper()) for r in rows
        )
        theirs = _pydicom_counts(f)
        assert ours == theirs, f"{f.name}: missing {theirs - ours}, extra {ours - theirs}"


def test_view_gives_every_element_pydicom_reads_from_runs_and_delta(small_runs: None, pg: PostgresCluster) -> None:
    files = _files(10)
    url = pg.create_database()
    with PostgresStore(url) as st:
        for f in files[:6]:  # one instance per batch: the delta fills and is folded into runs
            ingest_paths([f], url, workers=1, store=st)
        ingest_paths(files[6:], url, workers=1, store=st)  # one big batch: runs directly
        assert _count(st, "SELECT count(*) FROM element_runs") > 0
        assert _count(st, "SELECT count(*) FROM element_delta") > 0
        _check_against_pydicom(st, files)
        # runs never repeat an attribute's text: one element_keys row per distinct attribute
        assert _count(st, "SELECT count(*) FROM element_keys") == _count(
            st,
            'SELECT count(*) FROM (SELECT DISTINCT path_key, depth, tag, keyword, "VR", private_creator FROM elements) d',
        )


def test_replaced_instances_show_once_and_compact_drops_their_old_rows(small_runs: None, pg: PostgresCluster) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    files = _files(8)
    url = pg.create_database()
    with PostgresStore(url) as st:
        ingest_paths(files, url, workers=1, store=st)
        live = _count(st, "SELECT count(*) FROM elements")
        assert ingest_paths(files[:4], url, workers=1, store=st).replaced == 4
        dead = _count(st, "SELECT count(*) FROM element_index WHERE iid NOT IN (SELECT _iid FROM instances)")
        assert dead > 0  # the replaced copies' rows are still stored
        assert _count(st, "SELECT count(DISTINCT iid) FROM element_dead") == 4  # their old numbers
        _check_against_pydicom(st, files)  # ... and never shown
        lk = Lake(st)
        assert lk.element_join == pg_elements.JOIN
        partial = 0
        for keyword in ("InstitutionAddress", "DateOfLastCalibration", "AdditionalPatientHistory", "PatientAddress"):
            assert keyword not in lk.columns.kinds  # a filter on it reads the element store
            want = _pydicom_having(files, keyword)
            partial += 0 < len(want) < len(files)
            assert _filter_uids(lk, keyword) == want, keyword
        assert partial >= 2
    res = CliRunner().invoke(app, ["compact", url], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    dropped = next(line for line in res.output.splitlines() if "replaced instances dropped" in line)
    assert dropped.replace("│", " ").split()[-1] == f"{dead:,}", res.output
    with PostgresStore(url) as st:
        assert _count(st, "SELECT count(*) FROM element_index") == live
        assert _count(st, "SELECT count(*) FROM element_index WHERE iid NOT IN (SELECT _iid FROM instances)") == 0
        assert _count(st, "SELECT count(*) FROM element_delta") == _count(st, "SELECT count(*) FROM element_dead") == 0
        # one run per attribute and group of RUN_INSTANCES instance numbers
        assert _count(st, "SELECT count(*) FROM element_runs WHERE lower(span) / 4 <> (upper(span) - 1) / 4") == 0
        assert (
            _count(st, "SELECT count(*) FROM (SELECT 1 FROM element_runs GROUP BY kid, base HAVING count(*) > 1) d")
            == 0
        )
        _check_against_pydicom(st, files)
        assert st.compact_elements()["runs_before"] == 0  # nothing left to rewrite


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_a_filter_reads_only_its_attributes_runs(pg: PostgresCluster) -> None:
    """PostgreSQL's EXPLAIN ANALYZE (not our code) counts the element_runs rows a filter read."""
    files = _files(12)
    url = pg.create_database()
    with PostgresStore(url) as st:
        ingest_paths(files, url, workers=1, store=st)
        st.compact_elements()
        lk = Lake(st)
        keyword = "DateOfLastCalibration"
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None
        sql, params, _ = lk.build_query([f"({tag >> 16:04X},{tag & 0xFFFF:04X}) = *"], ["SOPInstanceUID"], "instance")
        from dicomlake.store.lakesql import to_postgres

        pg_sql, pg_params = to_postgres(sql, params, st._sql_names)
        st.connection.execute("ANALYZE")
        plan = st.connection.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + pg_sql, pg_params).fetchone()[0][0]["Plan"]
        read = sum(
            int(n["Actual Rows"]) * int(n.get("Actual Loops", 1))
            for n in _plan_nodes(plan)
            if n.get("Relation Name") == "element_runs"
        )
        runs_of_attr = _count(
            st,
            "SELECT count(*) FROM element_runs r JOIN element_keys k USING (kid) "
            f"WHERE k.depth = 0 AND k.keyword = '{keyword}'",
        )
        total = _count(st, "SELECT count(*) FROM element_runs")
        assert 0 < runs_of_attr == read < total / 20, (read, runs_of_attr, total)
        assert _filter_uids(lk, keyword) == _pydicom_having(files, keyword)


def test_writers_folding_at_once_lose_and_double_nothing(small_runs: None, pg: PostgresCluster) -> None:
    """Three writers, one instance per batch, overlapping files: folds run in whichever writer
    finds the delta full (a try-lock), beside the others' batches."""
    files = _files(12)
    url = pg.create_database()
    PostgresStore(url).close()
    errors: list[BaseException] = []

    def writer(part: list[Path]) -> None:
        try:
            with PostgresStore(url) as st:
                for f in part:
                    ingest_paths([f], url, workers=1, store=st)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    parts = [files[0:6], files[4:10], files[8:12] + files[0:2]]
    threads = [threading.Thread(target=writer, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with PostgresStore(url) as st:
        assert _count(st, "SELECT count(*) FROM element_runs") > 0
        assert _count(st, "SELECT count(*) FROM instances") == len(files)
        _check_against_pydicom(st, files)
