"""User SQL runs in one sandbox on every path: `dicomlake sql`, Lake.sql, the running service's
internal endpoint and the web app's copy of it, on DuckDB and on a real PostgreSQL server.

Each payload is refused with a one-line error (exit 2 from the CLI), the lake is unchanged (row
counts and a checksum read by a separate connection of the engine's own client before and after),
and the content of a planted host file never appears in any output.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.errors import QueryError

MARKER = "dicomlake-secret-marker-7f3a91"
TABLES = ("instances", "elements", "dicom_json", "dose_events", "rejects")


def payloads(secret: Path, scratch: Path) -> list[str]:
    return [
        "WITH x AS (SELECT 1) DELETE FROM instances WHERE Modality = 'MG'",
        "WITH x AS (SELECT 1) UPDATE instances SET Modality = 'XX'",
        "WITH x AS (SELECT 1) INSERT INTO rejects (source_path) VALUES ('planted')",
        "EXPLAIN ANALYZE DELETE FROM instances",
        "DELETE FROM instances",
        "DROP TABLE elements",
        "SELECT 1; DELETE FROM instances",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_blob('{secret}')",
        f"SELECT * FROM '{secret}'",
        f"SELECT content FROM read_text('{secret}') UNION ALL SELECT 'x'",
        f"SELECT (SELECT content FROM read_text('{secret}')) AS c",
        f"COPY instances TO '{scratch / 'out.csv'}'",
        f"ATTACH '{scratch / 'other.duckdb'}' AS other",
        "SET threads = 1",
        "PRAGMA version",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CALL pragma_version()",
        "SELECT getenv('HOME')",
        f"SELECT pg_read_file('{secret}')",
        "SELECT set_config('statement_timeout', '0', false)",
    ]


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("host") / "secret.csv"
    p.write_text(f"token\n{MARKER}\n")
    return p


@pytest.fixture(scope="module")
def few_files() -> list[Path]:
    """A dozen of the repository's sample files: RDSRs and MG/DX/NM images."""
    from dicomlake.samples import repo_corpus

    corpus = repo_corpus()
    assert corpus is not None
    files = sorted((corpus / "openrem").glob("*.dcm"))
    picked = [f for f in files if f.name.startswith(("MG", "DX", "NM"))][:8] + files[:4]
    assert len(picked) >= 8
    return picked


@pytest.fixture(scope="module")
def duck_lake(tmp_path_factory: pytest.TempPathFactory, few_files: list[Path]) -> Path:
    from dicomlake.ingest.pipeline import ingest_paths

    lake = tmp_path_factory.mktemp("sandbox") / "lake"
    ingest_paths(few_files, lake, workers=1)
    return lake


