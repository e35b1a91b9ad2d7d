"""Run the curation rules over the lake (all of it, or the instances one ingest batch wrote)
and keep one ``quality_flags`` row per violation."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from dicomlake.curate import bodypart
from dicomlake.curate.lake import CurationLake
from dicomlake.curate.normalise import age_between, parse_age
from dicomlake.curate.rules import Rules, load_rules
from dicomlake.errors import QueryError

log = logging.getLogger(__name__)

FLAG_COLUMNS = ("SOPInstanceUID", "rule", "severity", "attribute", "value", "message", "proposed")


@dataclass(slots=True)
class CurateReport:
    """What one curation run looked at and found."""

    instances: int = 0
    flags: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rules_version: str = ""
    notes: list[str] = field(default_factory=list)


class _Run:
    """One run over the scope the lake holds for it (:meth:`CurationLake.open_scope`): the
    rules decide, the lake's curation door runs the queries; flags are buffered in ``rows``."""

    def __init__(self, lake: CurationLake, rules: Rules) -> None:
        self.lake = lake
        self.rules = rules
        self.inst_cols = lake.columns("instances")
        self.dose_cols = lake.columns("dose_events")
        self.elem_ok = lake.has_table("elements")
        self.notes: list[str] = []
        self.rows: list[tuple[object, ...]] = []

    def add(self, uid: str, rule: str, severity: str, attribute: str | None, value: object,
            message: str, proposed: object = None) -> None:  # fmt: skip
        self.rows.append((uid, rule, severity, attribute, None if value is None else str(value), message,
                          None if proposed is None else str(proposed)))  # fmt: skip

    def extend(self, rows: Iterable[tuple[object, ...]]) -> None:
        self.rows.extend(tuple(r) for r in rows)

    # ---- checks ---------------------------------------------------------------------------

    def ranges(self) -> None:
        for r in self.rules.ranges:
            cols = self.inst_cols if r.table == "instances" else self.dose_cols
            if r.attribute not in cols:
                self.notes.append(f"range rule {r.id}: {r.table} has no column {r.attribute}; skipped")
                continue
            self.extend(
                self.lake.range_flags(
                    rule=r.id,
                    severity=r.severity.value,
                    table=r.table,
                    attribute=r.attribute,
                    low=r.min,
                    high=r.max,
                    unit=r.unit,
                    message=r.message,
                    modalities=r.modality,
                )
            )

    def required(self) -> None:
        if not self.elem_ok or not self.rules.required:
            return
        self.lake.collect_present(sorted({k for r in self.rules.required for k in r.keywords}))
        for r in self.rules.required:
            what = "present with a value" if r.type == 1 else "present (may be empty)"
            self.extend(
                self.lake.missing_flags(
                    rule=r.id,
                    severity=r.severity.value,
                    keywords=list(r.keywords),
                    need_value=r.type != 2,
                    explanation=f" is missing: Type {r.type}, must be {what} ({r.reference})",
                    modalities=r.modality,
                )
            )

    def dates_in_future(self) -> None:
        c = self.rules.check("date-in-future")
        if not c:
            return
        tol = int(self.rules.setting("future_tolerance_days", 1))
        for attr in c.options.get("attributes", []):
            if attr in self.inst_cols:
                self.extend(
                    self.lake.future_date_flags(
                        severity=c.severity.value, attribute=attr, tolerance_days=tol, today=dt.date.today()
                    )
                )

    def study_before_birth(self) -> None:
        c = self.rules.check("study-before-birth")
        if c and {"StudyDate", "PatientBirthDate"} <= self.inst_cols:
            self.extend(self.lake.before_birth_flags(severity=c.severity.value))

    def ages(self) -> None:
        fmt = self.rules.check("age-format")
        cons = self.rules.check("age-consistency")
        if not (fmt or cons) or "PatientAge" not in self.inst_cols:
            return
        tol = float(self.rules.setting("age_consistency_years", 1.0))
        for uid, text, birth, study in self.lake.ages():
            age = parse_age(str(text))
            if fmt and (age is None or not age.conformant):
                self.add(str(uid), "age-format", fmt.severity.value, "PatientAge", text,
                         f"Patient's Age {text!r} is not an AS value (nnnD, nnnW, nnnM or nnnY; PS3.5 6.2)",
                         age.as_string if age else (age_between(birth, study) or None))  # type: ignore[arg-type]  # fmt: skip
            if cons and age is not None:
                computed = age_between(birth, study)  # type: ignore[arg-type]
                if computed is not None and abs(computed.years - age.years) > tol:
                    self.add(str(uid), "age-consistency", cons.severity.value, "PatientAge", text,
                             f"Patient's Age {text} disagrees with Birth Date {birth} and Study Date {study} "
                             f"({computed.as_string})", computed.as_string)  # fmt: skip

    def acquisition_order(self) -> None:
        c = self.rules.check("acquisition-order")
        if not c:
            return
        self.extend(
            self.lake.order_flags(
                severity=c.severity.value,
                modalities=list(self.rules.setting("sequential_modalities", [])),
                tolerance_s=float(self.rules.setting("acquisition_order_tolerance_s", 1)),
            )
        )

    def body_part(self) -> None:
        c = self.rules.check("body-part")
        if not c:
            return
        mod_sev = str(c.options.get("modality_severity", "error"))
        cols = ["BodyPartExamined", "Modality", "SeriesDescription", "ProtocolName", "StudyDescription",
                "RequestedProcedureDescription"]  # fmt: skip
        for uid, bpe, mod, *desc in self.lake.body_part_rows(cols):
            for f in bodypart.check_body_part(bpe, mod, list(desc)):
                sev = mod_sev if f.against_modality else ("info" if f.rule == "bpe-missing" else c.severity.value)
                self.add(str(uid), f.rule, sev, "BodyPartExamined", f.value, f.message, f.proposed)

    def duplicates(self) -> None:
        c = self.rules.check("duplicate")
        if not c:
            return
        sig = [k for k in c.options.get("signature", []) if k in self.inst_cols]
        req = [k for k in c.options.get("required", []) if k in self.inst_cols]
        if sig:
            self.extend(self.lake.duplicate_flags(severity=c.severity.value, signature=sig, required=req))

    def clock_drift(self) -> None:
        c = self.rules.check("clock-drift")
        if not c:
            return
        sources = list(self.rules.setting("receipt_sources", []))
        if not sources:
            return
        self.extend(
            self.lake.clock_drift_flags(
                severity=c.severity.value,
                sources=sources,
                limit_min=float(self.rules.setting("clock_drift_minutes", 10)),
                min_instances=int(self.rules.setting("clock_drift_min_instances", 3)),
            )
        )

    def worklist_identity(self) -> None:
        """Header identity against the Modality Worklist (curate/worklist.py); off unless enabled."""
        from dicomlake.curate.worklist import run_check

        run_check(self)


