"""CT and projection X-ray dose audits (``ct-dose``, ``dx-dose``, ``rf-dose``): medians by
standardised protocol and scanner/room, local DRLs (third quartile of scanner medians),
national DRLs and alerts above configured thresholds."""

from __future__ import annotations

import itertools
from typing import Any

import polars as pl

from dicomlake.audit import drl as drl_rules
from dicomlake.audit.common import (
    Selection,
    color,
    load_settings,
    quantile,
    std_expr,
    std_instances,
)
from dicomlake.audit.report import AuditResult, Chart, Table
from dicomlake.audit.trends import trend_chart
from dicomlake.events import distinct_events_sql, study_totals
from dicomlake.query.lake import Lake


def _events(lake: Lake, selection: Selection, families: tuple[str, ...]) -> pl.DataFrame:
    cond, params = selection.sql(lake, "s")
    fam = ", ".join(f"'{f}'" for f in families)
    sql = f"""
    WITH sel AS (SELECT * FROM {std_instances(lake)} s WHERE {cond}),
    ev AS (
      SELECT d.*, s.StudyDate, s.study_description_std, s.institution_std,
             CAST(s.PatientWeight AS DOUBLE) AS PatientWeight,
             coalesce(s.station_std, d.device_observer_name,
                      nullif(trim(coalesce(s.ManufacturerModelName, '') || ' ' || coalesce(s.DeviceSerialNumber, '')), ''),
                      'unknown') AS scanner,
             {std_expr(lake, "protocol", "coalesce(d.acquisition_protocol, s.ProtocolName, s.SeriesDescription)")} AS protocol
      FROM ({distinct_events_sql()}) d JOIN sel s USING (SOPInstanceUID)
      WHERE d.modality_family IN ({fam})),
    rdsr AS (SELECT DISTINCT StudyInstanceUID FROM ev WHERE source = 'rdsr')
    SELECT * FROM ev WHERE source = 'rdsr' OR StudyInstanceUID NOT IN (SELECT StudyInstanceUID FROM rdsr)
    ORDER BY StudyDate, event_datetime, SOPInstanceUID, IrradiationEventUID"""
    return lake.sql(sql, params).drop("_copy")


def judge(df: pl.DataFrame, name: str, value: str, rules: list[drl_rules.Rule], key: str) -> pl.DataFrame:
    """Add the DRL each row is judged against: ``drl_rule``, ``national_drl``, ``over_national``
    and ``drl_match`` (why this rule, or why none: no match, ambiguous)."""
    got = [drl_rules.match(rules, n, key) for n in df.get_column(name).to_list()]
    vals = df.get_column(value).to_list()
    return df.with_columns(
        pl.Series("drl_rule", [m.rule for m in got], dtype=pl.String),
        pl.Series(f"national_drl_{key}", [m.value for m in got], dtype=pl.Float64),
        pl.Series(f"over_national_{key}", [(v / m.value) if (v is not None and m.value) else None
                                          for v, m in zip(vals, got, strict=True)], dtype=pl.Float64),
        pl.Series("drl_match", [m.note for m in got], dtype=pl.String),
    )  # fmt: skip


def _stats_by(df: pl.DataFrame, group: str, room: str, value: str, unit: str, national: list[drl_rules.Rule],
              national_key: str) -> tuple[pl.DataFrame, pl.DataFrame]:  # fmt: skip
    """Medians per (group, room) and the DRL table per group."""
    part = df.filter(pl.col(value).is_not_null())
    med = part.group_by(group, room).agg(
        pl.len().alias("n"), pl.col(value).median().alias(f"median_{unit}"), pl.col(value).mean().alias(f"mean_{unit}"),
    ).sort(group, room, nulls_last=True)  # fmt: skip
    rows = []
    for key in sorted({g for g in med.get_column(group).to_list()}, key=lambda x: (x is None, str(x))):
        meds = (
            med.filter(pl.col(group).is_null() if key is None else pl.col(group) == key)
            .get_column(f"median_{unit}")
            .to_list()
        )
        q3 = quantile(meds, 0.75)
        m = drl_rules.match(national, key, national_key)
        nat = m.value
        rows.append({group: key, "rooms": len(meds), f"local_drl_{unit}": q3, "drl_rule": m.rule,
                     f"national_drl_{unit}": nat, "local_over_national": (q3 / nat) if (q3 is not None and nat) else None,
                     "drl_match": m.note})  # fmt: skip
    table = pl.DataFrame(rows, schema={group: pl.String, "rooms": pl.Int64, f"local_drl_{unit}": pl.Float64,
                                       "drl_rule": pl.String, f"national_drl_{unit}": pl.Float64,
                                       "local_over_national": pl.Float64, "drl_match": pl.String})  # fmt: skip
    return med, table


