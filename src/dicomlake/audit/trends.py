"""Trends over time for the dose audits: the median of a dose quantity per month (or quarter)
and per room or protocol, so that a change of protocol or equipment shows as a step.

Settings (``[trends]``): ``period = "month"`` or ``"quarter"``; ``log_axis = false``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from dicomlake.audit.common import color
from dicomlake.audit.report import Chart, Table


def period_label(day: dt.date | None, period: str) -> str | None:
    if day is None:
        return None
    if period == "quarter":
        return f"{day.year}-Q{(day.month - 1) // 3 + 1}"
    return f"{day.year}-{day.month:02d}"


def trend_table(df: pl.DataFrame, date: str, group: str, value: str, period: str = "month") -> pl.DataFrame:
    """``period, group, n, median, q1, q3`` of ``value`` (rows without a date or value left out)."""
    if period not in ("month", "quarter"):
        raise ValueError(f"[trends] period {period!r}: choose month or quarter")
    part = df.filter(pl.col(date).is_not_null() & pl.col(value).is_not_null())
    labels = [period_label(d, period) for d in part.get_column(date).to_list()]
    part = part.with_columns(pl.Series("period", labels, dtype=pl.String))
    return (
        part.group_by("period", group)
        .agg(
            pl.len().alias("n"),
            pl.col(value).median().alias(f"median_{value}"),
            pl.col(value).quantile(0.25, "linear").alias(f"q1_{value}"),
            pl.col(value).quantile(0.75, "linear").alias(f"q3_{value}"),
        )
        .sort("period", group, nulls_last=True)
    )


def trend_chart(df: pl.DataFrame, date: str, group: str, value: str, ytitle: str,
                cfg: dict[str, Any] | None = None) -> tuple[Chart, Table] | None:  # fmt: skip
    """A line per ``group`` of the median ``value`` per period; ``None`` without dated values."""
    import plotly.graph_objects as go

    cfg = cfg or {}
    period = str(cfg.get("period", "month"))
    table = trend_table(df, date, group, value, period)
    if not table.height:
        return None
    fig = go.Figure()
    periods = sorted(set(table.get_column("period").to_list()))
    for n, g in enumerate(sorted({str(x) for x in table.get_column(group).to_list()})):
        p = table.filter(pl.col(group).cast(pl.String) == g).sort("period")
        fig.add_trace(go.Scatter(x=p.get_column("period").to_list(), y=p.get_column(f"median_{value}").to_list(),
                                 mode="lines+markers", name=g, marker_color=color(n),
                                 customdata=p.get_column("n").to_list(),
                                 hovertemplate="%{x}: median %{y:.4g} (n=%{customdata})<extra>" + g + "</extra>"))  # fmt: skip
    fig.update_layout(xaxis_title=period.capitalize(), yaxis_title=ytitle, template="plotly_white", height=420,
                      xaxis={"type": "category", "categoryorder": "array", "categoryarray": periods},
                      yaxis_type="log" if cfg.get("log_axis") else "linear")  # fmt: skip
    chart = Chart(
        f"trend-{value}", f"Trend: {ytitle[:1].lower()}{ytitle[1:]} per {period} and {group.replace('_', ' ')}",
        f"Median {value} per {period} (study date) for each {group.replace('_', ' ')}; the table gives n and "
        "quartiles. A step marks a change of protocol, equipment or practice.",
        fig, table,
    )  # fmt: skip
    return chart, Table(f"trend-{value}", f"Trend of {value} per {period}", f"Per {period} and {group}.", table)
