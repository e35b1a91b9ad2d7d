"""The PostgreSQL element store (store/pg_elements.py) on a real server: the ``elements`` view
gives every element pydicom reads, from runs and from the delta alike; a replaced instance's
old rows never show and ``compact`` drops them; a filter on one attribute reads that
attribute's runs only (PostgreSQL's own executor counts); writers folding at the same time
lose and double nothing. Bytes per instance and filter times: bench/bench_growth.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pydicom
import pytest

from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.query.filters import where_clause
from dicomlake.query.lake import Lake
from dicomlake.store import pg_elements
from dicomlake.store.postgres import PostgresStore
from tests.integration.pg import PostgresCluster, running_cluster
from tests.test_elementstore import _files, _filter_uids, _pydicom_counts, _pydicom_having, check_element_filters
from tests.test_store_backends import worker_batch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    yield from running_cluster()


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
        check_element_filters(lk, files)
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


def _tables(files: list[Path]) -> dict[str, Any]:
    """One ingest batch of ``files`` as the workers make it (the tables ``write_batch`` takes)."""
    from dicomlake.ingest.sources import expand

    return worker_batch([t for f in files for t in expand([f])])[0]


def test_two_writers_of_one_new_instance_leave_no_rows_behind_after_compact(pg: PostgresCluster) -> None:
    """Writer A inserts a new instance and holds its transaction open; writer B's batch of the
    same instance waits for A, then replaces it (a new number). A's rows are then dead: compact
    drops them (a number recorded by a select before B's upsert missed A's uncommitted row)."""
    files = _files(2)
    url = pg.create_database()
    tables = _tables(files)
    a, b = PostgresStore(url), PostgresStore(url)
    slow_write = a._write_elements

    def held(*args: Any, **kwargs: Any) -> None:
        slow_write(*args, **kwargs)
        time.sleep(2.0)  # A's rows are written, its transaction not committed yet

    a._write_elements = held  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run(st: PostgresStore) -> None:
        try:
            st.write_batch(tables, [])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ta = threading.Thread(target=run, args=(a,))
    ta.start()
    time.sleep(0.7)
    tb = threading.Thread(target=run, args=(b,))
    tb.start()
    ta.join()
    tb.join()
    assert errors == []
    orphans = "SELECT count(*) FROM element_index WHERE iid NOT IN (SELECT _iid FROM instances)"
    assert _count(b, orphans) == tables["elements"].num_rows  # A's rows, under A's numbers
    done = b.compact_elements()
    assert done["rows_dropped"] == tables["elements"].num_rows
    assert _count(b, orphans) == 0
    _check_against_pydicom(b, files)
    a.close()
    b.close()


def test_compact_beside_a_writer_and_a_reader(small_runs: None, pg: PostgresCluster) -> None:
    """Compaction takes the writers' lock order (no deadlock with a writer replacing instances),
    and a reader neither waits for it nor loses rows from its snapshot."""
    import psycopg

    files = _files(10)
    url = pg.create_database()
    with PostgresStore(url) as st:
        ingest_paths(files, url, workers=1, store=st)
        total = _count(st, "SELECT count(*) FROM elements")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with PostgresStore(url) as st:
                for f in files * 2:  # one replaced instance per batch: the trigger writes element_dead
                    ingest_paths([f], url, workers=1, store=st)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    tw = threading.Thread(target=writer)
    tw.start()
    with PostgresStore(url) as st:
        while tw.is_alive():
            st.compact_elements()
    tw.join()
    assert errors == []
    with psycopg.connect(url, autocommit=True) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM elements").fetchone() == (total,)
        done: list[dict[str, int]] = []
        tc = threading.Thread(target=lambda: done.append(PostgresStore(url).compact_elements()))
        tc.start()
        tc.join(30)
        assert done, "compaction waited for a reader"
        assert reader.execute("SELECT count(*) FROM elements").fetchone() == (total,)  # its snapshot
        reader.execute("COMMIT")
    with PostgresStore(url) as st:
        assert _count(st, "SELECT count(*) FROM element_index") == total  # the replaced copies dropped
        _check_against_pydicom(st, files)


def test_a_select_column_without_a_typed_column_reads_one_instances_runs(pg: PostgresCluster) -> None:
    """``--select InstitutionAddress`` looks each row's value up through ``elements`` by UID (the
    span index): PostgreSQL's plan reads element_runs by ``span``, and the values are pydicom's."""
    files = _files(12)
    url = pg.create_database()
    with PostgresStore(url) as st:
        ingest_paths(files, url, workers=1, store=st)
        lk = Lake(st)
        got = lk.query_arrow([], ["SOPInstanceUID", "InstitutionAddress"], "instance").to_pylist()
        want = {}
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            value = ds.get("InstitutionAddress")
            want[str(ds.SOPInstanceUID)] = str(value) if value not in (None, "") else None
        assert {r["SOPInstanceUID"]: r["InstitutionAddress"] for r in got} == want
        assert any(want.values())
        sql, params, _ = lk.build_query([], ["SOPInstanceUID", "InstitutionAddress"], "instance")
        from dicomlake.store.lakesql import to_postgres

        pg_sql, pg_params = to_postgres(sql, params, st._sql_names)
        # at 12 instances a scan of the whole table is cheapest: ask for the plan that uses an index
        # (through element_index by number, the only one reachable is element_runs_kid: every run
        # of the attribute, for each row)
        st.connection.execute("SET enable_seqscan = off")
        plan = st.connection.execute("EXPLAIN (FORMAT JSON) " + pg_sql, pg_params).fetchone()[0][0]["Plan"]
        st.connection.execute("RESET enable_seqscan")
        used = {
            str(n.get("Index Name")) for n in _plan_nodes(plan) if str(n.get("Index Name")).startswith("element_runs")
        }
        assert used == {"element_runs_span"}, used


def test_migration_7_names_a_table_that_takes_a_filter_views_name(pg: PostgresCluster) -> None:
    import psycopg

    from dicomlake.errors import ConfigError
    from dicomlake.lakeschema import instance_columns
    from dicomlake.store.migrations import current_version, migrate

    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as con:  # a lake at schema 6 with a user's table of that name
        migrate(con, instance_columns(), target=6)
        con.execute("CREATE TABLE element_texts (note TEXT)")
        con.execute("INSERT INTO element_texts VALUES ('mine')")
    with pytest.raises(ConfigError, match="already has element_texts: rename or drop it"):
        PostgresStore(url)
    with psycopg.connect(url, autocommit=True) as con:
        assert current_version(con) == 6  # nothing half-done, the user's rows kept
        assert con.execute("SELECT note FROM element_texts").fetchall() == [("mine",)]
        con.execute("ALTER TABLE element_texts RENAME TO my_notes")
    with PostgresStore(url) as st:
        assert st.applied == [7]


def test_migration_names_the_views_that_depend_on_the_old_elements_table(
    pg: PostgresCluster, sample_sources: list[Path]
) -> None:
    import psycopg

    from dicomlake.errors import ConfigError
    from dicomlake.lakeschema import instance_columns
    from dicomlake.store.migrations import current_version, migrate

    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as con:  # a lake as schema 5 left it, and a user's view
        migrate(con, instance_columns(), target=5)
        con.execute("CREATE VIEW my_ct AS SELECT * FROM elements WHERE depth = 0")
    with pytest.raises(ConfigError, match="my_ct depends on the table"):
        PostgresStore(url)
    with psycopg.connect(url, autocommit=True) as con:
        assert current_version(con) == 5  # nothing half-done
        con.execute("DROP VIEW my_ct")
    with PostgresStore(url) as st:
        assert st.applied == [6, 7]


def test_element_rows_of_an_instance_the_lake_lacks_are_refused(pg: PostgresCluster) -> None:
    """An import writes ``elements`` after ``instances``: rows naming an instance the lake does not
    hold (by UID, or with no number from the copy) are refused with the UIDs, and nothing is
    written."""
    from dicomlake.errors import WriteError

    files = _files(2)
    url = pg.create_database()
    tables = _tables(files)
    elements = tables["elements"]
    with PostgresStore(url) as st:
        with pytest.raises(WriteError, match="name instances the lake does not hold"):
            st.write_batch({"elements": elements}, [])
        numbered = elements.append_column("_iid", pa.nulls(elements.num_rows, pa.int64()))
        with pytest.raises(WriteError, match="name instances the lake does not hold"):
            st.write_batch({"elements": numbered}, [])
        assert _count(st, "SELECT count(*) FROM element_index") == 0
        st.write_batch({"instances": tables["instances"]}, [])
        st.write_batch({"elements": elements}, [])  # now by the lake's numbers
        _check_against_pydicom(st, files)


def test_a_broad_element_filter_reads_instances_once_not_once_per_match(pg: PostgresCluster, tmp_path: Path) -> None:
    """At 20,000 instances where a filter matches 8,000, PostgreSQL's EXPLAIN ANALYZE (not our
    code) counts how often the plan read ``instances``: once per process (a hash join on the
    matches' 64-instance words), where ``i._iid IN (SELECT iid FROM element_index …)`` probed
    ``instances_iid`` once per match (its planner cannot estimate an unnest's rows). The filter
    unnests only the arrays its condition reads. Counts equal the DuckDB lake's of the same rows."""
    import psycopg

    from bench.bench_query import FILTERS, build_rows
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.lakesql import to_postgres
    from dicomlake.store.transfer import copy_lake

    src = tmp_path / "synthetic"
    with DuckDBStore(src) as duck:
        build_rows(duck.con, 0, 20_000)
        duck.con.execute("CHECKPOINT")
    url = pg.create_database()
    with DuckDBStore(src, read_only=True) as duck, PostgresStore(url) as dest:
        copy_lake(duck, dest)
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("ANALYZE")
    element_filters = [where for label, where in FILTERS if "typed" not in label or "non-typed" in label]
    assert len(element_filters) == 4
    element_filters += [  # numeric = and != (both value arrays), and a combined filter that matches here
        ["DistanceSourceToEntrance = 93"],
        ["DistanceSourceToEntrance != 93"],
        ["Modality = MG", "DistanceSourceToEntrance > 500", "CTDIPhantomTypeCodeSequence.CodeMeaning = *Head*"],
    ]
    with DuckDBStore(src, read_only=True) as duck, PostgresStore(url, read_only=True) as st:
        lk, dlk = Lake(st), Lake(duck)
        for where in element_filters:
            n = lk.count_matching(where)
            assert n == dlk.count_matching(where), where
            assert n >= 5 or "2024" in str(where), (where, n)  # (no 2024 study among 20,000)
            cond, params, _ = where_clause(where, lk.columns, lk.element_join)
            pg_sql, pg_params = to_postgres(f"SELECT count(*) FROM instances i WHERE {cond}", params, st._sql_names)
            plan = st.connection.execute("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) " + pg_sql, pg_params).fetchone()
            nodes = list(_plan_nodes(plan[0][0]["Plan"]))
            reads = sum(int(x["Actual Loops"]) for x in nodes if x.get("Relation Name") == "instances")
            assert 1 <= reads <= 3, (where, n, reads)  # leader and at most two parallel workers
            calls = [str(x["Function Call"]) for x in nodes if "unnest(" in str(x.get("Function Call", ""))]
            assert calls, where
            both = any(w.startswith("DistanceSourceToEntrance") and "= 93" in w for w in where)
            for call in calls:
                assert "paths" not in call and "lengths" not in call, call
                if not both:  # a range or a wildcard reads one value array
                    assert ("value_nums" in call) != ("value_texts" in call), call
                else:
                    assert "value_nums" in call and "value_texts" in call, call
    # an attribute with fewer values than words of 64 instances (one real header among the 20,000
    # synthetic ones): IN, probing instances per match, reads a few rows of instances, not 20,001
    real = _files(1)[0]
    ds = pydicom.dcmread(real, stop_before_pixels=True)
    with PostgresStore(url) as st:
        ingest_paths([real], url, workers=1, store=st)
    with PostgresStore(url, read_only=True) as st:
        lk = Lake(st)
        where = [f"CurrentPatientLocation = {ds.CurrentPatientLocation}"]
        assert pg_elements.is_sparse(st.connection, "CurrentPatientLocation", None)
        assert not pg_elements.is_sparse(st.connection, "DistanceSourceToEntrance", None)
        assert lk.query_arrow(where, ["SOPInstanceUID"]).column(0).to_pylist() == [str(ds.SOPInstanceUID)]
        cond, params, _ = where_clause(where, lk.columns, lk.element_join)
        pg_sql, pg_params = to_postgres(f"SELECT count(*) FROM instances i WHERE {cond}", params, st._sql_names)
        plan = st.connection.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + pg_sql, pg_params).fetchone()
        nodes = list(_plan_nodes(plan[0][0]["Plan"]))
        rows = sum(
            int(x["Actual Rows"]) * int(x["Actual Loops"]) for x in nodes if x.get("Relation Name") == "instances"
        )
        assert rows <= 5, rows
