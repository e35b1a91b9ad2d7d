"""Nuclear medicine administered activity audit (``dicomlake audit nm-dose``).

One row per administration: from the Radiopharmaceutical Radiation Dose SR (TID 10021) where
the study has one, else from the Radiopharmaceutical Information Sequence of the study's NM and
PET images (Radionuclide Total Dose (0018,1074): MBq in NM images, Bq in PET images, PS3.3
C.8.4.10 / C.8.9.2), each administration once however many images repeat it. Activities are
compared with DRLs per radiopharmaceutical (``[[nm.drl]]`` in the settings, matched as CT DRL
rules are: most specific first).
"""

from __future__ import annotations

import logging

import polars as pl

from dicomlake.audit import drl as drl_rules
from dicomlake.audit.common import Selection, color, load_settings, quantile, std_instances
from dicomlake.audit.report import AuditResult, Chart, Table
from dicomlake.audit.trends import trend_chart
from dicomlake.events import distinct_events_sql
from dicomlake.query.lake import Lake

log = logging.getLogger(__name__)

_COLUMNS = {"StudyInstanceUID": pl.String, "StudyDate": pl.Date, "room": pl.String, "study_description": pl.String,
            "radiopharmaceutical": pl.String, "radionuclide": pl.String, "activity_MBq": pl.Float64,
            "PatientWeight": pl.Float64, "source": pl.String, "SOPInstanceUID": pl.String}  # fmt: skip


def administrations(lake: Lake, selection: Selection) -> pl.DataFrame:
    cond, params = selection.sql(lake, "s")
    room = (
        "coalesce(s.station_std, nullif(trim(s.StationName), ''), "
        "nullif(trim(coalesce(s.ManufacturerModelName, '') || ' ' || coalesce(s.DeviceSerialNumber, '')), ''), "
        "'unknown room')"
    )
    sr = lake.sql(
        f"""WITH sel AS (SELECT * FROM {std_instances(lake)} s WHERE {cond})
        SELECT d.StudyInstanceUID, s.StudyDate, {room} AS room, s.study_description_std AS study_description,
               d.radiopharmaceutical, d.radionuclide, d.administered_activity_MBq AS activity_MBq,
               CAST(s.PatientWeight AS DOUBLE) AS PatientWeight, d.source, d.SOPInstanceUID
        FROM ({distinct_events_sql()}) d JOIN sel s USING (SOPInstanceUID)
        WHERE d.modality_family = 'NM' AND d.record = 'event' AND d.administered_activity_MBq IS NOT NULL
        ORDER BY s.StudyDate, d.StudyInstanceUID, d.SOPInstanceUID""",
        params,
    ).cast(_COLUMNS)  # type: ignore[arg-type]
    # image headers: Radiopharmaceutical Information Sequence items, one per administration
    has_elements = lake.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'elements'").item()
    if not has_elements:
        return sr
    try:
        img = _header_administrations(lake, cond, params, room)
    except Exception as exc:  # a lake whose elements cannot be read: the SRs alone
        log.warning("nm-dose: image headers not read (%s); dose SRs only", exc)
        return sr
    with_sr = set(sr.get_column("StudyInstanceUID").to_list())
    img = img.filter(~pl.col("StudyInstanceUID").is_in(list(with_sr))).unique(
        subset=["StudyInstanceUID", "radiopharmaceutical", "activity_MBq"], keep="first", maintain_order=True
    )
    return pl.concat([sr, img]).sort("StudyDate", "StudyInstanceUID", "SOPInstanceUID", nulls_last=True)


def _header_administrations(lake: Lake, cond: str, params: list[object], room: str) -> pl.DataFrame:
    return lake.sql(
        f"""WITH sel AS (SELECT * FROM {std_instances(lake)} s WHERE {cond} AND s.Modality IN ('NM', 'PT')),
        items AS (
          SELECT e.SOPInstanceUID, split_part(split_part(e.path, '[', 2), ']', 1) AS k,
                 max(CASE WHEN e.keyword = 'Radiopharmaceutical' THEN e.value_text END) AS radiopharmaceutical,
                 max(CASE WHEN e.keyword = 'RadionuclideTotalDose' THEN e.value_num END) AS dose,
                 max(CASE WHEN e.keyword = 'CodeMeaning' AND e.path LIKE '%RadionuclideCodeSequence%'
                          THEN e.value_text END) AS radionuclide
          FROM elements e JOIN sel s ON s.SOPInstanceUID = e.SOPInstanceUID
          WHERE e.path LIKE 'RadiopharmaceuticalInformationSequence[%'
          GROUP BY 1, 2)
        SELECT s.StudyInstanceUID, s.StudyDate, {room} AS room, s.study_description_std AS study_description,
               i.radiopharmaceutical, i.radionuclide,
               CASE WHEN s.Modality = 'PT' THEN i.dose / 1e6 ELSE i.dose END AS activity_MBq,
               CAST(s.PatientWeight AS DOUBLE) AS PatientWeight, 'header' AS source, s.SOPInstanceUID
        FROM items i JOIN sel s USING (SOPInstanceUID)
        WHERE i.dose IS NOT NULL
        ORDER BY s.StudyDate, s.StudyInstanceUID, i.k, s.SOPInstanceUID""",
        params,
    ).cast(_COLUMNS)  # type: ignore[arg-type]


