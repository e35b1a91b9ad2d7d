"""Mammography dose and compression audit (``dicomlake audit mg-dose``).

Per exposure, from the Radiation Dose SR where the study has one (TID 10001/10003 with the
mammography rows of TID 10005) and from the image header otherwise (Organ Dose, Body Part
Thickness, Compression Force): average glandular dose (AGD), compressed breast thickness,
compression force, kVp, target/filter, view, laterality, X-ray set, site and operator.
"""

from __future__ import annotations

import itertools
import math
import re

import polars as pl

from dicomlake.audit.common import (
    OperatorPseudonyms,
    Selection,
    color,
    fit_exponential,
    load_settings,
    quantile,
    std_instances,
)
from dicomlake.audit.report import AuditResult, Chart, Table
from dicomlake.audit.trends import trend_chart
from dicomlake.events import distinct_events_sql
from dicomlake.query.lake import Lake

MODES = ("2D", "DBT", "CE")
"""Acquisition modes audited apart: 2D (full-field digital mammography, incl. synthetic-free
stereotactic views), DBT (tomosynthesis: a rotational acquisition, a Breast Tomosynthesis or
Breast Projection image) and CE (contrast-enhanced: low/high-energy or recombined images)."""

_TOMO_CLASSES = ("1.2.840.10008.5.1.4.1.1.13.1.3", "1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5")
_CE_WORDS = re.compile(
    r"\b(CESM|CEDM|CEM|CONTRAST|LOW[_ ]?ENERGY|HIGH[_ ]?ENERGY|RECOMBINED|SUBTRACT\w*|DUAL[_ ]?ENERGY)\b", re.I
)
_TOMO_WORDS = re.compile(r"\b(TOMO\w*|DBT|3D)\b", re.I)

FLAG_COLUMNS = {
    "OrganDose": "agd_mGy", "agd_mGy": "agd_mGy",
    "BodyPartThickness": "compressed_breast_thickness_mm",
    "compressed_breast_thickness_mm": "compressed_breast_thickness_mm",
    "CompressionForce": "compression_force_N", "compression_force_N": "compression_force_N",
    "KVP": "kvp", "kvp": "kvp",
}  # fmt: skip
"""Curation flag attribute (an ``instances`` or ``dose_events`` column) → exposure column."""


def acquisition_mode(event_type: str | None, protocol: str | None, sop_class: str | None,
                     image_type: str | None) -> str:  # fmt: skip
    """'DBT', 'CE' or '2D' for one exposure (see :data:`MODES`)."""
    words = " ".join(x for x in (protocol, image_type) if x).replace("\\", " ")
    if _CE_WORDS.search(words):
        return "CE"
    if (event_type or "").lower().startswith("rotational") or sop_class in _TOMO_CLASSES or _TOMO_WORDS.search(words):
        return "DBT"
    return "2D"


_EXPOSURE_COLUMNS = (
    "SOPInstanceUID", "StudyInstanceUID", "IrradiationEventUID", "StudyDate", "event_datetime", "source", "site",
    "x_ray_set", "Manufacturer", "ManufacturerModelName", "view", "laterality", "agd_mGy",
    "compressed_breast_thickness_mm", "compression_force_N", "kvp", "anode_target", "filter_material",
    "irradiation_event_type", "acquisition_protocol", "SOPClassUID", "ImageType", "OperatorsName",
)  # fmt: skip


