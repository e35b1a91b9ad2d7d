"""Defects of the lake's commands on PostgreSQL and Parquet lakes, and the lake's file modes.

Each test failed before its fix: export from PostgreSQL raised AttributeError; ingest into a
Parquet lake created a lake.duckdb inside it; serve --lake postgresql://… failed with a DuckDB
error and left a './postgresql:' folder; doctor called the URL a folder to be created; rejects of a
PostgreSQL ingest were said to be kept in 'postgresql://…/quarantine'; the lake was 0755/0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.query.lake import Lake

TABLES = ("instances", "elements", "dicom_json", "dose_events", "rejects")


@pytest.fixture(scope="module")
def files() -> list[Path]:
    from dicomlake.samples import repo_corpus

    corpus = repo_corpus()
    assert corpus is not None
    return sorted((corpus / "openrem").glob("*.dcm"))[:6]


@pytest.fixture(scope="module")
def pg(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.postgres import PostgresStore
    from tests.integration.pg import start_or_skip

    cluster = start_or_skip()
    try:
        url = cluster.create_database("fixes")
        with PostgresStore(url) as st:
            ingest_paths(files, tmp_path_factory.mktemp("pgq"), workers=1, store=st)
        yield cluster, url
    finally:
        cluster.stop()


def pg_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as con:
        out = {}
        for t in TABLES:
            row = con.execute(f'SELECT count(*) FROM "{t}"').fetchone()
            out[t] = int(row[0]) if row else 0
        return out


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_from_a_postgres_lake_writes_every_table(pg: tuple[Any, str], tmp_path: Path, fmt: str) -> None:
    _, url = pg
    want = pg_counts(url)
    assert want["instances"] > 0
    with Lake.open(url, read_only=True) as lk:
        written = lk.export(tmp_path / "out", fmt)
    got = {}
    for f in written:
        table = pq.read_table(f) if fmt == "parquet" else pacsv.read_csv(f)
        got[f.stem] = table.num_rows
    assert got == want
    r = cli("export", "--lake", url, "--format", fmt, "--out", str(tmp_path / "cli"))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(f"{t}.{fmt}" for t in TABLES)


def test_ingest_into_a_parquet_lake_is_refused(files: list[Path], tmp_path: Path) -> None:
    from dicomlake.ingest.pipeline import ingest_paths

    ingest_paths(files[:2], tmp_path / "duck", workers=1)
    with Lake.open(tmp_path / "duck", read_only=True) as lk:
        lk.export(tmp_path / "pq", "lake")
    before = sorted(str(p.relative_to(tmp_path / "pq")) for p in (tmp_path / "pq").rglob("*"))
    r = cli("ingest", str(files[3]), "--lake", str(tmp_path / "pq"), "-q")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Parquet lake" in lines[0] and "export --format lake" in lines[0]
    assert not (tmp_path / "pq" / "lake.duckdb").exists()
    assert sorted(str(p.relative_to(tmp_path / "pq")) for p in (tmp_path / "pq").rglob("*")) == before


def test_serve_on_a_postgres_url_it_cannot_use_says_so_and_leaves_no_folder(
    pg: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve on PostgreSQL runs (tests/integration/test_serve_postgres.py); a database it cannot
    # reach is said in one line, before any state folder or './postgresql:' folder is made
    cluster, _ = pg
    monkeypatch.chdir(tmp_path)
    r = cli("serve", "--lake", f"postgresql://postgres@127.0.0.1:{cluster.port}/nosuchdb", "--port", "0", "--no-web")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0] and "nosuchdb" in lines[0], r.output
    assert "extension" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_doctor_checks_a_postgres_url_as_a_database(
    pg: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, url = pg
    monkeypatch.chdir(tmp_path)
    r = cli("doctor", "--lake", url, "--no-ports")
    assert "PostgreSQL postgresql://postgres@127.0.0.1" in r.output and "holds a lake" in r.output, r.output
    assert "will be created" not in r.output
    assert list(tmp_path.iterdir()) == []
    bad = cli("doctor", "--lake", f"postgresql://postgres@127.0.0.1:{cluster.port}/nosuchdb", "--no-ports")
    assert "cannot connect" in bad.output and bad.exit_code == 1


def test_rejects_of_a_postgres_ingest_are_said_to_be_in_the_quarantine_folder(
    pg: tuple[Any, str], tmp_path: Path
) -> None:
    _, url = pg
    broken = tmp_path / "in" / "broken.dcm"
    broken.parent.mkdir()
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00" + b"1.2" * 5)
    q = tmp_path / "q"
    r = cli("ingest", str(broken.parent), "--lake", url, "--quarantine", str(q), "-q")
    assert r.exit_code == 1, r.output
    assert f"kept in {q / 'quarantine'}" in r.output, r.output
    assert "postgresql://" not in r.output.split("kept in", 1)[1].split(".", 1)[0]
    kept = [p for p in (q / "quarantine").rglob("*") if p.is_file()]
    assert len(kept) == 1 and kept[0].read_bytes() == broken.read_bytes()


# ---- owner-only files --------------------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_new_lake_is_owner_only_and_doctor_warns_when_it_is_not(files: list[Path], tmp_path: Path) -> None:
    from dicomlake.ingest.pipeline import ingest_paths

    old = os.umask(0o022)
    try:
        broken = tmp_path / "broken.dcm"
        broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00")
        lake = tmp_path / "lake"
        ingest_paths([*files[:2], broken], lake, workers=1)
    finally:
        os.umask(old)
    assert _mode(lake) == 0o700
    assert _mode(lake / "lake.duckdb") == 0o600
    if (lake / "lake.duckdb.wal").exists():
        assert _mode(lake / "lake.duckdb.wal") == 0o600
    assert _mode(lake / "quarantine") == 0o700
    for p in (lake / "quarantine").rglob("*"):
        assert _mode(p) == (0o700 if p.is_dir() else 0o600), p
    r = cli("doctor", "--lake", str(lake), "--no-ports")
    assert "owner only" in r.output, r.output
    os.chmod(lake, 0o755)
    os.chmod(lake / "lake.duckdb", 0o644)
    r = cli("doctor", "--lake", str(lake), "--no-ports")
    assert "open to other users" in r.output and "lake.duckdb 0644" in r.output, r.output


def test_the_spool_is_owner_only(tmp_path: Path) -> None:
    from dicomlake.ingest.spool import Spool

    old = os.umask(0o022)
    try:
        Spool(tmp_path / "lake")
    finally:
        os.umask(old)
    for d in [tmp_path / "lake" / "spool", *(p for p in (tmp_path / "lake" / "spool").iterdir() if p.is_dir())]:
        assert _mode(d) == 0o700, d


# ---- the upsert finds existing instances through instance_keys ----------------------------------


def test_upsert_through_instance_keys_replaces_and_never_duplicates(files: list[Path], tmp_path: Path) -> None:
    import duckdb
    import pydicom

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.duckdb import DuckDBStore

    lake = tmp_path / "lake"
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    first = ingest_paths(files[:4], lake, workers=1)
    again = ingest_paths(files, lake, workers=1)  # 4 replaced, the rest new
    assert (first.inserted, first.replaced) == (4, 0)
    assert (again.inserted, again.replaced) == (len(files) - 4, 4)

    def counts() -> tuple[int, int, int]:
        con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
        try:
            row = con.execute(
                "SELECT (SELECT count(*) FROM instances), (SELECT count(DISTINCT SOPInstanceUID) FROM instances), "
                "(SELECT count(*) FROM instance_keys)"
            ).fetchall()[0]
            return int(row[0]), int(row[1]), int(row[2])
        finally:
            con.close()

    assert counts() == (len(uids), len(uids), len(uids))
    # a lake written before instance_keys existed: the table is rebuilt when the lake is opened
    con = duckdb.connect(str(lake / "lake.duckdb"))
    con.execute("DROP TABLE instance_keys")
    con.close()
    with DuckDBStore(lake):
        pass
    assert counts() == (len(uids), len(uids), len(uids))
    rep = ingest_paths(files, lake, workers=1)
    assert (rep.inserted, rep.replaced) == (0, len(files))
    assert counts() == (len(uids), len(uids), len(uids))
