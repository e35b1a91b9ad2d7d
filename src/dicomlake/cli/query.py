"""`dicomlake query`, `sql` and `export`: the lake read on any attribute."""

from __future__ import annotations

from pathlib import Path

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path
from dicomlake.cli.output import FORMAT_OPTION, OUT_OPTION, Format, write_table


def query(
    where: list[str] = typer.Option([], "--where", "-w", help="KEY OP VALUE, repeatable (AND)."),
    select: str | None = typer.Option(None, "--select", "-s", help="Comma-separated keywords, paths or tags."),
    level: str = typer.Option("instance", "--level", help="instance, series, study or patient."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="At most this many rows."),
    order_by: str | None = typer.Option(None, "--order-by", help="A typed column; prefix '-' for descending."),
    lake: Path | None = LAKE_OPTION,
    fmt: Format = FORMAT_OPTION,
    out: Path | None = OUT_OPTION,
    show_sql: bool = typer.Option(False, "--show-sql", help="Print the SQL instead of running it."),
) -> None:
    """Filter on any attribute (keyword, tag, nested path, private by creator).

    Examples:

      dicomlake query --where 'Modality = MG' --where 'CompressionForce > 120' --select PatientID,StudyDate,CompressionForce

      dicomlake query --where 'StudyDate = 20240101-20241231' --level study --format csv --out studies.csv

      dicomlake query --where 'CTDIPhantomTypeCodeSequence.CodeMeaning = *Body*'

      dicomlake query --where '(0019,"GEMS_ACQU_01",10) > 0'
    """
    from dicomlake.query.filters import split_keys
    from dicomlake.query.lake import Lake, cut_note

    sel = split_keys(select) if select else None
    with Lake.open(lake_path(lake), read_only=True) as lk:
        sql, params, parsed = lk.build_query(where, sel, level, limit, order_by, extra_row=True, with_total=True)
        if show_sql:
            typer.echo(sql)
            typer.echo(f"-- params: {params}")
            return
        table = lk.query_arrow(where, sel, level, limit, order_by)
    note = cut_note(table, f"{level} rows")
    if note is not None:  # a limit cut the result: say so, whatever the format
        typer.secho(note + (" (raise --limit to see more)" if limit else " (the query.max_rows cap)"), err=True)
    elif fmt == Format.table and parsed:
        typer.secho(
            f"{table.num_rows:,} {level} rows where " + " and ".join(f.sentence() for f in parsed), err=True, dim=True
        )
    write_table(table, fmt, out)


def sql(
    statement: str = typer.Argument(..., help="One read-only SQL statement over the lake's tables."),
    lake: Path | None = LAKE_OPTION,
    fmt: Format = FORMAT_OPTION,
    out: Path | None = OUT_OPTION,
) -> None:
    """Run read-only SQL (DuckDB dialect) over instances, elements, dicom_json, dose_events, rejects.

    One query only, in a sandbox: no statement that changes the lake, no file or network access,
    at most query.max_rows rows (it says when it cut) and query.time_limit_s seconds.

    Example: dicomlake sql "SELECT Modality, count(*) FROM instances GROUP BY ALL"
    """
    from dicomlake.query.lake import Lake
    from dicomlake.store.sandbox import truncated

    with Lake.open(lake_path(lake), read_only=True) as lk:
        table = lk.sql_arrow(statement)
    cut = truncated(table)
    if cut is not None:
        typer.secho(
            f"showing the first {cut:,} rows; the result has more (cut at query.max_rows = {cut:,}: add a LIMIT "
            "or a WHERE clause, or raise DICOMLAKE_QUERY__MAX_ROWS)",
            err=True,
        )
    write_table(table, fmt, out)


def export(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write one file per table into."),
    fmt: str = typer.Option(
        "parquet",
        "--format",
        "-f",
        help="parquet or csv (one file per table), or lake (a partitioned Parquet lake, see `dicomlake import`).",
    ),
    lake: Path | None = LAKE_OPTION,
) -> None:
    """Export the whole lake, every table with the lake's column names.

    Example: dicomlake export --format parquet --out ./lake-tables

    Example: dicomlake export --format lake --out ./lake-parquet   (query it with --lake ./lake-parquet)
    """
    from dicomlake.query.lake import Lake

    with Lake.open(lake_path(lake), read_only=True) as lk:
        files = lk.export(out, fmt)
    for f in files:
        typer.echo(str(f))


def register(app: typer.Typer) -> None:
    app.command("query")(handle_errors(query))
    app.command("sql")(handle_errors(sql))
    app.command("export")(handle_errors(export))
