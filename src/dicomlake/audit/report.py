"""Audit results and how they are written: one self-contained HTML file (Plotly's JavaScript
embedded, no CDN), each table as CSV beside it, and an XLSX shaped like OpenREM's exports."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dicomlake import __version__


@dataclass(slots=True)
class Chart:
    """A chart with the words that say what is in it and the data it was drawn from."""

    id: str
    title: str
    caption: str
    figure: Any  # plotly.graph_objects.Figure
    data: pl.DataFrame


@dataclass(slots=True)
class Table:
    """A table of the report (written as CSV too)."""

    id: str
    title: str
    caption: str
    df: pl.DataFrame


@dataclass(slots=True)
class AuditResult:
    """Everything one audit found: numbers for tests and summaries, tables, charts."""

    name: str
    title: str
    selection: str
    """The sentence saying which instances were included."""
    numbers: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    all_data: pl.DataFrame | None = None
    """The row-level data (one row per exposure/exam/object): the XLSX 'All data' sheet."""
    sheets_by: str | None = None
    """Column of ``all_data`` whose values each get an XLSX sheet (e.g. the protocol)."""

    def table(self, id: str) -> pl.DataFrame:
        for t in self.tables:
            if t.id == id:
                return t.df
        raise KeyError(id)


def _csv(df: pl.DataFrame) -> str:
    from dicomlake.security.cells import neutralise_frame  # formula injection (OWASP CSV injection)

    text: str = neutralise_frame(_flat(df)).write_csv()
    return text


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    """Lists and structs as text, so CSV and XLSX can hold them."""
    casts = [pl.col(c).cast(pl.String) for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Struct, pl.Object))]
    return df.with_columns(casts) if casts else df


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _html_table(df: pl.DataFrame, max_rows: int = 200) -> str:
    cols = df.columns
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in df.head(max_rows).iter_rows():
        cells = []
        for v in row:
            if isinstance(v, float):
                txt = f"{v:.4g}" if abs(v) < 1e6 else f"{v:.6g}"
                cells.append(f'<td class="n">{txt}</td>')
            elif v is None:
                cells.append('<td class="na"></td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f'<p class="more">First {max_rows} of {df.height:,} rows; the CSV and XLSX hold all.</p>'
        if df.height > max_rows else ""
    )  # fmt: skip
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'


def _download(name: str, df: pl.DataFrame, label: str) -> str:
    b64 = base64.b64encode(_csv(df).encode("utf-8")).decode("ascii")
    return (
        f'<a class="dl" download="{html.escape(name)}" href="data:text/csv;charset=utf-8;base64,{b64}">'
        f"{html.escape(label)}</a>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
.sel{background:#f4f6f8;padding:.6em 1em;border-left:4px solid #3b6ea5}
.cap{color:#444;font-size:.92em;margin:.3em 0 .6em} .more{color:#666;font-size:.85em}
.tw{overflow-x:auto;max-height:480px;overflow-y:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:.85em} th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
th{background:#fafafa;position:sticky;top:0} td.n{text-align:right;font-variant-numeric:tabular-nums} td.na{background:#fcfcfc}
a.dl{display:inline-block;margin:.2em 0 1em;padding:2px 8px;
  border:1px solid #3b6ea5;border-radius:3px;color:#3b6ea5;text-decoration:none;font-size:.85em}
.numbers td:first-child{font-weight:600} .notes li{color:#8a5a00} footer{margin-top:3em;color:#888;font-size:.8em}
"""


