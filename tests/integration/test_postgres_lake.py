"""PostgreSQL lakes: migrations in place, a lossless round trip through every back end, and
several processes (listener, workers, web) writing and reading one lake at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dicomlake.lakeschema import INTERNAL_COLUMNS, TABLES
from dicomlake.query.lake import Lake
from tests.integration.pg import PostgresCluster, running_cluster
from tests.test_store_backends import sorted_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    yield from running_cluster()


def pq_columns(parquet_lake: Path, table: str) -> set[str]:
    """The columns of a Parquet lake's table, as pyarrow reads its files."""
    import pyarrow.parquet as pq

    return {name for part in (parquet_lake / table).rglob("*.parquet") for name in pq.read_schema(part).names}


def _cli(*args: str) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output)


def test_postgres_round_trip_duckdb_parquet_postgres_duckdb_is_lossless(
    pg: PostgresCluster, sample_lake: Path, tmp_path: Path
) -> None:
    parquet = tmp_path / "parquet"
    url = pg.create_database("roundtrip")
    back = tmp_path / "back"
    _cli("export", "--lake", str(sample_lake), "--format", "lake", "--out", str(parquet))
    _cli("import", str(parquet), "--lake", url)
    _cli("import", url, "--lake", str(back))
    for table in TABLES:
        with Lake.open(sample_lake, read_only=True) as a, Lake.open(back, read_only=True) as b:
            want = a.store.query(f'SELECT * FROM "{table}"')
            got = b.store.query(f'SELECT * FROM "{table}"')
        assert INTERNAL_COLUMNS.isdisjoint(pq_columns(parquet, table)), table  # no engine's own columns
        # each DuckDB lake numbers its instances itself (instances._iid): not data, not compared
        want, got = (t.drop_columns([c for c in t.column_names if c in INTERNAL_COLUMNS]) for t in (want, got))
        assert got.schema == want.schema, table
        # every column, the ingest timestamps included
        assert sorted_table(got, set()).equals(sorted_table(want, set())), table
        print(f"round trip {table}: {want.num_rows} rows identical")
    # importing again is an upsert: nothing doubles
    _cli("import", str(parquet), "--lake", url)
    with Lake.open(url, read_only=True) as lk, Lake.open(sample_lake, read_only=True) as a:
        for table in TABLES:
            assert lk.count(table) == a.count(table), table


def test_postgres_migrations_upgrade_an_existing_lake_in_place(pg: PostgresCluster, sample_sources: list[Path]) -> None:
    import psycopg

    from dicomlake.errors import ConfigError
    from dicomlake.lakeschema import instance_columns
    from dicomlake.store.migrations import SCHEMA_VERSION, current_version, migrate
    from dicomlake.store.postgres import PostgresStore
    from tests.test_store_backends import _batch

    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as con:  # a lake as version 1 wrote it
        assert migrate(con, instance_columns(), target=1) == [1]
        con.execute('ALTER TABLE instances DROP COLUMN "DetectorID"')  # a column added since
    with pytest.raises(ConfigError, match="schema version 1"):
        PostgresStore(url, read_only=True)
    old = PostgresStore.__new__(PostgresStore)  # rows as a v1 writer left them (no keys yet: plain COPY)
    tables = dict(_batch(sample_sources)[0])
    tables["instances"] = tables["instances"].drop_columns(["DetectorID"])
    with psycopg.connect(url, autocommit=True) as con, con.transaction(), con.cursor() as cur:
        for name, tab in tables.items():
            if tab.num_rows:
                old._copy_in(cur, name, tab)
        # v1 could hold a file's reject twice (no lock-free key yet); migration 5 keeps the later
        cur.execute("INSERT INTO rejects (source_path, reason) VALUES ('x.dcm', 'old'), ('x.dcm', 'new')")
    st = PostgresStore(url)
    assert st.applied == list(range(2, SCHEMA_VERSION + 1))
    assert current_version(st.connection) == SCHEMA_VERSION
    n = tables["instances"].num_rows
    assert st.query("SELECT count(*) AS n FROM instances").column("n")[0].as_py() == n
    assert "DetectorID" in st.query("SELECT * FROM instances LIMIT 0").column_names
    assert st.connection.execute("SELECT reason FROM rejects WHERE source_path = 'x.dcm'").fetchall() == [("new",)]
    # the upgraded lake takes upserts (primary key) and DuckDB-named functions
    assert st.write_batch(_batch(sample_sources)[0], []).replaced == n
    assert st.query("SELECT first(PatientID ORDER BY PatientID) AS p, median(Rows) AS m FROM instances").num_rows == 1
    st.close()
    assert PostgresStore(url).applied == []  # nothing left to do