def _cumulative_alerts(events: pl.DataFrame, studies: pl.DataFrame, cfg: dict[str, Any]) -> pl.DataFrame:
    """Per patient and study: the DAP and dose (RP) totals of the patient's studies in the window
    ending on that study's date, where one of them exceeds its cumulative threshold."""
    from dicomlake.audit.common import OperatorPseudonyms

    window = int(cfg.get("cumulative_window_days", 84))
    a_dap = float(cfg.get("alert_cumulative_dap_cGycm2", 10000))
    a_rp = float(cfg.get("alert_cumulative_dose_rp_mGy", 3000))
    pid = events.group_by("StudyInstanceUID").agg(pl.col("PatientID").drop_nulls().first())
    st = studies.join(pid, on="StudyInstanceUID", how="left").filter(
        pl.col("PatientID").is_not_null() & pl.col("StudyDate").is_not_null()
    ).sort("PatientID", "StudyDate", "StudyInstanceUID")  # fmt: skip
    pseud = OperatorPseudonyms()
    rows = []
    for (patient,), part in st.group_by("PatientID", maintain_order=True):
        recs = part.select("StudyInstanceUID", "StudyDate", "dap_total_cGycm2", "dose_rp_total_mGy").rows()
        for uid, day, _dap, _rp in recs:
            inside = [r for r in recs if 0 <= (day - r[1]).days < window]
            dap = sum(r[2] or 0.0 for r in inside)
            rp = sum(r[3] or 0.0 for r in inside)
            if dap > a_dap or rp > a_rp:
                rows.append({"patient": pseud.patient(str(patient)), "StudyInstanceUID": uid, "StudyDate": day,
                             "studies_in_window": len(inside), "cumulative_dap_cGycm2": dap,
                             "cumulative_dose_rp_mGy": rp,
                             "exceeds": ", ".join(q for q, hit in (("DAP", dap > a_dap), ("dose (RP)", rp > a_rp)) if hit)})  # fmt: skip
    return pl.DataFrame(rows, schema={"patient": pl.String, "StudyInstanceUID": pl.String, "StudyDate": pl.Date,
                                      "studies_in_window": pl.Int64, "cumulative_dap_cGycm2": pl.Float64,
                                      "cumulative_dose_rp_mGy": pl.Float64, "exceeds": pl.String})  # fmt: skip


def _bar(med: pl.DataFrame, group: str, room: str, ycol: str, ytitle: str, drl: pl.DataFrame | None = None,
         drl_col: str | None = None, log_axis: bool = False) -> Any:  # fmt: skip
    """Grouped bars of the medians per group and room; ``log_axis`` keeps outliers readable."""
    import plotly.graph_objects as go

    fig = go.Figure()
    cats = sorted({str(g) for g in med.get_column(group).to_list()})
    for n, r in enumerate(sorted({str(x) for x in med.get_column(room).to_list()})):
        p = med.filter(pl.col(room).cast(pl.String) == r)
        by = {str(a): b for a, b in zip(p.get_column(group).to_list(), p.get_column(ycol).to_list(), strict=True)}
        fig.add_trace(go.Bar(x=cats, y=[by.get(c) for c in cats], name=r, marker_color=color(n)))
    if drl is not None and drl_col:
        fig.add_trace(go.Scatter(x=[str(g) for g in drl.get_column(group).to_list()], y=drl.get_column(drl_col).to_list(),
                                 mode="markers", name="local DRL (Q3 of room medians)",
                                 marker={"symbol": "line-ew-open", "size": 30, "color": "black", "line": {"width": 3}}))  # fmt: skip
    fig.update_layout(barmode="group", yaxis_title=ytitle, template="plotly_white", height=440,
                      yaxis_type="log" if log_axis else "linear")  # fmt: skip
    return fig


