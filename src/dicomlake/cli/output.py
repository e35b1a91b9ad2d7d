"""Output options shared by every command that prints data (STYLE.md §10)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import sys
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import typer
from rich.text import Text

from dicomlake.errors import QueryError
from dicomlake.security.cells import XLSX_OPTIONS, neutralise, neutralise_row


class Format(StrEnum):
    """How a table is written."""

    table = "table"
    """A rich table on the terminal."""
    csv = "csv"
    tsv = "tsv"
    json = "json"
    """A JSON array of objects."""
    nl = "nl"
    """Newline-delimited JSON, one object a line."""
    parquet = "parquet"
    xlsx = "xlsx"


FORMAT_OPTION = typer.Option(Format.table, "--format", "-f", help="table, csv, tsv, json, nl, parquet or xlsx.")
OUT_OPTION = typer.Option(None, "--out", "-o", help="Write to this file instead of standard output.")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _terminal_text(v: object) -> Text:
    """A cell for the terminal: never rich markup (a value like ``[/]`` or ``[link=…]`` is text), never a
    control sequence (ESC and the other C0/C1 controls are shown escaped, as ``\\x1b``)."""
    if v is None:
        return Text("")
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(v)))


def _jsonable(v: object) -> object:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def write_table(table: pa.Table, fmt: Format, out: Path | None) -> None:
    """Write an Arrow table in a format to a file or standard output."""
    if fmt in (Format.parquet, Format.xlsx) and out is None:
        raise QueryError(f"--format {fmt.value} writes a binary file: give --out FILE")
    if fmt == Format.table:
        from rich.console import Console
        from rich.table import Table

        t = Table(show_lines=False)
        for name in table.column_names:
            t.add_column(name, overflow="fold")
        for row in table.to_pylist():
            t.add_row(*[_terminal_text(v) for v in row.values()])
        if out is None:
            console = Console()
            console.print(t)
            console.print(f"{table.num_rows:,} rows", style="dim")
            return
        with open(out, "w", encoding="utf-8") as fh:
            console = Console(file=fh, width=250)
            console.print(t)
            console.print(f"{table.num_rows:,} rows", style="dim")
        return
    if fmt == Format.parquet:
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return
    if fmt == Format.xlsx:
        _write_xlsx(table, Path(out))  # type: ignore[arg-type]
        return
    buf = io.StringIO()
    if fmt in (Format.csv, Format.tsv):
        import csv

        w = csv.writer(buf, delimiter="," if fmt == Format.csv else "\t", lineterminator="\n")
        w.writerow(table.column_names)
        for row in table.to_pylist():
            w.writerow(neutralise_row("" if v is None else v for v in row.values()))
    elif fmt == Format.json:
        json.dump(
            [{k: _jsonable(v) for k, v in r.items()} for r in table.to_pylist()], buf, ensure_ascii=False, indent=1
        )
        buf.write("\n")
    elif fmt == Format.nl:
        for r in table.to_pylist():
            buf.write(json.dumps({k: _jsonable(v) for k, v in r.items()}, ensure_ascii=False) + "\n")
    text = buf.getvalue()
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _xlsx_cell(v: object) -> object:
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return neutralise("\\".join("" if x is None else str(x) for x in v))
    return neutralise(str(v))


def _write_xlsx(table: pa.Table, out: Path) -> None:
    """One sheet, a header row, every text cell written as text (never a formula: OWASP CSV injection)."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(out), {"constant_memory": True, "nan_inf_to_errors": True, **XLSX_OPTIONS})
    ws = wb.add_worksheet("data")
    bold = wb.add_format({"bold": True})
    for c, name in enumerate(table.column_names):
        ws.write_string(0, c, neutralise(name), bold)
    for i, row in enumerate(table.to_pylist(), start=1):
        for c, v in enumerate(row.values()):
            cell = _xlsx_cell(v)
            if cell is None:
                continue
            if isinstance(cell, str):
                ws.write_string(i, c, cell)
            else:
                ws.write(i, c, cell)
    if table.num_rows:
        ws.freeze_panes(1, 0)
    wb.close()
