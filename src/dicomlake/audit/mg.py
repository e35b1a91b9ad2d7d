"""Mammography dose and compression audit (``dicomlake audit mg-dose``).

Per exposure, from the Radiation Dose SR where the study has one (TID 10001/10003 with the
mammography rows of TID 10005) and from the image header otherwise (Organ Dose, Body Part
Thickness, Compression Force): average glandular dose (AGD), compressed breast thickness,
compression force, kVp, target/filter, view, laterality, X-ray set, site and operator.
"""

from __future__ import annotations

import itertools
import math

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
from dicomlake.query.lake import Lake


def exposures(lake: Lake, selection: Selection) -> pl.DataFrame:
    """One row per mammography exposure; RDSR events win over image headers of the same study."""
    cond, params = selection.sql(lake, "s")
    sql = f"""
    WITH sel AS (SELECT * FROM {std_instances(lake)} s WHERE {cond}),
    ev AS (
      SELECT d.*, s.StudyDate, s.institution_std, s.station_std, s.StationName, s.Manufacturer,
             s.ManufacturerModelName, s.DeviceSerialNumber,
             coalesce(s.OperatorsName, (SELECT any_value(x.OperatorsName) FROM instances x
                       WHERE x.StudyInstanceUID = d.StudyInstanceUID AND x.OperatorsName IS NOT NULL)) AS OperatorsName
      FROM dose_events d JOIN sel s USING (SOPInstanceUID)
      WHERE d.modality_family = 'MG' AND d.record = 'event'),
    rdsr AS (SELECT DISTINCT StudyInstanceUID FROM ev WHERE source = 'rdsr')
    SELECT SOPInstanceUID, StudyInstanceUID, StudyDate, event_datetime, source,
           coalesce(institution_std, 'unknown site') AS site,
           coalesce(station_std, device_observer_name,
                    nullif(trim(coalesce(ManufacturerModelName, '') || ' ' || coalesce(DeviceSerialNumber, '')), ''),
                    'unknown set') AS x_ray_set,
           Manufacturer, ManufacturerModelName, view, laterality, agd_mGy,
           compressed_breast_thickness_mm, compression_force_N, kvp, anode_target, filter_material,
           OperatorsName
    FROM ev WHERE source = 'rdsr' OR StudyInstanceUID NOT IN (SELECT StudyInstanceUID FROM rdsr)
    -- one exposure stored as FOR PROCESSING and FOR PRESENTATION images counts once
    QUALIFY source = 'rdsr' OR row_number() OVER (
        PARTITION BY StudyInstanceUID, coalesce(IrradiationEventUID, CAST(event_datetime AS VARCHAR)
                     || coalesce(laterality, '') || coalesce(view, '') || CAST(agd_mGy AS VARCHAR))
        ORDER BY SOPInstanceUID) = 1
    ORDER BY event_datetime, SOPInstanceUID"""
    df = lake.sql(sql, params)
    ops = OperatorPseudonyms()
    df = ops.column(df).drop("OperatorsName")
    tf = [
        f"{(a or '?').title()}/{(f or '?').title()}"
        for a, f in zip(
            df.get_column("anode_target").to_list(), df.get_column("filter_material").to_list(), strict=True
        )
    ]
    return df.with_columns(pl.Series("target_filter", tf, dtype=pl.String))


def _band_label(lo: float, hi: float) -> str:
    return f"{lo:g}–{hi:g} mm"