def _open_store(url: str) -> int:
    from dicomlake.store.postgres import PostgresStore

    with PostgresStore(url) as st:
        return len(st.applied)


def test_postgres_processes_opening_a_new_lake_at_once_migrate_it_once(pg: PostgresCluster) -> None:
    url = pg.create_database()
    with mp.get_context("spawn").Pool(4) as pool:
        applied = pool.map(_open_store, [url] * 4)
    from dicomlake.store.migrations import MIGRATIONS

    assert sum(applied) == len(MIGRATIONS)
    import psycopg

    with psycopg.connect(url) as con:
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)


# ---- listener + 2 workers + web, separate processes, one PostgreSQL lake ----------------
# The real listener (dicomlake serve) and web app run their own loops; here each role is a
# process that does what that role does to the lake: the listener commits small batches as
# instances arrive, two workers ingest folders in big batches (with an overlap, so both
# upsert the same instances at the same time), the web process reads all along.


def _role_ingest(url: str, files: list[str], batch: int, source: str, quarantine: str, rounds: int) -> int:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.postgres import PostgresStore

    n = 0
    with PostgresStore(url) as st:
        for _ in range(rounds):
            rep = ingest_paths(files, quarantine, workers=1, batch_size=batch, source=source, store=st)
            n += rep.instances
    return n


def _role_web(url: str, done: Any, out: Any) -> None:
    from dicomlake.query.lake import Lake

    counts: list[int] = []
    dups = 0
    queries = 0
    with Lake.open(url, read_only=True) as lk:
        while True:
            last = done.is_set()
            counts.append(lk.count())
            dups += (
                lk.store.query(
                    "SELECT count(*) AS n FROM (SELECT SOPInstanceUID FROM instances GROUP BY 1 HAVING count(*) > 1) d"
                )
                .column("n")[0]
                .as_py()
            )
            lk.query_arrow(["Modality = MG,CT"], level="study", limit=50)
            t = lk.store.query("SELECT SOPInstanceUID FROM instances LIMIT 1")
            if t.num_rows:
                assert lk.instance_json(t.column(0)[0].as_py()) is not None
            queries += 4
            if last:
                break
            time.sleep(0.05)
    out.put({"counts": counts, "dups": dups, "queries": queries})