def exposures(lake: Lake, selection: Selection) -> pl.DataFrame:
    """One row per mammography exposure; RDSR events win over image headers of the same study,
    and an event repeated in several RDSRs of a study counts once."""
    cond, params = selection.sql(lake, "s")
    sql = f"""
    WITH sel AS (SELECT * FROM {std_instances(lake)} s WHERE {cond}),
    ev AS (
      SELECT d.*, s.StudyDate, s.institution_std, s.station_std, s.StationName, s.Manufacturer,
             s.ManufacturerModelName, s.DeviceSerialNumber, s.SOPClassUID, s.ImageType,
             coalesce(s.OperatorsName, (SELECT any_value(x.OperatorsName) FROM instances x
                       WHERE x.StudyInstanceUID = d.StudyInstanceUID AND x.OperatorsName IS NOT NULL)) AS OperatorsName
      FROM ({distinct_events_sql()}) d JOIN sel s USING (SOPInstanceUID)
      WHERE d.modality_family = 'MG' AND d.record = 'event'),
    rdsr AS (SELECT DISTINCT StudyInstanceUID FROM ev WHERE source = 'rdsr'),
    picked AS (
      SELECT SOPInstanceUID, StudyInstanceUID, IrradiationEventUID, StudyDate, event_datetime, source,
             coalesce(institution_std, 'unknown site') AS site,
             coalesce(station_std, device_observer_name,
                      nullif(trim(coalesce(ManufacturerModelName, '') || ' ' || coalesce(DeviceSerialNumber, '')), ''),
                      'unknown set') AS x_ray_set,
             "Manufacturer", "ManufacturerModelName", "view", "laterality", "agd_mGy",
             "compressed_breast_thickness_mm", "compression_force_N", "kvp", "anode_target", "filter_material",
             "irradiation_event_type", "acquisition_protocol", "SOPClassUID", "ImageType", "OperatorsName",
             -- one exposure stored as FOR PROCESSING and FOR PRESENTATION images counts once
             -- (quoted: dose_events' laterality and kvp, not instances' Laterality and KVP, on PostgreSQL)
             row_number() OVER (
               PARTITION BY StudyInstanceUID, coalesce(IrradiationEventUID, CAST(event_datetime AS VARCHAR)
                            || coalesce("laterality", '') || coalesce(view, '') || CAST(agd_mGy AS VARCHAR))
               ORDER BY SOPInstanceUID) AS _copy_no
      FROM ev WHERE source = 'rdsr' OR StudyInstanceUID NOT IN (SELECT StudyInstanceUID FROM rdsr))
    SELECT {", ".join(f'"{c}"' for c in _EXPOSURE_COLUMNS)}
    FROM picked WHERE source = 'rdsr' OR _copy_no = 1
    ORDER BY event_datetime, SOPInstanceUID, IrradiationEventUID"""
    df = lake.sql(sql, params)
    ops = OperatorPseudonyms()
    df = ops.column(df).drop("OperatorsName")
    tf = [
        f"{(a or '?').title()}/{(f or '?').title()}"
        for a, f in zip(
            df.get_column("anode_target").to_list(), df.get_column("filter_material").to_list(), strict=True
        )
    ]
    modes = [
        acquisition_mode(*r)
        for r in df.select("irradiation_event_type", "acquisition_protocol", "SOPClassUID", "ImageType").iter_rows()
    ]
    return df.with_columns(
        pl.Series("target_filter", tf, dtype=pl.String), pl.Series("mode", modes, dtype=pl.String)
    ).drop("SOPClassUID", "ImageType")


def error_flags(lake: Lake, uids: list[str]) -> pl.DataFrame:
    """The curation flags of severity 'error' on these instances whose attribute is an
    exposure value (:data:`FLAG_COLUMNS`)."""
    schema = {"SOPInstanceUID": pl.String, "rule": pl.String, "attribute": pl.String, "value": pl.String,
              "message": pl.String}  # fmt: skip
    has = lake.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'quality_flags'").item()
    if not has or not uids:
        return pl.DataFrame(schema=schema)
    marks = ", ".join("?" for _ in FLAG_COLUMNS)
    flags = lake.sql(
        f"""SELECT SOPInstanceUID, rule, attribute, value, message FROM quality_flags
            WHERE severity = 'error' AND attribute IN ({marks}) ORDER BY SOPInstanceUID, rule, attribute""",
        list(FLAG_COLUMNS),
    )
    return flags.filter(pl.col("SOPInstanceUID").is_in(uids)).cast(schema)  # type: ignore[arg-type]


def _names(message: str | None, uid: str) -> bool:
    """Does a flag message name this UID (whole, not as the prefix of a longer UID)?"""
    return bool(message) and re.search(rf"(?<![\d.]){re.escape(uid)}(?![\d.]*\d)", message or "") is not None