def audit_mg_dose(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    """The mammography dose audit: fits, bands, medians, DRL and compression force."""
    import plotly.graph_objects as go

    selection = selection or Selection()
    cfg = (settings or load_settings()).get("mg", {})
    df = exposures(lake, selection)
    res = AuditResult(
        name="mg-dose", title="Mammography dose and compression audit",
        selection=selection.sentence("mammography exposures", df.height, lake.store.lake)
        + " One row per exposure: from the Radiation Dose SR where the study has one, else the image header.",
        all_data=df, sheets_by="x_ray_set",
    )  # fmt: skip
    ops_note = OperatorPseudonyms().note
    if ops_note:
        res.notes.append(ops_note)
    dosed = df.filter(pl.col("agd_mGy").is_not_null() & pl.col("compressed_breast_thickness_mm").is_not_null())
    excluded = df.height - dosed.height
    res.numbers.update({"exposures": df.height, "exposures_with_dose_and_thickness": dosed.height,
                        "x_ray_sets": dosed.get_column("x_ray_set").n_unique() if dosed.height else 0})  # fmt: skip

    # ---- dose against thickness, fitted per set --------------------------------------------
    fits = []
    fig = go.Figure()
    for n, (key, part) in enumerate(sorted(dosed.group_by("x_ray_set"), key=lambda kv: str(kv[0][0]))):
        s = str(key[0])
        t = part.get_column("compressed_breast_thickness_mm").to_list()
        d = part.get_column("agd_mGy").to_list()
        fig.add_trace(go.Scatter(x=t, y=d, mode="markers", name=s, marker={"color": color(n), "size": 6, "opacity": 0.7},
                                 text=part.get_column("view").to_list(),
                                 hovertemplate="%{x} mm, %{y:.3f} mGy, %{text}<extra>" + s + "</extra>"))  # fmt: skip
        fit = fit_exponential(t, d)
        if fit is not None:
            fits.append({"x_ray_set": s, "n": fit.n, "a_mGy": fit.a, "b_per_mm": fit.b, "r2": fit.r2})
            xs = [min(t) + (max(t) - min(t)) * k / 40 for k in range(41)]
            fig.add_trace(go.Scatter(x=xs, y=[fit(x) for x in xs], mode="lines", name=f"{s} fit",
                                     line={"color": color(n)}, hoverinfo="skip"))  # fmt: skip
    fig.update_layout(xaxis_title="Compressed breast thickness (mm)", yaxis_title="Average glandular dose (mGy)",
                      template="plotly_white", height=480)  # fmt: skip
    fit_df = pl.DataFrame(fits, schema={"x_ray_set": pl.String, "n": pl.Int64, "a_mGy": pl.Float64,
                                        "b_per_mm": pl.Float64, "r2": pl.Float64})  # fmt: skip
    res.numbers["fits"] = {f["x_ray_set"]: (f["a_mGy"], f["b_per_mm"]) for f in fits}
    res.charts.append(Chart(
        "dose-vs-thickness", "Average glandular dose against compressed breast thickness",
        f"Each point is one exposure ({dosed.height:,} with both AGD and thickness; {excluded:,} without one "
        "of them left out). Lines: AGD = a·exp(b·thickness), least squares on log AGD, per X-ray set "
        "(sets with fewer than 3 exposures are not fitted).",
        fig, dosed.select("x_ray_set", "view", "compressed_breast_thickness_mm", "agd_mGy"),
    ))  # fmt: skip
    res.tables.append(Table("fits", "Fitted curves per X-ray set",
                            "AGD = a·exp(b·t), t in mm; r² of the log-linear fit.", fit_df))  # fmt: skip

    # ---- mean dose in thickness bands -----------------------------------------------------
    edges = [float(e) for e in cfg.get("thickness_bands", [20, 30, 40, 50, 60, 70, 80, 90, 100])]
    rows = []
    for s_key, part in sorted(dosed.group_by("x_ray_set"), key=lambda kv: str(kv[0][0])):
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
    fig.update_layout(barmode="group", xaxis_title="Compressed breast thickness band", yaxis_title="Mean AGD (mGy)",
                      template="plotly_white", height=420)  # fmt: skip
    res.charts.append(Chart(
        "bands", "Mean dose in thickness bands",
        f"Mean AGD of the exposures whose thickness falls in each band [low, high) per X-ray set; bands "
        f"{edges[0]:g}–{edges[-1]:g} mm; exposures outside them or without AGD/thickness are left out.",
        fig, bands,
    ))  # fmt: skip
    res.numbers["band_means"] = {(r["x_ray_set"], r["band"]): r["mean_agd_mGy"] for r in rows}

    # ---- median per set and view; DRL -----------------------------------------------------
    med = (dosed.group_by("x_ray_set", "view").agg(
        pl.len().alias("n"), pl.col("agd_mGy").median().alias("median_agd_mGy"),
        pl.col("compressed_breast_thickness_mm").median().alias("median_thickness_mm"),
    ).sort("x_ray_set", "view"))  # fmt: skip
    res.numbers["set_view_medians"] = {(r[0], r[1]): r[3] for r in med.iter_rows()}
    lo_b, hi_b = (float(v) for v in cfg.get("drl_thickness_band", [50, 60]))
    national = cfg.get("national_drl_mGy")
    drl_rows = []
    for view in [*sorted(v for v in med.get_column("view").unique().to_list() if v is not None), None]:
        part = dosed if view is None else dosed.filter(pl.col("view") == view)
        set_meds = part.group_by("x_ray_set").agg(pl.col("agd_mGy").median()).get_column("agd_mGy").to_list()
        band = part.filter(
            (pl.col("compressed_breast_thickness_mm") >= lo_b) & (pl.col("compressed_breast_thickness_mm") < hi_b)
        )
        band_meds = band.group_by("x_ray_set").agg(pl.col("agd_mGy").median()).get_column("agd_mGy").to_list()
        q3 = quantile(set_meds, 0.75)
        q3b = quantile(band_meds, 0.75)
        drl_rows.append({
            "view": view or "all views", "sets": len(set_meds), "local_drl_mGy": q3,
            "sets_in_band": len(band_meds), "local_drl_band_mGy": q3b,
            "national_drl_mGy": national,
            "band_drl_over_national": (q3b / national) if (q3b is not None and national) else None,
        })  # fmt: skip
    drl = pl.DataFrame(drl_rows, schema={"view": pl.String, "sets": pl.Int64, "local_drl_mGy": pl.Float64,
                                         "sets_in_band": pl.Int64, "local_drl_band_mGy": pl.Float64,
                                         "national_drl_mGy": pl.Float64, "band_drl_over_national": pl.Float64})  # fmt: skip
    res.numbers["drl"] = {r["view"]: r["local_drl_mGy"] for r in drl_rows}
    res.numbers["drl_band"] = {r["view"]: r["local_drl_band_mGy"] for r in drl_rows}
    fig = go.Figure()
    views = sorted(v for v in med.get_column("view").unique().to_list() if v is not None)
    for n, s in enumerate(sorted(med.get_column("x_ray_set").unique().to_list())):
        p = med.filter(pl.col("x_ray_set") == s)
        by = {r[1]: r[3] for r in p.iter_rows()}
        fig.add_trace(go.Bar(x=views, y=[by.get(v) for v in views], name=s, marker_color=color(n)))
    for r in drl_rows:
        if r["view"] in views and r["local_drl_mGy"] is not None:
            i = views.index(r["view"])
            fig.add_shape(type="line", x0=i - 0.45, x1=i + 0.45, y0=r["local_drl_mGy"], y1=r["local_drl_mGy"],
                          line={"color": "black", "dash": "dash"})  # fmt: skip
    if national:
        fig.add_hline(y=national, line={"color": "#c23b3b"}, annotation_text=f"national DRL {national:g} mGy")
    fig.update_layout(barmode="group", xaxis_title="View", yaxis_title="Median AGD (mGy)", template="plotly_white",
                      height=420)  # fmt: skip
    res.charts.append(Chart(
        "median-set-view", "Median dose per X-ray set and view; diagnostic reference level",
        "Bars: median AGD of each set's exposures of a view (all thicknesses). Dashed: local DRL = third "
        "quartile (linear interpolation) of the set medians of that view. Red: the configured national DRL "
        f"(for {lo_b:g}–{hi_b:g} mm breasts; compare with the band DRL in the table).",
        fig, med,
    ))  # fmt: skip
    res.tables.append(Table("median-set-view", "Median dose per X-ray set and view",
                            "Exposures with AGD and thickness.", med))  # fmt: skip
    res.tables.append(Table("drl", "Diagnostic reference levels",
                            f"Local DRL = Q3 of X-ray set medians; band DRL uses only exposures of "
                            f"{lo_b:g}–{hi_b:g} mm.", drl))  # fmt: skip

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