def audit_nm_dose(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    """Administered activity per radiopharmaceutical and room against DRLs."""
    import plotly.graph_objects as go

    selection = selection or Selection()
    all_settings = settings or load_settings()
    cfg = all_settings.get("nm", {})
    rules = drl_rules.parse_rules(list(cfg.get("drl", [])), "nm")
    df = administrations(lake, selection)
    got = [drl_rules.match(rules, r, "activity_MBq") for r in df.get_column("radiopharmaceutical").to_list()]
    df = df.with_columns(
        (pl.col("activity_MBq") / pl.col("PatientWeight")).alias("MBq_per_kg"),
        pl.Series("drl_rule", [m.rule for m in got], dtype=pl.String),
        pl.Series("national_drl_MBq", [m.value for m in got], dtype=pl.Float64),
        pl.Series("drl_match", [m.note for m in got], dtype=pl.String),
    ).with_columns((pl.col("activity_MBq") / pl.col("national_drl_MBq")).alias("over_national"))
    res = AuditResult(
        name="nm-dose", title="Nuclear medicine administered activity audit",
        selection=selection.sentence("administrations", df.height, lake.store.lake)
        + " From the Radiopharmaceutical Radiation Dose SR where the study has one, else the NM/PET image "
        "headers (each administration once).",
        all_data=df, sheets_by="radiopharmaceutical",
    )  # fmt: skip
    adm_df = df
    group = "agent"
    df = df.with_columns(pl.coalesce("drl_rule", "radiopharmaceutical", pl.lit("unknown")).alias(group))
    med = (
        df.group_by(group, "room")
        .agg(
            pl.len().alias("n"),
            pl.col("activity_MBq").median().alias("median_MBq"),
            pl.col("activity_MBq").max().alias("max_MBq"),
        )
        .sort(group, "room")
    )
    rows = []
    for agent in sorted(set(med.get_column(group).to_list())):
        meds = med.filter(pl.col(group) == agent).get_column("median_MBq").to_list()
        part = df.filter(pl.col(group) == agent)
        nat = part.get_column("national_drl_MBq").drop_nulls()
        nat_v = float(nat[0]) if nat.len() else None
        q3 = quantile(meds, 0.75)
        rows.append({group: agent, "rooms": len(meds), "administrations": part.height, "local_drl_MBq": q3,
                     "national_drl_MBq": nat_v, "local_over_national": (q3 / nat_v) if (q3 and nat_v) else None})  # fmt: skip
    drl = pl.DataFrame(rows, schema={group: pl.String, "rooms": pl.Int64, "administrations": pl.Int64,
                                     "local_drl_MBq": pl.Float64, "national_drl_MBq": pl.Float64,
                                     "local_over_national": pl.Float64})  # fmt: skip
    over = float(cfg.get("alert_over_drl_percent", 10))
    alerts = df.filter(pl.col("over_national") > 1 + over / 100).select(
        "StudyInstanceUID", "StudyDate", "room", pl.col(group).alias("what"), pl.lit("activity_MBq").alias("quantity"),
        pl.col("activity_MBq").alias("value"), pl.lit("MBq").alias("unit"), pl.col("national_drl_MBq").alias("drl"),
    )  # fmt: skip
    res.numbers.update({"administrations": df.height, "alerts": alerts.height,
                        "rooms": df.get_column("room").n_unique() if df.height else 0})  # fmt: skip
    res.numbers["median_MBq"] = {(r[0], r[1]): r[3] for r in med.iter_rows()}
    fig = go.Figure()
    agents = sorted(set(df.get_column(group).to_list()))
    for n, room in enumerate(sorted(set(df.get_column("room").to_list()))):
        p = df.filter(pl.col("room") == room)
        fig.add_trace(go.Box(x=p.get_column(group).to_list(), y=p.get_column("activity_MBq").to_list(), name=room,
                             marker_color=color(n), boxpoints="all", jitter=0.3))  # fmt: skip
    nat_x = [r[group] for r in rows if r["national_drl_MBq"] is not None]
    if nat_x:
        fig.add_trace(go.Scatter(x=nat_x, y=[r["national_drl_MBq"] for r in rows if r["national_drl_MBq"] is not None],
                                 mode="markers", name="national DRL",
                                 marker={"symbol": "line-ew-open", "size": 30, "color": "#c23b3b", "line": {"width": 3}}))  # fmt: skip
    fig.update_layout(boxmode="group", yaxis_title="Administered activity (MBq)", template="plotly_white",
                      height=440, xaxis={"categoryorder": "array", "categoryarray": agents},
                      yaxis_type="log" if cfg.get("log_axis") else "linear")  # fmt: skip
    res.charts.append(Chart(
        "activity", "Administered activity by radiopharmaceutical and room",
        "Each point is one administration; agents are named by the DRL rule they match, else as recorded. "
        "Red marks: the national DRL of the agent (settings [[nm.drl]]).",
        fig, df.select(group, "room", "activity_MBq", "StudyDate"),
    ))  # fmt: skip
    trend = trend_chart(df, "StudyDate", group, "activity_MBq", "Median administered activity (MBq)",
                        all_settings.get("trends", {}))  # fmt: skip
    if trend is not None:
        res.charts.append(trend[0])
        res.tables.append(trend[1])
    over_text = f"Administrations more than {over:g} % above the national DRL of their agent."
    adm_text = (
        "One row per administration, with the DRL rule it is judged against (drl_rule, drl_match) and the "
        "activity per kg where the weight is recorded."
    )
    res.tables += [
        Table("activity", "Activity by radiopharmaceutical and room", "Median and maximum per room.", med),
        Table("drl", "DRLs by radiopharmaceutical", "Local DRL = Q3 of room medians; national from settings.", drl),
        Table("alerts", "Alerts", over_text, alerts),
        Table("administrations", "Administrations", adm_text, adm_df),
    ]
    if not df.height:
        res.notes.append("No administrations in the selection (no NM/PET dose SR or image with an activity).")
    return res