def render_html(result: AuditResult) -> str:
    """The report as one HTML document that works offline."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(result.title)}</title><style>{_CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(result.title)}</h1>",
        f"<p class='sel'>{html.escape(result.selection)}</p>",
    ]
    if result.numbers:
        rows = []
        for k, v in result.numbers.items():
            if isinstance(v, (dict, list)):
                continue
            txt = f"{v:.4g}" if isinstance(v, float) else str(v)
            rows.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(txt)}</td></tr>")
        parts.append(f"<h2>Summary</h2><table class='numbers'>{''.join(rows)}</table>")
    if result.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
    for ch in result.charts:
        div = pio.to_html(
            ch.figure, full_html=False, include_plotlyjs=False, div_id=f"chart-{_slug(ch.id)}",
            config={"displaylogo": False, "responsive": True},
        )  # fmt: skip
        parts.append(
            f"<section class='chart' id='sec-{_slug(ch.id)}'><h2>{html.escape(ch.title)}</h2>"
            f"<p class='cap'>{html.escape(ch.caption)}</p>{div}"
            f"{_download(f'{result.name}-{_slug(ch.id)}.csv', ch.data, 'Download the data of this chart (CSV)')}"
            "</section>"
        )
    for t in result.tables:
        parts.append(
            f"<section class='table' id='tab-{_slug(t.id)}'><h2>{html.escape(t.title)}</h2>"
            f"<p class='cap'>{html.escape(t.caption)}</p>{_html_table(t.df)}"
            f"{_download(f'{result.name}-{_slug(t.id)}.csv', t.df, 'Download this table (CSV)')}</section>"
        )
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<footer>dicomlake {__version__} · audit {html.escape(result.name)} · {stamp}</footer></body></html>")
    return "".join(parts)


def _sheet_name(text: str, used: set[str]) -> str:
    base = re.sub(r"[\[\]:*?/\\]", "_", text or "(none)")[:28] or "(none)"
    name, n = base, 2
    while name.lower() in used:
        name = f"{base[:25]}~{n}"
        n += 1
    used.add(name.lower())
    return name


def write_xlsx(result: AuditResult, path: Path) -> None:
    """Summary sheet, every table, 'All data', then one sheet per value of ``sheets_by``
    (OpenREM's layout: summary, all data, one sheet per protocol)."""
    import xlsxwriter

    from dicomlake.security.cells import XLSX_OPTIONS, neutralise  # formula injection (OWASP CSV injection)

    wb = xlsxwriter.Workbook(str(path), {"nan_inf_to_errors": True, "remove_timezone": True, **XLSX_OPTIONS})
    bold = wb.add_format({"bold": True})
    used: set[str] = set()
    ws = wb.add_worksheet(_sheet_name("Summary", used))
    ws.write(0, 0, result.title, bold)
    ws.write(1, 0, result.selection)
    r = 3
    for k, v in result.numbers.items():
        if isinstance(v, (dict, list)):
            continue  # breakdowns are in their own sheets
        ws.write(r, 0, k, bold)
        ws.write(r, 1, v if isinstance(v, (int, float)) else str(v))
        r += 1
    for note in result.notes:
        ws.write(r + 1, 0, note)
        r += 1
    ws.set_column(0, 0, 38)

    def sheet(name: str, df: pl.DataFrame) -> None:
        w = wb.add_worksheet(_sheet_name(name, used))
        flat = _flat(df)
        for c, col in enumerate(flat.columns):
            w.write(0, c, col, bold)
        for i, row in enumerate(flat.iter_rows(), start=1):
            for c, v in enumerate(row):
                if v is None:
                    continue
                if isinstance(v, (dt.datetime, dt.date)):
                    w.write_string(i, c, v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat())
                elif isinstance(v, (int, float, bool)):
                    w.write(i, c, v)
                else:
                    w.write_string(i, c, neutralise(str(v)))
        w.freeze_panes(1, 0)

    for t in result.tables:
        if t.df is not result.all_data:
            sheet(t.title, t.df)
    if result.all_data is not None:
        sheet("All data", result.all_data)
        if result.sheets_by and result.sheets_by in result.all_data.columns:
            col = result.sheets_by
            for key in result.all_data.get_column(col).unique(maintain_order=True).to_list():
                part = result.all_data.filter(pl.col(col).is_null() if key is None else pl.col(col) == key)
                sheet(str(key) if key is not None else "(none)", part)
    wb.close()


def write_report(result: AuditResult, out: str | Path) -> dict[str, list[Path]]:
    """Write ``out`` (HTML), ``<stem>.xlsx`` and ``<stem>-<table>.csv`` beside it; the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(result), encoding="utf-8")
    csvs = []
    for t in result.tables:
        p = out.with_name(f"{out.stem}-{_slug(t.id)}.csv")
        p.write_text(_csv(t.df), encoding="utf-8")
        csvs.append(p)
    if result.all_data is not None:
        p = out.with_name(f"{out.stem}-all-data.csv")
        p.write_text(_csv(result.all_data), encoding="utf-8")
        csvs.append(p)
    xlsx = out.with_suffix(".xlsx")
    write_xlsx(result, xlsx)
    return {"html": [out], "csv": csvs, "xlsx": [xlsx]}


def to_buffer_csv(df: pl.DataFrame) -> io.StringIO:
    """A table as CSV text (tests and the web layer)."""
    return io.StringIO(_csv(df))
