"""Workflow from acquisition timestamps (``dicomlake audit workflow``): exam duration, gap
between patients per room, throughput per day, utilisation by hour × weekday, per operator."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict

import polars as pl

from dicomlake.audit.common import (
    OperatorPseudonyms,
    Selection,
    color,
    load_settings,
    std_instances,
)
from dicomlake.audit.report import AuditResult, Chart, Table
from dicomlake.query.lake import Lake

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
UNKNOWN_ROOM = "unknown room"


def exams(lake: Lake, selection: Selection, exclude_modalities: list[str]) -> pl.DataFrame:
    """One row per study and room: first and last acquisition, instances, operator."""
    cond, params = selection.sql(lake, "s")
    excl = ", ".join(f"'{m}'" for m in exclude_modalities) or "''"
    sql = f"""
    SELECT s.StudyInstanceUID, coalesce(s.station_std, nullif(trim(s.StationName), ''), '{UNKNOWN_ROOM}') AS room,
           any_value(s.Modality) AS Modality, any_value(s.PatientID) AS PatientID,
           any_value(s.institution_std) AS site, any_value(s.OperatorsName) AS OperatorsName,
           min(trim(coalesce(s.Manufacturer, '') || ' ' || coalesce(s.ManufacturerModelName, '') || ' '
                    || coalesce(s.DeviceSerialNumber, ''))) AS device,
           min(s.acquisition_datetime) AS start, max(s.acquisition_datetime) AS "end", count(*) AS instances
    FROM {std_instances(lake)} s
    WHERE {cond} AND s.acquisition_datetime IS NOT NULL AND coalesce(s.Modality, '') NOT IN ({excl})
    GROUP BY 1, 2 ORDER BY room, start, "end", StudyInstanceUID"""
    df = lake.sql(sql, params)
    df = OperatorPseudonyms().column(df).drop("OperatorsName")
    return df.with_columns(((pl.col("end") - pl.col("start")).dt.total_seconds() / 60.0).alias("duration_min"))


def utilisation(df: pl.DataFrame) -> tuple[list[list[float]], int]:
    """Occupied fraction of each weekday × hour: exam minutes falling in the cell divided by
    (rooms × occurrences of that weekday in the period × 60)."""
    if not df.height:
        return [[0.0] * 24 for _ in range(7)], 0
    minutes = [[0.0] * 24 for _ in range(7)]
    for start, end in zip(df.get_column("start").to_list(), df.get_column("end").to_list(), strict=True):
        t = start
        while t < end:
            nxt = min(end, (t.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)))
            minutes[t.weekday()][t.hour] += (nxt - t).total_seconds() / 60.0
            t = nxt
    first = min(df.get_column("start").to_list()).date()
    last = max(df.get_column("end").to_list()).date()
    occurrences = [0] * 7
    d = first
    while d <= last:
        occurrences[d.weekday()] += 1
        d += dt.timedelta(days=1)
    rooms = df.get_column("room").n_unique()
    util = [[minutes[w][h] / (rooms * occurrences[w] * 60.0) if occurrences[w] else 0.0 for h in range(24)]
            for w in range(7)]  # fmt: skip
    return util, rooms


def audit_workflow(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    import plotly.graph_objects as go

    selection = selection or Selection()
    cfg = (settings or load_settings()).get("workflow", {})
    max_gap = float(cfg.get("max_gap_minutes", 120))
    excl = list(cfg.get("exclude_modalities", ["SR", "PR", "KO"]))
    df = exams(lake, selection, excl)
    res = AuditResult(
        name="workflow", title="Workflow audit: durations, gaps, throughput, utilisation",
        selection=selection.sentence("exams (study × room)", df.height, lake.store.lake)
        + f" Times are acquisition date-times; {', '.join(excl)} instances are left out (no acquisition of their own).",
        all_data=df, sheets_by="room",
    )  # fmt: skip
    note = OperatorPseudonyms().note
    if note:
        res.notes.append(note)
    # gaps: from the end of one exam to the start of the next in the same room on the same day
    gaps = []
    # exams in a room in a fixed order (start, end, study UID): tied start times give the same
    # gaps on every engine; the 'unknown room' bucket pools unrelated stations: no gap there
    # gaps only between exams of one device: two scanners sharing a station name (an anonymised
    # 'REMOVED', say) are not one room
    ordered = df.sort("room", "device", "start", "end", "StudyInstanceUID", nulls_last=True)
    for (room, _device), part in ordered.group_by("room", "device", maintain_order=True):
        if room == UNKNOWN_ROOM:
            continue
        rows = part.select("StudyInstanceUID", "start", "end").rows()
        for prev, cur in itertools.pairwise(rows):
            if prev[2].date() == cur[1].date():
                g = (cur[1] - prev[2]).total_seconds() / 60.0
                if 0 <= g <= max_gap:
                    gaps.append({"room": room, "after": prev[0], "before": cur[0], "date": cur[1].date(), "gap_min": g})
    gap_df = pl.DataFrame(gaps, schema={"room": pl.String, "after": pl.String, "before": pl.String,
                                        "date": pl.Date, "gap_min": pl.Float64})  # fmt: skip
    by_room = df.group_by("room").agg(
        pl.len().alias("exams"), pl.col("duration_min").median().alias("median_duration_min"),
        pl.col("duration_min").mean().alias("mean_duration_min"),
        pl.col("start").dt.date().n_unique().alias("days"),
    ).join(gap_df.group_by("room").agg(pl.len().alias("gaps"), pl.col("gap_min").median().alias("median_gap_min")),
           on="room", how="left").with_columns((pl.col("exams") / pl.col("days")).alias("exams_per_day")).sort("room")  # fmt: skip
    per_day = (
        df.group_by("room", pl.col("start").dt.date().alias("date")).agg(pl.len().alias("exams")).sort("date", "room")
    )
    per_op = df.group_by("operator").agg(pl.len().alias("exams"), pl.col("duration_min").median().alias("median_duration_min")
                                         ).sort("operator", nulls_last=True)  # fmt: skip
    util, rooms = utilisation(df)
    res.numbers.update({"exams": df.height, "rooms": rooms,
                        "median_duration_min": df.get_column("duration_min").median() if df.height else None,
                        "median_gap_min": gap_df.get_column("gap_min").median() if gap_df.height else None})  # fmt: skip
    res.numbers["by_room"] = {r["room"]: r for r in by_room.to_dicts()}
    res.numbers["utilisation"] = util
    fig = go.Figure()
    for n, room in enumerate(sorted(df.get_column("room").unique().to_list())):
        fig.add_trace(go.Box(y=df.filter(pl.col("room") == room).get_column("duration_min").to_list(), name=room,
                             marker_color=color(n), boxpoints="all", jitter=0.3))  # fmt: skip
    fig.update_layout(yaxis_title="Exam duration, first to last acquisition (min)", template="plotly_white", height=420)
    res.charts.append(Chart("duration", "Exam duration per room",
                            "Each exam is one study in one room; duration from its first to its last acquisition "
                            "(single-image exams count as 0 min).", fig, df.select("room", "StudyInstanceUID", "duration_min")))  # fmt: skip  # noqa: E501
    fig = go.Figure()
    for n, room in enumerate(sorted(gap_df.get_column("room").unique().to_list())):
        fig.add_trace(go.Box(y=gap_df.filter(pl.col("room") == room).get_column("gap_min").to_list(), name=room,
                             marker_color=color(n), boxpoints="all", jitter=0.3))  # fmt: skip
    fig.update_layout(yaxis_title="Gap between patients (min)", template="plotly_white", height=420)
    res.charts.append(Chart("gaps", "Gap between patients per room",
                            f"From the last acquisition of one exam to the first of the next in the same room, same day "
                            f"and device (exams ordered by start, end, then study UID); gaps over {max_gap:g} min are breaks and "
                            f"left out, and none is computed in the '{UNKNOWN_ROOM}' bucket (exams without a station).", fig, gap_df))  # fmt: skip  # noqa: E501
    fig = go.Figure()
    for n, room in enumerate(sorted(per_day.get_column("room").unique().to_list())):
        p = per_day.filter(pl.col("room") == room)
        fig.add_trace(go.Bar(x=[str(d) for d in p.get_column("date").to_list()], y=p.get_column("exams").to_list(),
                             name=room, marker_color=color(n)))  # fmt: skip
    fig.update_layout(barmode="stack", yaxis_title="Exams", template="plotly_white", height=380)
    res.charts.append(
        Chart("throughput", "Throughput per day", "Exams started per day, stacked by room.", fig, per_day)
    )
    fig = go.Figure(go.Heatmap(z=[[round(100 * v, 2) for v in row] for row in util], x=[f"{h:02d}:00" for h in range(24)],
                               y=WEEKDAYS, colorscale="Blues", zmin=0, colorbar={"title": "% busy"}))  # fmt: skip
    fig.update_layout(template="plotly_white", height=360, yaxis={"autorange": "reversed"})
    util_df = pl.DataFrame({"weekday": WEEKDAYS, **{f"{h:02d}": [util[w][h] for w in range(7)] for h in range(24)}})
    res.charts.append(Chart("utilisation", "Utilisation by hour and weekday",
                            f"Share of each hour in which an exam was running, summed over {rooms} room(s) and divided "
                            "by rooms × the number of such weekdays in the period (first to last exam date).", fig, util_df))  # fmt: skip
    fig = go.Figure(go.Bar(x=[o or "unknown" for o in per_op.get_column("operator").to_list()],
                           y=per_op.get_column("median_duration_min").to_list(), marker_color=color(0),
                           customdata=per_op.get_column("exams").to_list(),
                           hovertemplate="%{x}: %{y:.1f} min (n=%{customdata})<extra></extra>"))  # fmt: skip
    fig.update_layout(
        xaxis_title="Operator (pseudonym)",
        yaxis_title="Median exam duration (min)",
        template="plotly_white",
        height=380,
    )
    res.charts.append(
        Chart("operator", "Exam duration per operator", "Operators' Name replaced by a keyed pseudonym.", fig, per_op)
    )
    res.tables += [
        Table("rooms", "Per room", "Exams, durations, gaps and exams per working day (days with an exam).", by_room),
        Table("per-day", "Exams per day and room", "", per_day),
        Table("gaps", "Gaps between patients", "", gap_df),
        Table("operators", "Per operator", "", per_op),
    ]
    _ = defaultdict
    return res