def exclude_flagged(df: pl.DataFrame, flags: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Null every exposure value a curation flag of severity 'error' marks; the exclusions.

    A flag on an image header (``instances`` attribute) marks its one exposure; a flag on a
    dose SR (``dose_events`` attribute) marks the event its message names by Irradiation Event
    UID, else the events of that SR with exactly the flagged value."""
    by_sop: dict[str, list[dict]] = {}
    for f in flags.to_dicts():
        by_sop.setdefault(f["SOPInstanceUID"], []).append(f)
    rows = df.to_dicts()
    out = []
    for n, r in enumerate(rows):
        for f in by_sop.get(r["SOPInstanceUID"], []):
            col = FLAG_COLUMNS[f["attribute"]]
            if r["source"] == "rdsr" and f["attribute"] == col:  # a dose_events flag: which event?
                ev = r.get("IrradiationEventUID")
                if ev and _names(f["message"], ev):
                    pass
                elif any(e and _names(f["message"], e) for e in (x.get("IrradiationEventUID") for x in rows)):
                    continue  # the flag names another event
                else:
                    try:
                        if r[col] is None or not math.isclose(float(r[col]), float(f["value"]), rel_tol=1e-6):
                            continue
                    except (TypeError, ValueError):
                        continue
            elif r["source"] == "rdsr":
                continue  # an image-header flag on an SR: not an exposure value
            if r[col] is None:
                continue
            out.append({"x_ray_set": r["x_ray_set"], "mode": r["mode"], "view": r["view"],
                        "SOPInstanceUID": r["SOPInstanceUID"], "IrradiationEventUID": r.get("IrradiationEventUID"),
                        "column": col, "value": float(r[col]), "rule": f["rule"], "message": f["message"],
                        "_row": n})  # fmt: skip
    schema = {"x_ray_set": pl.String, "mode": pl.String, "view": pl.String, "SOPInstanceUID": pl.String,
              "IrradiationEventUID": pl.String, "column": pl.String, "value": pl.Float64, "rule": pl.String,
              "message": pl.String, "_row": pl.Int64}  # fmt: skip
    excl = pl.DataFrame(out, schema=schema).unique(subset=["_row", "column"], keep="first", maintain_order=True)
    if excl.height:
        df = df.with_row_index("_row")
        for col in excl.get_column("column").unique().to_list():
            idx = excl.filter(pl.col("column") == col).get_column("_row").to_list()
            df = df.with_columns(pl.when(pl.col("_row").is_in(idx)).then(None).otherwise(pl.col(col)).alias(col))
        df = df.drop("_row")
    return df, excl.drop("_row")


def _band_label(lo: float, hi: float) -> str:
    return f"{lo:g}–{hi:g} mm"


def _cohort(set_name: str, mode: str) -> str:
    return set_name if mode == "2D" else f"{set_name} ({mode})"


def audit_mg_dose(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    """The mammography dose audit: fits, bands, medians, DRL and compression force, with 2D,
    tomosynthesis and contrast-enhanced exposures apart and flagged values left out."""
    import plotly.graph_objects as go

    selection = selection or Selection()
    cfg = (settings or load_settings()).get("mg", {})
    df = exposures(lake, selection)
    excluded = pl.DataFrame(schema={"x_ray_set": pl.String, "mode": pl.String, "view": pl.String,
                                    "SOPInstanceUID": pl.String, "IrradiationEventUID": pl.String,
                                    "column": pl.String, "value": pl.Float64, "rule": pl.String, "message": pl.String})  # fmt: skip
    exclude = bool(cfg.get("exclude_flagged", True))
    if exclude:
        df, excluded = exclude_flagged(df, error_flags(lake, df.get_column("SOPInstanceUID").unique().to_list()))
    df = df.with_columns(
        pl.struct("x_ray_set", "mode").map_elements(lambda r: _cohort(r["x_ray_set"], r["mode"]), return_dtype=pl.String)
        .alias("cohort")
    ) if df.height else df.with_columns(pl.lit(None, pl.String).alias("cohort"))  # fmt: skip
    res = AuditResult(
        name="mg-dose", title="Mammography dose and compression audit",
        selection=selection.sentence("mammography exposures", df.height, lake.store.lake)
        + " One row per exposure: from the Radiation Dose SR where the study has one, else the image header."
        " 2D, tomosynthesis (DBT) and contrast-enhanced (CE) exposures are audited apart.",
        all_data=df, sheets_by="x_ray_set",
    )  # fmt: skip
    ops_note = OperatorPseudonyms().note
    if ops_note:
        res.notes.append(ops_note)
    if excluded.height:
        res.notes.append(
            f"{excluded.height:,} value(s) that curation flags as errors are left out of every statistic "
            "(table 'Excluded values': the rule and its message); set [mg] exclude_flagged = false to keep them."
        )
    elif not exclude:
        res.notes.append("Values that curation flags as errors are kept ([mg] exclude_flagged = false).")
    dosed = df.filter(pl.col("agd_mGy").is_not_null() & pl.col("compressed_breast_thickness_mm").is_not_null())
    left_out = df.height - dosed.height
    modes_present = [m for m in MODES if m in set(df.get_column("mode").to_list())]
    res.numbers.update({"exposures": df.height, "exposures_with_dose_and_thickness": dosed.height,
                        "x_ray_sets": dosed.get_column("x_ray_set").n_unique() if dosed.height else 0,
                        "excluded_values": excluded.height,
                        **{f"exposures_{m}": df.filter(pl.col("mode") == m).height for m in MODES}})  # fmt: skip
    log_axis = bool(cfg.get("log_axis", False))

    # ---- dose against thickness, fitted per set and mode ----------------------------------
    fits = []
    fig = go.Figure()
    for n, (key, part) in enumerate(sorted(dosed.group_by("cohort"), key=lambda kv: str(kv[0][0]))):
        s = str(key[0])
        t = part.get_column("compressed_breast_thickness_mm").to_list()
        d = part.get_column("agd_mGy").to_list()
        fig.add_trace(go.Scatter(x=t, y=d, mode="markers", name=s, marker={"color": color(n), "size": 6, "opacity": 0.7},
                                 text=part.get_column("view").to_list(),
                                 hovertemplate="%{x} mm, %{y:.3f} mGy, %{text}<extra>" + s + "</extra>"))  # fmt: skip
        fit = fit_exponential(t, d)
        if fit is not None:
            fits.append({"x_ray_set": str(part.get_column("x_ray_set")[0]), "mode": str(part.get_column("mode")[0]),
                         "cohort": s, "n": fit.n, "a_mGy": fit.a, "b_per_mm": fit.b, "r2": fit.r2})  # fmt: skip
            xs = [min(t) + (max(t) - min(t)) * k / 40 for k in range(41)]
            fig.add_trace(go.Scatter(x=xs, y=[fit(x) for x in xs], mode="lines", name=f"{s} fit",
                                     line={"color": color(n)}, hoverinfo="skip"))  # fmt: skip
    fig.update_layout(xaxis_title="Compressed breast thickness (mm)", yaxis_title="Average glandular dose (mGy)",
                      template="plotly_white", height=480, yaxis_type="log" if log_axis else "linear")  # fmt: skip
    fit_df = pl.DataFrame(fits, schema={"x_ray_set": pl.String, "mode": pl.String, "cohort": pl.String, "n": pl.Int64,
                                        "a_mGy": pl.Float64, "b_per_mm": pl.Float64, "r2": pl.Float64})  # fmt: skip
    res.numbers["fits"] = {f["cohort"]: (f["a_mGy"], f["b_per_mm"]) for f in fits}
    res.charts.append(Chart(
        "dose-vs-thickness", "Average glandular dose against compressed breast thickness",
        f"Each point is one exposure ({dosed.height:,} with both AGD and thickness; {left_out:,} without one "
        "of them, or with one flagged as an error, left out). Lines: AGD = a·exp(b·thickness), least squares on "
        "log AGD, per X-ray set and mode (sets with fewer than 3 exposures are not fitted)."
        + (" Logarithmic dose axis." if log_axis else ""),
        fig, dosed.select("x_ray_set", "mode", "view", "compressed_breast_thickness_mm", "agd_mGy"),
    ))  # fmt: skip
    res.tables.append(Table("fits", "Fitted curves per X-ray set and mode",
                            "AGD = a·exp(b·t), t in mm; r² of the log-linear fit.", fit_df))  # fmt: skip

    # ---- mean dose in thickness bands -----------------------------------------------------
    edges = sorted(float(e) for e in cfg.get("thickness_bands", [20, 30, 40, 50, 60, 70, 80, 90, 100]))
    rows = []
    for s_key, part in sorted(dosed.group_by("cohort"), key=lambda kv: str(kv[0][0])):
        for lo, hi in itertools.pairwise(edges):
            band = part.filter(
                (pl.col("compressed_breast_thickness_mm") >= lo) & (pl.col("compressed_breast_thickness_mm") < hi)
            )
            if band.height:
                rows.append({"x_ray_set": str(s_key[0]), "band": _band_label(lo, hi), "band_low_mm": lo,
                             "n": band.height, "mean_agd_mGy": band.get_column("agd_mGy").mean()})  # fmt: skip
    bands = pl.DataFrame(rows, schema={"x_ray_set": pl.String, "band": pl.String, "band_low_mm": pl.Float64,
                                       "n": pl.Int64, "mean_agd_mGy": pl.Float64})  # fmt: skip
    fig = go.Figure()
    for n, s in enumerate(sorted(bands.get_column("x_ray_set").unique().to_list())):
        p = bands.filter(pl.col("x_ray_set") == s).sort("band_low_mm")
        fig.add_trace(go.Bar(x=p.get_column("band").to_list(), y=p.get_column("mean_agd_mGy").to_list(), name=s,
                             marker_color=color(n), customdata=p.get_column("n").to_list(),
                             hovertemplate="%{x}: %{y:.3f} mGy (n=%{customdata})<extra>" + s + "</extra>"))  # fmt: skip
    order = [_band_label(lo, hi) for lo, hi in itertools.pairwise(edges)]
    fig.update_layout(barmode="group", xaxis_title="Compressed breast thickness band", yaxis_title="Mean AGD (mGy)",
                      template="plotly_white", height=420, yaxis_type="log" if log_axis else "linear",
                      xaxis={"categoryorder": "array", "categoryarray": order})  # fmt: skip
    res.charts.append(Chart(
        "bands", "Mean dose in thickness bands",
        f"Mean AGD of the exposures whose thickness falls in each band [low, high) per X-ray set and mode, bands "
        f"in thickness order; {edges[0]:g}–{edges[-1]:g} mm; exposures outside them or without AGD/thickness are "
        "left out.",
        fig, bands,
    ))  # fmt: skip
    res.numbers["band_means"] = {(r["x_ray_set"], r["band"]): r["mean_agd_mGy"] for r in rows}

    # ---- median per set, mode and view; DRL per mode and view -----------------------------
    med = (dosed.group_by("mode", "x_ray_set", "view").agg(
        pl.len().alias("n"), pl.col("agd_mGy").median().alias("median_agd_mGy"),
        pl.col("compressed_breast_thickness_mm").median().alias("median_thickness_mm"),
    ).sort(pl.col("mode").replace_strict({m: i for i, m in enumerate(MODES)}, default=9), "x_ray_set", "view"))  # fmt: skip
    res.numbers["set_view_medians"] = {(_cohort(r[1], r[0]), r[2]): r[4] for r in med.iter_rows()}
    lo_b, hi_b = (float(v) for v in cfg.get("drl_thickness_band", [50, 60]))
    national_by_mode = {"2D": cfg.get("national_drl_mGy"), "DBT": cfg.get("national_drl_dbt_mGy"),
                        "CE": cfg.get("national_drl_ce_mGy")}  # fmt: skip
    drl_rows = []
    for mode in modes_present:
        in_mode = dosed.filter(pl.col("mode") == mode)
        mviews = sorted(v for v in in_mode.get_column("view").unique().to_list() if v is not None)
        for view in [*mviews, None]:
            part = in_mode if view is None else in_mode.filter(pl.col("view") == view)
            set_meds = part.group_by("x_ray_set").agg(pl.col("agd_mGy").median()).get_column("agd_mGy").to_list()
            band = part.filter(
                (pl.col("compressed_breast_thickness_mm") >= lo_b) & (pl.col("compressed_breast_thickness_mm") < hi_b)
            )
            band_meds = band.group_by("x_ray_set").agg(pl.col("agd_mGy").median()).get_column("agd_mGy").to_list()
            q3 = quantile(set_meds, 0.75)
            q3b = quantile(band_meds, 0.75)
            national = national_by_mode.get(mode)
            drl_rows.append({
                "mode": mode, "view": view or "all views", "sets": len(set_meds), "local_drl_mGy": q3,
                "sets_in_band": len(band_meds), "local_drl_band_mGy": q3b,
                "national_drl_mGy": float(national) if national is not None else None,
                "band_drl_over_national": (q3b / float(national)) if (q3b is not None and national) else None,
            })  # fmt: skip
    drl = pl.DataFrame(drl_rows, schema={"mode": pl.String, "view": pl.String, "sets": pl.Int64,
                                         "local_drl_mGy": pl.Float64, "sets_in_band": pl.Int64,
                                         "local_drl_band_mGy": pl.Float64, "national_drl_mGy": pl.Float64,
                                         "band_drl_over_national": pl.Float64})  # fmt: skip
    res.numbers["drl"] = {(r["mode"], r["view"]): r["local_drl_mGy"] for r in drl_rows}
    res.numbers["drl_band"] = {(r["mode"], r["view"]): r["local_drl_band_mGy"] for r in drl_rows}
    fig = go.Figure()
    cats: list[tuple[str, str]] = [
        (m, str(v))
        for m in modes_present
        for v in sorted(dosed.filter(pl.col("mode") == m).get_column("view").drop_nulls().unique().to_list())
    ]
    labels = [v if m == "2D" else f"{v} ({m})" for m, v in cats]
    for n, s in enumerate(sorted(med.get_column("x_ray_set").unique().to_list())):
        p = med.filter(pl.col("x_ray_set") == s)
        by = {(r[0], r[2]): r[4] for r in p.iter_rows()}
        fig.add_trace(go.Bar(x=labels, y=[by.get(c) for c in cats], name=s, marker_color=color(n)))
    for r in drl_rows:
        cat = (str(r["mode"]), str(r["view"]))
        if cat in cats and r["local_drl_mGy"] is not None:
            i = cats.index(cat)
            fig.add_shape(type="line", x0=i - 0.45, x1=i + 0.45, y0=r["local_drl_mGy"], y1=r["local_drl_mGy"],
                          line={"color": "black", "dash": "dash"})  # fmt: skip
        if cat in cats and r["national_drl_mGy"] is not None:
            i = cats.index(cat)
            fig.add_shape(type="line", x0=i - 0.45, x1=i + 0.45, y0=r["national_drl_mGy"], y1=r["national_drl_mGy"],
                          line={"color": "#c23b3b"})  # fmt: skip
    fig.update_layout(barmode="group", xaxis_title="View (mode)", yaxis_title="Median AGD (mGy)",
                      template="plotly_white", height=420, yaxis_type="log" if log_axis else "linear")  # fmt: skip
    res.charts.append(Chart(
        "median-set-view", "Median dose per X-ray set and view; diagnostic reference level",
        "Bars: median AGD of each set's exposures of a view (all thicknesses), 2D, DBT and CE apart. Dashed: "
        "local DRL = third quartile (linear interpolation) of the set medians of that view and mode. Red: the "
        f"configured national DRL of that mode (for {lo_b:g}–{hi_b:g} mm breasts; compare with the band DRL in "
        "the table; none drawn for a mode without one).",
        fig, med,
    ))  # fmt: skip
    res.tables.append(Table("median-set-view", "Median dose per X-ray set, mode and view",
                            "Exposures with AGD and thickness, none flagged as an error.", med))  # fmt: skip
    res.tables.append(Table("drl", "Diagnostic reference levels",
                            f"Per acquisition mode: local DRL = Q3 of X-ray set medians; band DRL uses only "
                            f"exposures of {lo_b:g}–{hi_b:g} mm; the national DRL of the mode from the settings "
                            "(national_drl_mGy for 2D, national_drl_dbt_mGy, national_drl_ce_mGy).", drl))  # fmt: skip
    res.tables.append(Table("excluded", "Excluded values",
                            "Values left out of every statistic because curation flags them as errors (rule: a "
                            "quality_flags row of severity 'error' on the exposure's image, or on its dose SR "
                            "naming the event). The exposure's other values still count.",
                            excluded))  # fmt: skip

    trend = trend_chart(dosed, "StudyDate", "cohort", "agd_mGy", "Median AGD per exposure (mGy)",
                        (settings or load_settings()).get("trends", {}))  # fmt: skip
    if trend is not None:
        res.charts.append(trend[0])
        res.tables.append(trend[1])

    # ---- compression force ----------------------------------------------------------------
    forced = df.filter(pl.col("compression_force_N").is_not_null())
    comp_site = forced.group_by("site", "view").agg(
        pl.len().alias("n"), pl.col("compression_force_N").median().alias("median_N"),
        pl.col("compression_force_N").quantile(0.25, "linear").alias("q1_N"),
        pl.col("compression_force_N").quantile(0.75, "linear").alias("q3_N"),
    ).sort("site", "view")  # fmt: skip
    comp_op = forced.group_by("operator", "view").agg(
        pl.len().alias("n"), pl.col("compression_force_N").median().alias("median_N"),
    ).sort("operator", "view", nulls_last=True)  # fmt: skip
    res.numbers["compression_median_by_site_view"] = {(r[0], r[1]): r[3] for r in comp_site.iter_rows()}
    fig = go.Figure()
    for n, view in enumerate(sorted(v for v in forced.get_column("view").unique().to_list() if v is not None)):
        p = forced.filter(pl.col("view") == view)
        fig.add_trace(go.Box(x=p.get_column("site").to_list(), y=p.get_column("compression_force_N").to_list(),
                             name=view, marker_color=color(n), boxpoints="outliers"))  # fmt: skip
    fig.update_layout(boxmode="group", xaxis_title="Site", yaxis_title="Compression force (N)",
                      template="plotly_white", height=420)  # fmt: skip
    res.charts.append(Chart(
        "compression-site", "Compression force by site and view",
        f"{forced.height:,} exposures with a compression force ({df.height - forced.height:,} without one left "
        "out; GE Pristina RDSRs, for one, do not record it).",
        fig, forced.select("site", "x_ray_set", "view", "operator", "compression_force_N"),
    ))  # fmt: skip
    fig = go.Figure()
    for n, view in enumerate(sorted(v for v in forced.get_column("view").unique().to_list() if v is not None)):
        p = forced.filter(pl.col("view") == view)
        fig.add_trace(go.Box(x=[o or "unknown" for o in p.get_column("operator").to_list()],
                             y=p.get_column("compression_force_N").to_list(), name=view, marker_color=color(n)))  # fmt: skip
    fig.update_layout(boxmode="group", xaxis_title="Operator (pseudonym)", yaxis_title="Compression force (N)",
                      template="plotly_white", height=420)  # fmt: skip
    res.charts.append(Chart(
        "compression-operator", "Compression force by operator and view",
        "Operators' Name (0008,1070) replaced by a keyed pseudonym; exposures without an operator are "
        "shown as 'unknown'.", fig, comp_op,
    ))  # fmt: skip
    res.tables.append(Table("compression-site", "Compression force by site and view",
                            "Median and quartiles (linear interpolation).", comp_site))  # fmt: skip
    res.tables.append(Table("compression-operator", "Compression force by operator and view",
                            "Pseudonymised operators.", comp_op))  # fmt: skip
    res.tables.insert(0, Table("exposures", "Exposures", "Every exposure in the selection.", df))
    if math.isfinite(float(res.numbers.get("exposures", 0))) and not df.height:
        res.notes.append("No mammography exposures in the selection.")
    return res