@pytest.mark.slow
def test_postgres_listener_workers_and_web_in_separate_processes_lose_and_duplicate_nothing(
    pg: PostgresCluster, tmp_path: Path
) -> None:
    corpus = pytest.importorskip("bench.corpus")
    n_total = int(os.environ.get("DICOMLAKE_TEST_PG_N", "600"))
    root = corpus.generate(tmp_path / "corpus", n_total, seed=11)
    files = sorted(str(p) for p in Path(root).rglob("*.dcm"))
    assert len(files) == n_total
    third = n_total // 3
    listener_files = files[:third]
    worker_a = files[third : 2 * third + third // 2]  # overlaps worker_b by a third of a third
    worker_b = files[2 * third - third // 2 :]
    url = pg.create_database("busy")
    _open_store(url)  # the service creates the lake before it starts its roles
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    done = ctx.Event()
    quarantine = str(tmp_path / "quarantine")
    web = ctx.Process(target=_role_web, args=(url, done, q))
    web.start()
    with ctx.Pool(3) as pool:
        jobs = [
            pool.apply_async(_role_ingest, (url, listener_files, 10, "c-store", quarantine, 1)),
            pool.apply_async(_role_ingest, (url, worker_a, 200, "file", quarantine, 2)),
            pool.apply_async(_role_ingest, (url, worker_b, 200, "file", quarantine, 2)),
        ]
        read = [j.get(timeout=900) for j in jobs]
    done.set()
    web_seen = q.get(timeout=120)
    web.join(timeout=60)
    assert web.exitcode == 0
    with Lake.open(url, read_only=True) as lk:
        n = lk.count()
        uids = lk.store.query("SELECT count(DISTINCT SOPInstanceUID) AS n FROM instances").column("n")[0].as_py()
        per = lk.store.query(
            "SELECT i.SOPInstanceUID, i.element_count, count(e.path) AS n FROM instances i "
            "LEFT JOIN elements e USING (SOPInstanceUID) GROUP BY 1, 2"
        )
        js = lk.count("dicom_json")
        by_source = {
            r["source"]: r["n"]
            for r in lk.store.query("SELECT source, count(*) AS n FROM instances GROUP BY 1").to_pylist()
        }
    assert read == [len(listener_files), 2 * len(worker_a), 2 * len(worker_b)]
    assert n == uids == js == n_total  # nothing lost, nothing twice
    assert per.num_rows == n_total
    # every instance has its elements exactly once (no half-replaced or doubled instance)
    assert pa.compute.all(pa.compute.equal(per.column("element_count"), per.column("n"))).as_py()
    # the web process never saw a duplicate, and saw the lake only grow
    assert web_seen["dups"] == 0
    assert web_seen["counts"] == sorted(web_seen["counts"]) and web_seen["counts"][-1] == n_total
    print(
        f"concurrency: {n_total} files; listener read {read[0]}, workers {read[1]} + {read[2]} "
        f"(two rounds each, overlapping); lake {n} instances, {uids} distinct, 0 duplicates; "
        f"by source {by_source}; web ran {web_seen['queries']} queries during the load"
    )


def test_postgres_pull_state_through_the_store(pg: PostgresCluster) -> None:
    """Pull state on PostgreSQL (migration 4), read back with psycopg; the same checks as on DuckDB."""
    import psycopg

    from dicomlake.store.migrations import current_version
    from dicomlake.store.postgres import PostgresStore
    from tests.test_pull_state import exercise_pull_state

    url = pg.create_database()
    with PostgresStore(url) as store, psycopg.connect(url, autocommit=True) as con:
        assert current_version(con) >= 4
        exercise_pull_state(store, lambda sql: con.execute(sql).fetchall())  # type: ignore[arg-type]


# ---- writers without a lake-wide lock (row locks; migration 5) ---------------------------


def _overlap_writer(url: str, w: int, shared: list[str], own: list[str]) -> int:
    import random

    from bench.bench_pg_writers import synthetic_batch
    from dicomlake.store.postgres import PostgresStore

    rng = random.Random(w)
    n = 0
    with PostgresStore(url) as st:
        for r in range(2):
            uids = shared + own
            rng.shuffle(uids)  # every writer in its own order: the store sorts each batch
            for i in range(0, len(uids), 20):
                st.write_batch(synthetic_batch(uids[i : i + 20], f"w{w}r{r}", 140 + w), [])
                n += len(uids[i : i + 20])
    return n


def test_postgres_four_writers_of_overlapping_batches_leave_each_instance_once_from_one_write(
    pg: PostgresCluster,
) -> None:
    import psycopg

    pytest.importorskip("bench.bench_pg_writers")
    url = pg.create_database()
    _open_store(url)
    shared = [f"1.2.826.0.1.3680043.8.498.99.1.{i}" for i in range(40)]
    own = [[f"1.2.826.0.1.3680043.8.498.99.{w + 2}.{i}" for i in range(30)] for w in range(4)]
    with mp.get_context("spawn").Pool(4) as pool:
        written = pool.starmap(_overlap_writer, [(url, w, shared, own[w]) for w in range(4)])
    assert written == [2 * (40 + 30)] * 4
    with psycopg.connect(url) as con:
        n, distinct = con.execute('SELECT count(*), count(DISTINCT "SOPInstanceUID") FROM instances').fetchall()[0]
        assert n == distinct == 40 + 4 * 30
        # per instance: its element rows all from one write, the same write as its row and JSON
        bad = con.execute(
            """SELECT i."SOPInstanceUID" FROM instances i
               LEFT JOIN (SELECT "SOPInstanceUID" u, count(*) c, min(value_text) lo, max(value_text) hi
                          FROM elements GROUP BY 1) e ON e.u = i."SOPInstanceUID"
               LEFT JOIN (SELECT "SOPInstanceUID" u, count(*) c, min(json) j FROM dicom_json GROUP BY 1) d
                 ON d.u = i."SOPInstanceUID"
               WHERE e.c IS DISTINCT FROM i.element_count OR e.lo IS DISTINCT FROM i."StudyDescription"
                  OR e.hi IS DISTINCT FROM i."StudyDescription" OR d.c IS DISTINCT FROM 1
                  OR position(i."StudyDescription" IN d.j) = 0"""
        ).fetchall()
        assert bad == []
        assert con.execute("SELECT count(*) FROM elements").fetchone() == (
            con.execute("SELECT sum(element_count) FROM instances").fetchall()[0][0],
        )
        writers = con.execute(
            'SELECT count(DISTINCT "StudyDescription") FROM instances WHERE "SOPInstanceUID" LIKE %s',
            ["1.2.826.0.1.3680043.8.498.99.1.%"],
        ).fetchall()[0]
        print(f"4 writers, overlapping: {n} instances once each; shared ones last written by {writers[0]} writes")
