"""Data-quality audit (``dicomlake audit quality``): the curation flags, the Body Part
Examined error rate, and name variants awaiting a physicist's confirmation."""

from __future__ import annotations

import polars as pl

from dicomlake.audit.common import Selection, color
from dicomlake.audit.report import AuditResult, Chart, Table
from dicomlake.curate import names
from dicomlake.query.lake import Lake
from dicomlake.store.curation import curation_of

BPE_RULES = ("bpe-not-defined-term", "bpe-modality", "bpe-description")


def _has(lake: Lake, table: str) -> bool:
    return bool(lake.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [table]).item())


def audit_quality(lake: Lake, selection: Selection | None = None, settings: dict | None = None) -> AuditResult:
    import plotly.graph_objects as go

    selection = selection or Selection()
    cond, params = selection.sql(lake)
    n_inst = int(lake.sql(f"SELECT count(*) FROM instances i WHERE {cond}", params).item())
    res = AuditResult(name="quality", title="Data quality audit",
                      selection=selection.sentence("instances", n_inst, lake.store.lake))  # fmt: skip
    if not _has(lake, "quality_flags"):
        res.notes.append("The lake has no quality_flags table yet: run `dicomlake curate` first.")
        flags = pl.DataFrame(schema={"SOPInstanceUID": pl.String, "rule": pl.String, "severity": pl.String})
    else:
        flags = lake.sql(
            f"""SELECT f.rule, f.severity, i.Modality, coalesce(i.StationName, '') AS StationName, f.attribute,
                       f.value, f.proposed, f.message, f.SOPInstanceUID, f.rules_version
                FROM quality_flags f JOIN instances i USING (SOPInstanceUID) WHERE {cond}
                ORDER BY CASE f.severity WHEN 'error' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, f.rule, f.SOPInstanceUID""",
            params,
        )
    by_rule = (flags.group_by("rule", "severity").agg(pl.len().alias("flags"),
               pl.col("SOPInstanceUID").n_unique().alias("instances")).sort("flags", descending=True)
               if flags.height else pl.DataFrame(schema={"rule": pl.String, "severity": pl.String, "flags": pl.UInt32,
                                                         "instances": pl.UInt32}))  # fmt: skip
    flagged = flags.get_column("SOPInstanceUID").n_unique() if flags.height else 0
    res.numbers.update({"instances": n_inst, "flags": flags.height, "instances_flagged": flagged,
                        "errors": flags.filter(pl.col("severity") == "error").height if flags.height else 0})  # fmt: skip
    # Body Part Examined error rate over the instances a body part can be judged on
    bpe_base = lake.sql(
        f"""SELECT count(*) FROM instances i WHERE {cond} AND i.BodyPartExamined IS NOT NULL
            AND trim(i.BodyPartExamined) <> ''""", params).item()  # fmt: skip
    bpe_bad = (
        flags.filter(pl.col("rule").is_in(BPE_RULES)).get_column("SOPInstanceUID").n_unique() if flags.height else 0
    )
    rate = bpe_bad / bpe_base if bpe_base else None
    res.numbers.update({"bpe_instances": int(bpe_base), "bpe_errors": bpe_bad, "bpe_error_rate": rate})
    bpe_by = (flags.filter(pl.col("rule").is_in(BPE_RULES)).group_by("Modality", "rule")
              .agg(pl.col("SOPInstanceUID").n_unique().alias("instances")).sort("Modality", "rule")
              if flags.height else pl.DataFrame(schema={"Modality": pl.String, "rule": pl.String, "instances": pl.UInt32}))  # fmt: skip
    fig = go.Figure()
    sev_color = {"error": "#c23b3b", "warning": "#d9822b", "info": "#3b6ea5"}
    for sev in ("error", "warning", "info"):
        p = by_rule.filter(pl.col("severity") == sev) if by_rule.height else by_rule
        if p.height:
            fig.add_trace(go.Bar(x=p.get_column("rule").to_list(), y=p.get_column("flags").to_list(), name=sev,
                                 marker_color=sev_color[sev]))  # fmt: skip
    fig.update_layout(barmode="stack", yaxis_title="Flags", template="plotly_white", height=420)
    res.charts.append(Chart("flags", "Flags by rule and severity",
                            f"Every violation of the curation rules among the selected {n_inst:,} instances "
                            "(rules version in the table).", fig, by_rule))  # fmt: skip
    fig = go.Figure()
    for n, rule in enumerate(BPE_RULES):
        p = bpe_by.filter(pl.col("rule") == rule) if bpe_by.height else bpe_by
        if p.height:
            fig.add_trace(go.Bar(x=p.get_column("Modality").to_list(), y=p.get_column("instances").to_list(), name=rule,
                                 marker_color=color(n)))  # fmt: skip
    fig.update_layout(barmode="stack", yaxis_title="Instances", template="plotly_white", height=380,
                      title=f"Body Part Examined error rate: {rate:.1%}" if rate is not None else "No Body Part Examined")  # fmt: skip
    res.charts.append(Chart("bpe", "Body Part Examined errors by modality",
                            f"Instances whose Body Part Examined is not a PS3.16 Annex L defined term, contradicts the "
                            f"modality, or contradicts the descriptions, among {int(bpe_base):,} with a Body Part Examined "
                            "(empty ones are not counted).", fig, bpe_by))  # fmt: skip
    door = curation_of(lake.store)
    pending = names.unmapped(door)
    pend = pl.DataFrame([{"field": p.field, "cluster": p.cluster, "variant": p.variant, "count": p.count,
                          "proposed_standard": p.standard, "similarity": p.similarity} for p in pending],
                        schema={"field": pl.String, "cluster": pl.Int64, "variant": pl.String, "count": pl.Int64,
                                "proposed_standard": pl.String, "similarity": pl.Float64})  # fmt: skip
    res.numbers["name_variants_awaiting"] = pend.height
    res.numbers["name_mapping_version"] = door.mapping_version()
    res.tables += [
        Table("by-rule", "Flags by rule", "", by_rule),
        Table("bpe", "Body Part Examined errors by modality", "", bpe_by),
        Table(
            "names",
            "Name variants awaiting confirmation",
            "Variants no confirmed mapping covers, clustered with a proposed standard name: confirm with "
            "`dicomlake curate names --propose FILE`, edit, then `--confirm FILE`.",
            pend,
        ),
        Table("flags", "All flags", "", flags),
    ]
    res.all_data = flags
    res.sheets_by = "rule"
    return res