def duck_checksum(lake: Path) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent digest of every table, read by a fresh DuckDB connection."""
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        out = {}
        for t in TABLES:
            n, digest = con.execute(
                f"SELECT count(*), coalesce(md5(string_agg(x::VARCHAR, '|' ORDER BY x::VARCHAR)), '') FROM \"{t}\" x"
            ).fetchone()
            out[t] = (int(n), str(digest))
        return out
    finally:
        con.close()


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def assert_refused(result: Any, marker: str = MARKER) -> None:
    text = result.output  # stdout and stderr together
    assert result.exit_code == 2, text
    assert marker not in text
    assert "Traceback" not in text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text


# ---- the statement check alone ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT Modality, count(*) FROM instances GROUP BY ALL",
        "FROM instances",
        "WITH m AS (SELECT * FROM instances) SELECT count(*) FROM m",
        "SUMMARIZE instances",
        "DESCRIBE instances",
        "SHOW TABLES",
        "EXPLAIN SELECT 1",
        "SELECT * FROM range(3)",
        "SELECT table_name FROM information_schema.tables",
        "(SELECT 1) UNION ALL (SELECT 2);",
    ],
)
def test_sandbox_accepts_read_only_queries(sql: str) -> None:
    from dicomlake.store.sandbox import check_sql

    check_sql(sql)


def test_sandbox_statement_check_refuses_every_payload(secret: Path, tmp_path: Path) -> None:
    from dicomlake.store.sandbox import check_sql

    for sql in payloads(secret, tmp_path):
        with pytest.raises(QueryError, match=r"^refused: ") as info:
            check_sql(sql)
        assert "\n" not in str(info.value)


# ---- DuckDB --------------------------------------------------------------------------------


def test_sandbox_duckdb_engine_refuses_payloads_even_without_the_statement_check(
    duck_lake: Path, secret: Path, tmp_path: Path
) -> None:
    """The second lock: a locked instance in a READ ONLY transaction refuses what the parser would."""
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.sandbox import lock_duckdb, run_duckdb

    lake = tmp_path / "lake"
    shutil.copytree(duck_lake, lake)
    before = duck_checksum(lake)
    with DuckDBStore(lake) as st:  # the writer itself, as in the service
        lock_duckdb(st.con)
        ran = []
        for sql in payloads(secret, tmp_path):
            if sql.startswith("SELECT 1;") or "pg_read_file" in sql or "set_config" in sql:
                continue  # several statements: DuckDB's sql() refuses; PostgreSQL-only functions
            try:
                t = run_duckdb(st.con, sql, checked=True)
            except QueryError as exc:
                assert MARKER not in str(exc)
                continue
            assert MARKER not in str(t.to_pylist())
            ran.append(sql)
        # what ran changed nothing: EXPLAIN-less reads of metadata only
        assert all(s.startswith(("PRAGMA", "CALL")) for s in ran), ran
    assert duck_checksum(lake) == before
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_sandbox_cli_sql_refuses_payloads_on_duckdb(duck_lake: Path, secret: Path, tmp_path: Path) -> None:
    before = duck_checksum(duck_lake)
    for sql in payloads(secret, tmp_path):
        assert_refused(cli("sql", "--lake", str(duck_lake), sql))
    assert duck_checksum(duck_lake) == before
    ok = cli("sql", "--lake", str(duck_lake), "--format", "csv", "SELECT count(*) AS n FROM instances")
    assert ok.exit_code == 0 and ok.output.split()[-1] == str(before["instances"][0])


def test_sandbox_python_lake_sql_on_a_writable_lake(
    duck_lake: Path, few_files: list[Path], secret: Path, tmp_path: Path
) -> None:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.query.lake import Lake

    lake = tmp_path / "lake"
    shutil.copytree(duck_lake, lake)
    before = duck_checksum(lake)
    with Lake.open(lake) as lk:  # opened for writing: the sandbox still holds
        for sql in payloads(secret, tmp_path):
            with pytest.raises(QueryError) as info:
                lk.sql(sql)
            assert MARKER not in str(info.value)
        assert lk.sql("SELECT count(*) AS n FROM instances")["n"][0] == before["instances"][0]
    assert duck_checksum(lake) == before
    with Lake.open(lake) as lk:
        lk.sql("SELECT 1")  # locks this instance: the writer must still write
        rep = ingest_paths(few_files[:2], lake, workers=1, store=lk.store)
        assert rep.replaced == 2 and rep.inserted == 0
        assert not [n for n in rep.notes if "curation" in n], rep.notes  # curation on ingest still runs
        assert lk.sql("SELECT count(*) AS n FROM instances")["n"][0] == before["instances"][0]


def test_sandbox_row_limit_says_it_cut(duck_lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomlake.config import reset_settings_cache
    from dicomlake.query.lake import Lake
    from dicomlake.store.sandbox import truncated

    n = duck_checksum(duck_lake)["instances"][0]
    assert n > 3
    with Lake.open(duck_lake, read_only=True) as lk:
        t = lk.sql_arrow("SELECT SOPInstanceUID FROM instances", max_rows=3)
        assert t.num_rows == 3 and truncated(t) == 3
        whole = lk.sql_arrow("SELECT SOPInstanceUID FROM instances", max_rows=n)
        assert whole.num_rows == n and truncated(whole) is None
    monkeypatch.setenv("DICOMLAKE_QUERY__MAX_ROWS", "2")
    reset_settings_cache()
    try:
        r = cli("sql", "--lake", str(duck_lake), "--format", "csv", "SELECT SOPInstanceUID FROM instances")
    finally:
        monkeypatch.delenv("DICOMLAKE_QUERY__MAX_ROWS")
        reset_settings_cache()
    assert r.exit_code == 0
    assert "showing the first 2 rows" in r.stderr
    assert len([ln for ln in r.stdout.splitlines() if ln.startswith("1.")]) == 2


def test_sandbox_time_limit_stops_a_long_query(duck_lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomlake.config import reset_settings_cache

    monkeypatch.setenv("DICOMLAKE_QUERY__TIME_LIMIT_S", "0.5")
    reset_settings_cache()
    try:
        t0 = time.monotonic()
        r = cli("sql", "--lake", str(duck_lake), "SELECT count(*) FROM range(1000000000000) a, range(1000) b")
        took = time.monotonic() - t0
    finally:
        monkeypatch.delenv("DICOMLAKE_QUERY__TIME_LIMIT_S")
        reset_settings_cache()
    assert r.exit_code == 2 and "query.time_limit_s = 0.5 s" in r.output
    assert took < 20


# ---- the running service and the web app -----------------------------------------------------


@pytest.fixture
def served_lake(duck_lake: Path, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    from tests.integration.netpeers import Served, free_port

    lake = tmp_path / "lake"
    shutil.copytree(duck_lake, lake)
    served = Served(lake, free_port(), lean=True)
    served.start()
    try:
        yield lake, served.port
    finally:
        served.stop()


def test_sandbox_service_internal_endpoint_and_cli_refuse_payloads(
    served_lake: tuple[Path, int], secret: Path, tmp_path: Path
) -> None:
    import json

    from dicomlake.store.remote import live_service
    from tests.integration.netpeers import make_instances, storescu
    from tests.support import require_tool

    served_lake, port = served_lake  # type: ignore[assignment]
    assert isinstance(served_lake, Path)
    info = live_service(served_lake)
    assert info is not None
    with httpx.Client(base_url=info.control_url, headers={"Authorization": f"Bearer {info.token}"}) as c:
        for sql in payloads(secret, tmp_path):
            r = c.post("/internal/query", json={"sql": sql})
            assert r.status_code == 400, (sql, r.text)
            assert MARKER not in r.text
            assert json.loads(r.text)["error"]
        # a query still works, and a cut result says so
        r = c.post("/internal/query", json={"sql": "SELECT SOPInstanceUID FROM instances", "max_rows": 2})
        assert r.status_code == 200 and r.headers["X-Dicomlake-Truncated"] == "2"
    for sql in payloads(secret, tmp_path)[:8]:  # `dicomlake sql` goes through the service
        assert_refused(cli("sql", "--lake", str(served_lake), sql))
    ok = cli("sql", "--lake", str(served_lake), "--format", "csv", "SELECT count(*) AS n FROM instances")
    assert ok.exit_code == 0, ok.output
    n = int(ok.output.split()[-1])
    # a filter on an attribute without a typed column, through the service: its instance numbers
    from dicomlake.query.lake import Lake
    from dicomlake.store import elementstore
    from dicomlake.store.remote import RemoteStore

    with Lake.open(served_lake, read_only=True) as lk:
        assert isinstance(lk.store, RemoteStore) and lk.element_join == elementstore.JOIN
        assert lk.count_matching(["(0002,0012) = *"]) == n  # ImplementationClassUID: every file has one
    # the service's writer still writes after user SQL locked its DuckDB instance
    require_tool("storescu")
    sent, bad, out = storescu(port, [str(p) for p in make_instances(tmp_path / "new", 2)])
    assert len(sent) == 2 and not bad, out[-1500:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = cli("sql", "--lake", str(served_lake), "--format", "csv", "SELECT count(*) AS n FROM instances")
        if int(got.output.split()[-1]) == n + 2:
            break
        time.sleep(0.2)
    n += 2
    pid = info.pid
    import os
    import signal

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while live_service(served_lake) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    after = duck_checksum(served_lake)
    assert after["instances"][0] == n
    assert after["rejects"][0] == 0 or "planted" not in str(after)


def test_sandbox_web_internal_query_refuses_payloads(duck_lake: Path, secret: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dicomlake.web.app import create_app
    from tests import web_support as ws

    lake = tmp_path / "lake"
    shutil.copytree(duck_lake, lake)
    before = duck_checksum(lake)
    ws.make_users(lake)
    webapp = create_app(lake, ws.settings())
    with TestClient(webapp) as c:
        h = ws.bearer(webapp, "ada")
        for sql in payloads(secret, tmp_path):
            r = c.post("/internal/query", json={"sql": sql}, headers=h)
            assert r.status_code == 400, (sql, r.status_code, r.text[:200])
            assert MARKER not in r.text
        r = c.post("/internal/query", json={"sql": "SELECT count(*) AS n FROM instances"}, headers=h)
        assert r.status_code == 200
    assert duck_checksum(lake) == before


# ---- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_lake(few_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.postgres import PostgresStore
    from tests.integration.pg import start_or_skip

    cluster = start_or_skip()
    try:
        url = cluster.create_database("sandbox")
        with PostgresStore(url) as st:
            ingest_paths(few_files, tmp_path_factory.mktemp("pgq"), workers=1, store=st)
        yield cluster, url
    finally:
        cluster.stop()


def pg_checksum(url: str) -> dict[str, tuple[int, str]]:
    import psycopg

    with psycopg.connect(url) as con:
        out = {}
        for t in TABLES:
            row = con.execute(
                f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM \"{t}\" x"
            ).fetchone()
            assert row is not None
            out[t] = (int(row[0]), str(row[1]))
        return out


def test_sandbox_postgres_cli_and_lake_sql_refuse_payloads(
    pg_lake: tuple[Any, str], secret: Path, tmp_path: Path
) -> None:
    from dicomlake.query.lake import Lake

    _, url = pg_lake
    before = pg_checksum(url)
    for sql in payloads(secret, tmp_path):
        assert_refused(cli("sql", "--lake", url, sql))
    with Lake.open(url) as lk:
        for sql in payloads(secret, tmp_path):
            with pytest.raises(QueryError) as info:
                lk.sql(sql)
            assert MARKER not in str(info.value)
        assert lk.sql("SELECT count(*) AS n FROM instances")["n"][0] == before["instances"][0]
        t = lk.sql_arrow('SELECT "SOPInstanceUID" FROM instances', max_rows=2)
        from dicomlake.store.sandbox import truncated

        assert t.num_rows == 2 and truncated(t) == 2
    assert pg_checksum(url) == before


def test_sandbox_postgres_engine_refuses_writes_without_the_statement_check(
    pg_lake: tuple[Any, str], secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dicomlake.store.sandbox as sandbox
    from dicomlake.store.postgres import PostgresStore

    _, url = pg_lake
    before = pg_checksum(url)
    monkeypatch.setattr(sandbox, "check_sql", lambda sql, dialect="duckdb": sql.strip().rstrip(";"))
    with PostgresStore(url) as st:
        for sql in (
            "WITH x AS (SELECT 1) DELETE FROM instances",
            "DELETE FROM instances",
            "DROP TABLE elements",
            "SELECT set_config('transaction_read_only', 'off', true)",
            f"SELECT pg_read_file('{secret}')",  # the test server's user is a superuser: the role stops it
            f"SELECT pg_read_binary_file('{secret}')",
            "SELECT * FROM pg_ls_dir('.')",
        ):
            with pytest.raises(QueryError) as info:
                st.query_readonly(sql)
            assert MARKER not in str(info.value)
    assert pg_checksum(url) == before


def test_sandbox_postgres_time_limit(pg_lake: tuple[Any, str]) -> None:
    from dicomlake.store.postgres import PostgresStore

    _, url = pg_lake
    with PostgresStore(url) as st:
        t0 = time.monotonic()
        with pytest.raises(QueryError, match=r"time_limit_s = 0.5 s"):
            st.query_readonly(
                "SELECT count(*) FROM generate_series(1, 100000000) a, generate_series(1, 100000) b", time_limit_s=0.5
            )
        assert time.monotonic() - t0 < 20
        assert st.query_readonly("SELECT 1 AS one").column("one")[0].as_py() == 1


# ---- Parquet lake --------------------------------------------------------------------------------


def test_sandbox_parquet_lake_reads_its_own_files_and_no_others(duck_lake: Path, secret: Path, tmp_path: Path) -> None:
    from dicomlake.query.lake import Lake
    from dicomlake.store.sandbox import run_duckdb

    with Lake.open(duck_lake, read_only=True) as lk:
        lk.export(tmp_path / "pq", "lake")
    n = duck_checksum(duck_lake)["instances"][0]
    for sql in payloads(secret, tmp_path):
        assert_refused(cli("sql", "--lake", str(tmp_path / "pq"), sql))
    with Lake.open(tmp_path / "pq", read_only=True) as lk:
        assert lk.sql("SELECT count(*) AS n FROM instances")["n"][0] == n  # the views still read the lake
        for sql in (f"SELECT * FROM read_csv('{secret}')", f"SELECT * FROM read_text('{secret}')"):
            with pytest.raises(QueryError, match="Permission") as info:  # the engine, parser bypassed
                run_duckdb(lk.store.con, sql, checked=True)
            assert MARKER not in str(info.value)