def audit_ct_dose(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    """CTDIvol per irradiation event and DLP per study, by protocol and scanner."""
    selection = selection or Selection()
    cfg = (settings or load_settings()).get("ct", {})
    ev = _events(lake, selection, ("CT",))
    events = ev.filter(pl.col("record") == "event")
    acc = ev.filter(pl.col("record") == "accumulated")
    studies = (events.group_by("StudyInstanceUID").agg(
        pl.col("StudyDate").first(), pl.col("study_description_std").first(), pl.col("scanner").first(),
        pl.len().alias("events"), pl.col("CTDIvol_mGy").max().alias("max_CTDIvol_mGy"),
        pl.col("PatientWeight").drop_nulls().first().alias("PatientWeight"),
    ).join(study_totals(events, acc, "DLP_mGycm", "ct_dose_length_product_total_mGycm", "DLP_total_mGycm"),
           on="StudyInstanceUID", how="left")
     .sort("StudyDate", "StudyInstanceUID", nulls_last=True))  # fmt: skip
    res = AuditResult(
        name="ct-dose", title="CT dose audit",
        selection=selection.sentence("CT irradiation events", events.height, lake.store.lake)
        + f" {studies.height:,} studies. From the CT Radiation Dose SR (TID 10011) where the study has one, "
        "else the image headers (CTDIvol only).",
        all_data=events.select("StudyInstanceUID", "StudyDate", "scanner", "study_description_std", "protocol",
                               "ct_acquisition_type", "CTDIvol_mGy", "DLP_mGycm", "phantom", "source", "SOPInstanceUID",
                               "IrradiationEventUID"),
        sheets_by="protocol",
    )  # fmt: skip
    nat = drl_rules.parse_rules(list(cfg.get("drl", [])), "ct")
    studies = judge(studies, "study_description_std", "DLP_total_mGycm", nat, "DLP_mGycm")
    # localisers (no CTDIvol, or a constant-angle acquisition) are not compared with DRLs
    events = events.with_columns(
        ((pl.col("CTDIvol_mGy").fill_null(1.0) == 0)
         | pl.col("ct_acquisition_type").fill_null("").str.to_lowercase().str.starts_with("constant angle")).alias("localiser")
    )  # fmt: skip
    n_loc = events.filter(pl.col("localiser")).height
    # CTDIvol is measured in a 16 cm (head) or 32 cm (body) phantom: never pooled
    events = events.with_columns(
        pl.when(pl.col("phantom").is_not_null())
        .then(pl.col("protocol").fill_null("(none)") + pl.lit(" [") + pl.col("phantom") + pl.lit(" cm phantom]"))
        .otherwise(pl.col("protocol"))
        .alias("protocol")
    )
    res.all_data = res.all_data.with_columns(events.get_column("localiser")) if res.all_data is not None else None
    med_ev, drl_ev = _stats_by(events.filter(~pl.col("localiser")), "protocol", "scanner", "CTDIvol_mGy", "CTDIvol_mGy",
                               nat, "CTDIvol_mGy")  # fmt: skip
    med_st, drl_st = _stats_by(
        studies, "study_description_std", "scanner", "DLP_total_mGycm", "DLP_mGycm", nat, "DLP_mGycm"
    )
    res.numbers.update({"events": events.height, "studies": studies.height, "localisers": n_loc})
    res.numbers["study_drl"] = {r["StudyInstanceUID"]: (r["drl_rule"], r["national_drl_DLP_mGycm"])
                                for r in studies.to_dicts()}  # fmt: skip
    res.numbers["median_CTDIvol"] = {(r[0], r[1]): r[3] for r in med_ev.iter_rows()}
    res.numbers["median_DLP"] = {(r[0], r[1]): r[3] for r in med_st.iter_rows()}
    res.numbers["drl_CTDIvol"] = dict(
        zip(drl_ev.get_column("protocol").to_list(), drl_ev.get_column("local_drl_CTDIvol_mGy").to_list(), strict=True)
    )
    res.numbers["drl_DLP"] = dict(
        zip(
            drl_st.get_column("study_description_std").to_list(),
            drl_st.get_column("local_drl_DLP_mGycm").to_list(),
            strict=True,
        )
    )
    # patient size: DLP by study description and weight band where the weight is recorded
    edges = sorted(float(e) for e in cfg.get("weight_bands_kg", [50, 70, 90]))
    bands = [f"< {edges[0]:g} kg"] + [f"{a:g}–{b:g} kg" for a, b in itertools.pairwise(edges)] + [f"≥ {edges[-1]:g} kg"]

    def band(w: float | None) -> str | None:
        if w is None or w <= 0:
            return None
        return bands[sum(1 for e in edges if w >= e)]

    studies = studies.with_columns(
        pl.Series("weight_band", [band(w) for w in studies.get_column("PatientWeight").to_list()], dtype=pl.String)
    )
    by_size = (
        studies.filter(pl.col("weight_band").is_not_null() & pl.col("DLP_total_mGycm").is_not_null())
        .group_by("study_description_std", "weight_band")
        .agg(pl.len().alias("n"), pl.col("DLP_total_mGycm").median().alias("median_DLP_mGycm"))
        .sort("study_description_std", pl.col("weight_band").replace_strict({b: i for i, b in enumerate(bands)}),
              nulls_last=True)
    )  # fmt: skip
    res.numbers["studies_with_weight"] = studies.filter(pl.col("weight_band").is_not_null()).height
    a_ct, a_dlp = float(cfg.get("alert_CTDIvol_mGy", 80)), float(cfg.get("alert_DLP_mGycm", 2000))
    alerts = pl.concat([
        events.filter(pl.col("CTDIvol_mGy") > a_ct).select(
            pl.col("StudyInstanceUID"), pl.col("StudyDate"), pl.col("scanner"), pl.col("protocol").alias("what"),
            pl.lit("CTDIvol_mGy").alias("quantity"), pl.col("CTDIvol_mGy").alias("value"), pl.lit(a_ct).alias("threshold")),
        studies.filter(pl.col("DLP_total_mGycm") > a_dlp).select(
            pl.col("StudyInstanceUID"), pl.col("StudyDate"), pl.col("scanner"), pl.col("study_description_std").alias("what"),
            pl.lit("DLP_total_mGycm").alias("quantity"), pl.col("DLP_total_mGycm").alias("value"), pl.lit(a_dlp).alias("threshold")),
    ], how="vertical_relaxed")  # fmt: skip
    res.numbers["alerts"] = alerts.height
    n_no = events.filter(pl.col("CTDIvol_mGy").is_null()).height
    res.charts.append(Chart(
        "ctdivol", "Median CTDIvol by acquisition protocol and scanner",
        f"Irradiation events with a CTDIvol; {n_loc:,} localisers (CTDIvol 0 or a constant-angle acquisition) and "
        f"{n_no:,} events without CTDIvol left out, so no localiser is compared with a DRL. "
        "Protocols are standardised names where a mapping is confirmed. Black marks: local DRL.",
        _bar(med_ev, "protocol", "scanner", "median_CTDIvol_mGy", "Median CTDIvol (mGy)", drl_ev,
             "local_drl_CTDIvol_mGy", bool(cfg.get("log_axis"))),
        med_ev,
    ))  # fmt: skip
    res.charts.append(Chart(
        "dlp", "Median total DLP per study by study description and scanner",
        "Total DLP: the SR's CT Dose Length Product Total, else the sum of the events' DLP. Studies whose events "
        "carry no DLP (header-only) are left out.",
        _bar(med_st, "study_description_std", "scanner", "median_DLP_mGycm", "Median DLP (mGy·cm)", drl_st,
             "local_drl_DLP_mGycm", bool(cfg.get("log_axis"))),
        med_st,
    ))  # fmt: skip
    trend = trend_chart(studies, "StudyDate", "scanner", "DLP_total_mGycm", "Median total DLP per study (mGy·cm)",
                        (settings or load_settings()).get("trends", {}))  # fmt: skip
    if trend is not None:
        res.charts.append(trend[0])
        res.tables.append(trend[1])
    res.tables += [
        Table("ctdivol", "CTDIvol by protocol and scanner", "Median and mean per irradiation event.", med_ev),
        Table(
            "drl-ctdivol",
            "CTDIvol DRLs by protocol",
            "Local DRL = Q3 of scanner medians; national from settings.",
            drl_ev,
        ),
        Table("dlp", "Total DLP by study description and scanner", "Per study.", med_st),
        Table(
            "dlp-by-size",
            "Total DLP by study description and patient weight",
            f"Studies with a Patient's Weight (0010,1030), in bands of {', '.join(bands)} (settings [ct] "
            "weight_bands_kg); CTDIvol is split by the CTDI phantom (16 cm head, 32 cm body) in the tables "
            "above.",
            by_size,
        ),
        Table("drl-dlp", "DLP DRLs by study description", "Local DRL = Q3 of scanner medians.", drl_st),
        Table("alerts", "Alerts", f"Events above {a_ct:g} mGy CTDIvol; studies above {a_dlp:g} mGy·cm DLP.", alerts),
        Table(
            "studies",
            "Studies",
            "One row per study: each irradiation event once (several dose SRs of a study "
            "share their events), the DLP total from the accumulated data of the reports that no later report "
            "supersedes (DLP_total_mGycm_from), and the national DRL rule it is judged against (drl_rule, "
            "drl_match: most specific rule first; an ambiguous description is not judged).",
            studies,
        ),
    ]
    return res


def audit_projection_dose(lake: Lake, family: str, selection: Selection | None = None,
                          settings: dict | None = None) -> AuditResult:  # fmt: skip
    """DX (radiography) or RF (fluoroscopy) dose: DAP and dose at the reference point."""
    selection = selection or Selection()
    key = family.lower()
    cfg = (settings or load_settings()).get(key, {})
    ev = _events(lake, selection, (family.upper(),))
    events = ev.filter(pl.col("record") == "event").with_columns(
        (pl.col("dap_Gym2") * 1e6).alias("dap_cGycm2"), (pl.col("dose_rp_Gy") * 1e3).alias("dose_rp_mGy")
    )
    acc = ev.filter(pl.col("record") == "accumulated")
    studies = (events.group_by("StudyInstanceUID").agg(
        pl.col("StudyDate").first(), pl.col("study_description_std").first(), pl.col("scanner").first(),
        pl.len().alias("events"),
    ).join(study_totals(events, acc, "dap_Gym2", "dap_total_Gym2", "dap_total_cGycm2", 1e6), on="StudyInstanceUID", how="left")
     .join(study_totals(events, acc, "dose_rp_Gy", "dose_rp_total_Gy", "dose_rp_total_mGy", 1e3), on="StudyInstanceUID", how="left")
     .join(acc.group_by("StudyInstanceUID", "SOPInstanceUID").agg(pl.col("total_fluoro_time_s").max())
           .group_by("StudyInstanceUID").agg(pl.when(pl.col("total_fluoro_time_s").is_not_null().any())
                                                 .then(pl.col("total_fluoro_time_s").sum()).alias("fluoro_time_s")),
           on="StudyInstanceUID", how="left")
     .sort("StudyDate", "StudyInstanceUID", nulls_last=True))  # fmt: skip
    label = {"dx": "Radiography (DX/CR)", "rf": "Fluoroscopy (RF)"}.get(key, family)
    nat = drl_rules.parse_rules(list(cfg.get("drl", [])), key)
    if key == "rf":
        studies = judge(studies, "study_description_std", "dap_total_cGycm2", nat, "dap_cGycm2")
        data, group, value = studies, "study_description_std", "dap_total_cGycm2"
        what = "per study (total DAP: the SR's Dose Area Product Total, else the sum of events)"
    else:
        data, group, value = events, "protocol", "dap_cGycm2"
        what = "per irradiation event (image)"
    med, drl = _stats_by(data, group, "scanner", value, "dap_cGycm2", nat, "dap_cGycm2")
    res = AuditResult(
        name=f"{key}-dose", title=f"{label} dose audit",
        selection=selection.sentence(f"{family.upper()} irradiation events", events.height, lake.store.lake)
        + f" {studies.height:,} studies; from the X-Ray Radiation Dose SR (TID 10001) where the study has one, else image headers.",
        all_data=events.select("StudyInstanceUID", "StudyDate", "scanner", "study_description_std", "protocol",
                               "irradiation_event_type", "dap_cGycm2", "dose_rp_mGy", "kvp", "exposure_mAs", "source",
                               "SOPInstanceUID"),
        sheets_by="protocol",
    )  # fmt: skip
    res.numbers.update({"events": events.height, "studies": studies.height})
    res.numbers["median_dap"] = {(r[0], r[1]): r[3] for r in med.iter_rows()}
    res.numbers["drl_dap"] = dict(
        zip(drl.get_column(group).to_list(), drl.get_column("local_drl_dap_cGycm2").to_list(), strict=True)
    )
    a_dap = float(cfg.get("alert_dap_cGycm2", 500))
    alerts = data.filter(pl.col(value) > a_dap).select(
        "StudyInstanceUID", "StudyDate", "scanner", pl.col(group).alias("what"), pl.lit(value).alias("quantity"),
        pl.col(value).alias("value"), pl.lit("cGy·cm²").alias("unit"), pl.lit(a_dap).alias("threshold"))  # fmt: skip
    if key == "rf" and "alert_dose_rp_mGy" in cfg:
        a_rp = float(cfg["alert_dose_rp_mGy"])
        alerts = pl.concat([alerts, studies.filter(pl.col("dose_rp_total_mGy") > a_rp).select(
            "StudyInstanceUID", "StudyDate", "scanner", pl.col(group).alias("what"),
            pl.lit("dose_rp_total_mGy").alias("quantity"), pl.col("dose_rp_total_mGy").alias("value"),
            pl.lit("mGy").alias("unit"), pl.lit(a_rp).alias("threshold"))], how="vertical_relaxed")  # fmt: skip
    alerts = alerts.sort("StudyDate", "StudyInstanceUID", "quantity", nulls_last=True)
    if key == "rf":
        cumulative = _cumulative_alerts(events, studies, cfg)
        res.tables.append(Table(
            "cumulative-alerts", "Per-patient cumulative alerts",
            f"Patients whose fluoroscopy studies within {int(cfg.get('cumulative_window_days', 84))} days up to a "
            f"study add up to more than {float(cfg.get('alert_cumulative_dap_cGycm2', 10000)):g} cGy·cm² DAP or "
            f"{float(cfg.get('alert_cumulative_dose_rp_mGy', 3000)):g} mGy dose at the reference point (settings "
            "[rf] cumulative_window_days, alert_cumulative_*); patients pseudonymised.", cumulative))  # fmt: skip
        res.numbers["cumulative_alerts"] = cumulative.height
    res.numbers["alerts"] = alerts.height
    res.charts.append(Chart(
        "dap", f"Median DAP by {'study description' if key == 'rf' else 'protocol'} and room",
        f"Dose-area product in cGy·cm² {what}; {data.filter(pl.col(value).is_null()).height:,} without DAP left out. "
        "Black marks: local DRL (Q3 of room medians).",
        _bar(med, group, "scanner", "median_dap_cGycm2", "Median DAP (cGy·cm²)", drl, "local_drl_dap_cGycm2",
             bool(cfg.get("log_axis"))), med,
    ))  # fmt: skip
    rp = events.filter(pl.col("dose_rp_mGy").is_not_null())
    if rp.height:
        med_rp = (
            rp.group_by(group if key != "rf" else "protocol", "scanner")
            .agg(pl.len().alias("n"), pl.col("dose_rp_mGy").median().alias("median_dose_rp_mGy"))
            .sort(pl.all().exclude("n"))
        )
        gcol = group if key != "rf" else "protocol"
        res.charts.append(Chart(
            "dose-rp", "Median dose at the reference point by protocol and room",
            f"Dose (RP) per irradiation event, {rp.height:,} events that record it.",
            _bar(med_rp, gcol, "scanner", "median_dose_rp_mGy", "Median dose (RP) (mGy)", log_axis=bool(cfg.get("log_axis"))),
            med_rp,
        ))  # fmt: skip
        res.tables.append(Table("dose-rp", "Dose at the reference point", "Per event.", med_rp))
    trend = trend_chart(data, "StudyDate", "scanner", value, "Median DAP (cGy·cm²)" + (" per study" if key == "rf" else ""),
                        (settings or load_settings()).get("trends", {}))  # fmt: skip
    if trend is not None:
        res.charts.append(trend[0])
        res.tables.append(trend[1])
    res.tables += [
        Table("dap", "DAP by group and room", what, med),
        Table("drl-dap", "DAP DRLs", "Local DRL = Q3 of room medians; national from settings.", drl),
        Table(
            "alerts",
            "Alerts",
            f"Above {a_dap:g} cGy·cm² DAP" + (" or the dose (RP) threshold" if key == "rf" else ""),
            alerts,
        ),
        Table("studies", "Studies", "One row per study.", studies),
    ]
    return res
