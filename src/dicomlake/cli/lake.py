"""`dicomlake import`: copy a whole lake between DuckDB, PostgreSQL and the Parquet lake format."""

from __future__ import annotations

from pathlib import Path

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path


def import_lake(
    source: str = typer.Argument(
        ..., help="The lake to read: a DuckDB lake folder, a Parquet lake folder or a postgresql:// URL."
    ),
    lake: Path | None = LAKE_OPTION,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write a Parquet lake into this new folder instead of into --lake."
    ),
) -> None:
    """Copy every table of a lake into this lake (upsert on SOP Instance UID) or into a Parquet lake.

    Nothing is lost on the way: column names and types are the lake's own (Arrow), so
    DuckDB → Parquet → PostgreSQL → DuckDB gives back the same rows.

    Examples:

      dicomlake import ./lake-parquet --lake postgresql://dicomlake@db.example.org/lake

      dicomlake import postgresql://dicomlake@db.example.org/lake --lake ./dicomlake-data

      dicomlake import ./dicomlake-data --out ./lake-parquet
    """
    from rich.console import Console
    from rich.table import Table

    from dicomlake.store.open import open_store
    from dicomlake.store.parquet import ParquetLakeWriter
    from dicomlake.store.postgres import redact
    from dicomlake.store.transfer import copy_lake

    src = open_store(source, read_only=True)
    try:
        if out is not None:
            dest_name = str(out)
            rep = copy_lake(src, ParquetLakeWriter(out))
        else:
            target = lake_path(lake)
            dest = open_store(target)
            dest_name = redact(str(getattr(dest, "url", target)))
            if str(getattr(dest, "lake", "")) == str(getattr(src, "lake", None)):
                dest.close()
                raise ValueError(f"import {source}: source and destination are the same lake")
            try:
                rep = copy_lake(src, dest)
            finally:
                dest.close()
    finally:
        src.close()
    t = Table(title=f"import {redact(source)} → {dest_name}")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in rep.rows.items():
        t.add_row(name, f"{n:,}")
    Console(stderr=True).print(t)


def compact_lake(
    lake: str = typer.Argument(
        ...,
        help="A Parquet lake (a folder or a URI: s3://bucket/lake), a DuckDB lake folder or a PostgreSQL lake "
        "(postgresql://…).",
    ),
    master: str | None = typer.Option(
        None, "--master", help="Run on Spark (local[N], spark://HOST:7077): one task per partition."
    ),
) -> None:
    """Rewrite each partition of a Parquet lake as few files of about 256 MB (a smaller partition: one file).

    Spark tasks write one small file per partition they touch; compaction after an ingest (or
    once a month is closed) leaves one to a few files per partition. Rows are unchanged.

    On a PostgreSQL lake (postgresql://…) it leaves one element run per attribute and group of
    instances, without the rows of replaced instances, rewriting only the groups that need it,
    in one transaction (writers wait for it, readers do not).

    On a DuckDB lake it sorts the element store into one run, drops the rows of replaced
    instances (docs/explanation/lake.md, "The element store") and rewrites the file without
    the free blocks DuckDB keeps; the writer merges in steps by itself, so this is only for a
    lake that must be as small as it can be (it needs the lake to itself, and room for a copy).

    Example: dicomlake compact /lake/parquet --master spark://head:7077
    """
    from rich.console import Console
    from rich.table import Table

    from dicomlake.store.duckdb import DB_NAME, DuckDBStore, rewrite_file
    from dicomlake.store.postgres import is_postgres_url

    if is_postgres_url(lake):
        if master:
            raise typer.BadParameter("--master is for Parquet lakes; a PostgreSQL lake is compacted by its server")
        from dicomlake.store.postgres import PostgresStore

        with PostgresStore(lake) as pst:
            before = pst.element_bytes()
            done = pst.compact_elements()
            after = pst.element_bytes()
        t = Table(title=f"compacted {pst.lake_name}", show_header=False)
        t.add_row("element runs rewritten", f"{done['runs_before']:,} → {done['runs_after']:,}")
        t.add_row("element rows in them", f"{done['rows_kept']:,}")
        t.add_row("rows of replaced instances dropped", f"{done['rows_dropped']:,}")
        t.add_row("element store bytes before", f"{before:,}")
        t.add_row("element store bytes after", f"{after:,}")
        Console(stderr=True).print(t)
        return

    db = Path(lake) / DB_NAME
    if "://" not in lake and db.is_file():
        if master:
            raise typer.BadParameter("--master is for Parquet lakes; a DuckDB lake is compacted in place")
        before = db.stat().st_size
        with DuckDBStore(lake) as st:
            rows = st.compact_elements()
            st.query("CHECKPOINT")
        rewrite_file(Path(lake))  # DuckDB keeps freed blocks in the file: a copy drops them
        t = Table(title=f"compacted {lake}", show_header=False)
        t.add_row("element rows kept", f"{rows:,}")
        t.add_row("bytes before", f"{before:,}")
        t.add_row("bytes after", f"{db.stat().st_size:,}")
        Console(stderr=True).print(t)
        return

    from dicomlake.store.parquet import compact

    spark = None
    if master:
        from dicomlake.ingest.spark import spark_session

        spark = spark_session(master, app_name="dicomlake-compact")
    try:
        totals = compact(lake, spark=spark)
    finally:
        if spark is not None:
            spark.stop()
    t = Table(title=f"compacted {lake}", show_header=False)
    for k in ("partitions", "rows", "files_before", "files_after", "bytes_before", "bytes_after"):
        t.add_row("rows rewritten" if k == "rows" else k.replace("_", " "), f"{totals.get(k, 0):,}")
    Console(stderr=True).print(t)


def register(app: typer.Typer) -> None:
    app.command("import")(handle_errors(import_lake))
    app.command("compact")(handle_errors(compact_lake))