def curate(
    lake: CurationLake,
    uids: Iterable[str] | None = None,
    rules: Rules | None = None,
) -> CurateReport:
    """Run every rule over the lake (``uids=None``) or over some instances; replace their flags.

    Parameters
    ----------
    lake
        The lake's curation door, writable: ``store.curation()`` of a DuckDB or PostgreSQL
        store (:class:`dicomlake.store.curation.LakeCuration`).
    uids
        SOP Instance UIDs just written (ingest); their series (acquisition order) and their
        duplicates are re-checked with them.
    rules
        Parsed rules; by default :func:`~dicomlake.curate.rules.load_rules`.
    """
    t0 = time.perf_counter()
    rules = rules or load_rules()
    lake.require_writable("curate run")
    started = dt.datetime.now()
    n_scope = lake.open_scope(None if uids is None else list(uids))
    try:
        run = _Run(lake, rules)
        for step in (run.ranges, run.required, run.dates_in_future, run.study_before_birth, run.ages,
                     run.acquisition_order, run.body_part, run.duplicates, run.clock_drift,
                     run.worklist_identity):  # fmt: skip
            try:
                step()
            except QueryError as exc:
                run.notes.append(f"{step.__name__}: {exc}")
                log.warning("curation step %s failed: %s", step.__name__, exc)
        now = dt.datetime.now()
        flags = pa.table({
            **{name: pa.array([r[i] for r in run.rows], pa.string()) for i, name in enumerate(FLAG_COLUMNS)},
            "rules_version": pa.array([rules.version] * len(run.rows), pa.string()),
            "flagged_at": pa.array([now] * len(run.rows), pa.timestamp("us")),
        })  # fmt: skip
        report = CurateReport(instances=n_scope, flags=flags.num_rows, rules_version=rules.version, notes=run.notes)
        for r in run.rows:
            report.by_rule[str(r[1])] = report.by_rule.get(str(r[1]), 0) + 1
        report.seconds = time.perf_counter() - t0
        # a duplicate found from a batch instance may flag a later copy outside the batch:
        # its duplicate flag (only) is replaced too
        extra = sorted({str(r[0]) for r in run.rows if r[1] == "duplicate"})
        lake.replace_flags(
            flags,
            extra,
            {"started_at": started, "seconds": report.seconds, "scope": "lake" if uids is None else "batch",
             "instances": report.instances, "flags": report.flags, "rules_version": rules.version,
             "rules_source": rules.source},
        )  # fmt: skip
    finally:
        lake.close_scope()
    return report
