"""Run the curation rules over the lake (all of it, or the instances one ingest batch wrote)
and keep one ``quality_flags`` row per violation."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from dicomlake.curate import bodypart
from dicomlake.curate.normalise import age_between, parse_age
from dicomlake.curate.rules import Rules, load_rules

log = logging.getLogger(__name__)

FLAG_COLUMNS = ("SOPInstanceUID", "rule", "severity", "attribute", "value", "message", "proposed")
FLAGS_DDL = (
    "CREATE TABLE IF NOT EXISTS quality_flags ("
    "SOPInstanceUID VARCHAR, rule VARCHAR, severity VARCHAR, attribute VARCHAR, value VARCHAR, "
    "message VARCHAR, proposed VARCHAR, rules_version VARCHAR, flagged_at TIMESTAMP)"
)
RUNS_DDL = (
    "CREATE TABLE IF NOT EXISTS curate_runs (started_at TIMESTAMP, seconds DOUBLE, scope VARCHAR, "
    "instances BIGINT, flags BIGINT, rules_version VARCHAR, rules_source VARCHAR)"
)


@dataclass(slots=True)
class CurateReport:
    """What one curation run looked at and found."""

    instances: int = 0
    flags: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rules_version: str = ""
    notes: list[str] = field(default_factory=list)


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``quality_flags`` and ``curate_runs`` when missing."""
    con.execute(FLAGS_DDL)
    con.execute(RUNS_DDL)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = 'main'",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _in_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:g}"


class _Run:
    """One run: a scope table ``_cur_scope`` of SOPInstanceUIDs and a buffer ``_cur_flags``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rules: Rules) -> None:
        self.con = con
        self.rules = rules
        self.inst_cols = _columns(con, "instances")
        self.dose_cols = _columns(con, "dose_events")
        self.elem_ok = bool(_columns(con, "elements"))
        self.notes: list[str] = []
        self.rows: list[tuple[object, ...]] = []

    # ---- helpers --------------------------------------------------------------------------

    def add(self, uid: str, rule: str, severity: str, attribute: str | None, value: object,
            message: str, proposed: object = None) -> None:  # fmt: skip
        self.rows.append((uid, rule, severity, attribute, None if value is None else str(value), message,
                          None if proposed is None else str(proposed)))  # fmt: skip

    def insert_sql(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run a SELECT yielding FLAG_COLUMNS and buffer its rows."""
        for r in self.con.execute(sql, list(params)).fetchall():
            self.rows.append(tuple(r))

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        return self.con.execute(sql, list(params)).fetchall()

    def modality_cond(self, modalities: Sequence[str], col: str = 'i."Modality"') -> str:
        mods = [m for m in modalities if m != "*"]
        if not mods or "*" in modalities:
            return "TRUE"
        return f"{col} IN ({_in_list(mods)})"

    # ---- checks ---------------------------------------------------------------------------

    def ranges(self) -> None:
        for r in self.rules.ranges:
            lo = "TRUE" if r.min is None else f"v < {r.min!r}"
            hi = "TRUE" if r.max is None else f"v > {r.max!r}"
            bad = f"({lo if r.min is not None else 'FALSE'} OR {hi if r.max is not None else 'FALSE'})"
            span = f"{_num(r.min)}–{_num(r.max)} {r.unit}".strip()
            if r.table == "instances":
                if r.attribute not in self.inst_cols:
                    self.notes.append(f"range rule {r.id}: instances has no column {r.attribute}; skipped")
                    continue
                self.insert_sql(
                    f"""SELECT SOPInstanceUID, ?, ?, ?, CAST(v AS VARCHAR),
                        ? || ' (found ' || CAST(round(v, 6) AS VARCHAR) || ' {r.unit}; plausible {span})', NULL
                        FROM (SELECT i.SOPInstanceUID, CAST(i.{_q(r.attribute)} AS DOUBLE) AS v
                              FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                              WHERE {self.modality_cond(r.modality)}) WHERE v IS NOT NULL AND {bad}""",
                    [r.id, r.severity.value, r.attribute, r.message],
                )
            else:
                if r.attribute not in self.dose_cols:
                    self.notes.append(f"range rule {r.id}: dose_events has no column {r.attribute}; skipped")
                    continue
                self.insert_sql(
                    f"""SELECT SOPInstanceUID, ?, ?, ?, CAST(v AS VARCHAR),
                        ? || ' (found ' || CAST(round(v, 6) AS VARCHAR) || ' {r.unit} in irradiation event '
                          || coalesce(ev, '?') || '; plausible {span})', NULL
                        FROM (SELECT d.SOPInstanceUID, d.IrradiationEventUID AS ev,
                                     CAST(d.{_q(r.attribute)} AS DOUBLE) AS v
                              FROM dose_events d JOIN _cur_scope s USING (SOPInstanceUID)
                              WHERE d.source = 'rdsr' AND {self.modality_cond(r.modality, "d.modality_family")})
                        WHERE v IS NOT NULL AND {bad}""",
                    [r.id, r.severity.value, r.attribute, r.message],
                )

    def required(self) -> None:
        if not self.elem_ok or not self.rules.required:
            return
        # the scope's top-level elements that any rule names, read from the (large) elements
        # table in one pass, not once per rule: per ingest batch, that scan was most of the cost
        all_kws = sorted({k for r in self.rules.required for k in r.keywords})
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _cur_present AS
                SELECT e.SOPInstanceUID, e.keyword,
                       bool_or((e.value_text IS NOT NULL AND trim(e.value_text) <> '')
                               OR (e.VR = 'SQ' AND coalesce(e.value_num, 0) > 0)
                               OR (e.value_num IS NOT NULL AND e.VR <> 'SQ')) AS has_value
                FROM elements e SEMI JOIN _cur_scope s ON e.SOPInstanceUID = s.SOPInstanceUID
                WHERE e.depth = 0 AND e.keyword IN ({_in_list(all_kws)})
                GROUP BY e.SOPInstanceUID, e.keyword"""
        )
        for r in self.rules.required:
            kws = [k for k in r.keywords]
            missing = "p.keyword IS NULL" if r.type == 2 else "(p.keyword IS NULL OR NOT p.has_value)"
            what = "present with a value" if r.type == 1 else "present (may be empty)"
            # _cur_present has one row per (instance, keyword): a left join finds what is absent
            self.insert_sql(
                f"""SELECT i.SOPInstanceUID, ?, ?, k.kw, NULL,
                    k.kw || ' is missing: Type {r.type}, must be {what} ({r.reference})', NULL
                    FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                    CROSS JOIN (SELECT unnest([{_in_list(kws)}]) AS kw) k
                    LEFT JOIN _cur_present p ON p.SOPInstanceUID = i.SOPInstanceUID AND p.keyword = k.kw
                    WHERE {self.modality_cond(r.modality)} AND {missing}""",
                [r.id, r.severity.value],
            )

    def dates_in_future(self) -> None:
        c = self.rules.check("date-in-future")
        if not c:
            return
        tol = int(self.rules.setting("future_tolerance_days", 1))
        today = dt.date.today()
        for attr in c.options.get("attributes", []):
            if attr not in self.inst_cols:
                continue
            self.insert_sql(
                f"""SELECT i.SOPInstanceUID, 'date-in-future', ?, ?, strftime(i.{_q(attr)}, '%Y%m%d'),
                    '{attr} ' || strftime(i.{_q(attr)}, '%Y-%m-%d') || ' is after the instance was received ('
                      || strftime(coalesce(CAST(i.received_at AS DATE), ?::DATE), '%Y-%m-%d') || ')', NULL
                    FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                    WHERE i.{_q(attr)} > coalesce(CAST(i.received_at AS DATE), ?::DATE) + INTERVAL {tol} DAY""",
                [c.severity.value, attr, today, today],
            )

    def study_before_birth(self) -> None:
        c = self.rules.check("study-before-birth")
        if not c or not {"StudyDate", "PatientBirthDate"} <= self.inst_cols:
            return
        self.insert_sql(
            """SELECT i.SOPInstanceUID, 'study-before-birth', ?, 'StudyDate', strftime(i.StudyDate, '%Y%m%d'),
               'Study Date ' || strftime(i.StudyDate, '%Y-%m-%d') || ' is before Patient''s Birth Date '
                 || strftime(i.PatientBirthDate, '%Y-%m-%d'), NULL
               FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
               WHERE i.StudyDate < i.PatientBirthDate""",
            [c.severity.value],
        )

    def ages(self) -> None:
        fmt = self.rules.check("age-format")
        cons = self.rules.check("age-consistency")
        if not (fmt or cons) or "PatientAge" not in self.inst_cols:
            return
        tol = float(self.rules.setting("age_consistency_years", 1.0))
        rows = self.fetch(
            """SELECT i.SOPInstanceUID, i.PatientAge, i.PatientBirthDate, i.StudyDate
               FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
               WHERE i.PatientAge IS NOT NULL AND trim(i.PatientAge) <> ''"""
        )
        for uid, text, birth, study in rows:
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
        mods = list(self.rules.setting("sequential_modalities", []))
        tol = float(self.rules.setting("acquisition_order_tolerance_s", 1))
        self.insert_sql(
            f"""WITH s AS (
                  SELECT i.SOPInstanceUID, i.SeriesInstanceUID, i.InstanceNumber, i.acquisition_datetime AS t,
                         max(i.acquisition_datetime) OVER (PARTITION BY i.SeriesInstanceUID ORDER BY i.InstanceNumber
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max
                  FROM instances i
                  WHERE i.SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM instances JOIN _cur_scope USING (SOPInstanceUID))
                    AND i.InstanceNumber IS NOT NULL AND i.acquisition_datetime IS NOT NULL
                    AND {self.modality_cond(mods)})
                SELECT SOPInstanceUID, 'acquisition-order', ?, 'acquisition_datetime', CAST(t AS VARCHAR),
                  'Instance Number ' || InstanceNumber || ' was acquired at ' || CAST(t AS VARCHAR)
                    || ', before an earlier-numbered instance of its series (' || CAST(prev_max AS VARCHAR) || ')', NULL
                FROM s WHERE prev_max IS NOT NULL AND epoch(prev_max) - epoch(t) > ?""",
            [c.severity.value, tol],
        )

    def body_part(self) -> None:
        c = self.rules.check("body-part")
        if not c:
            return
        mod_sev = str(c.options.get("modality_severity", "error"))
        cols = ["BodyPartExamined", "Modality", "SeriesDescription", "ProtocolName", "StudyDescription",
                "RequestedProcedureDescription"]  # fmt: skip
        sel = ", ".join(f"i.{_q(k)}" if k in self.inst_cols else f"NULL AS {_q(k)}" for k in cols)
        rows = self.fetch(
            f"""SELECT i.SOPInstanceUID, {sel} FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                WHERE coalesce(i.pixel_data_bytes, 0) > 0 OR i.BodyPartExamined IS NOT NULL"""
        )
        for uid, bpe, mod, *desc in rows:
            for f in bodypart.check_body_part(bpe, mod, list(desc)):  # type: ignore[arg-type]
                sev = mod_sev if f.against_modality else ("info" if f.rule == "bpe-missing" else c.severity.value)
                self.add(str(uid), f.rule, sev, "BodyPartExamined", f.value, f.message, f.proposed)

    def duplicates(self) -> None:
        c = self.rules.check("duplicate")
        if not c:
            return
        sig = [k for k in c.options.get("signature", []) if k in self.inst_cols]
        req = [k for k in c.options.get("required", []) if k in self.inst_cols]
        if not sig:
            return
        key = " || '|' || ".join(f"coalesce(CAST(i.{_q(k)} AS VARCHAR), '')" for k in sig)
        where = " AND ".join(f"i.{_q(k)} IS NOT NULL" for k in req) or "TRUE"
        self.insert_sql(
            f"""WITH k AS (SELECT i.SOPInstanceUID, i.received_at, md5({key}) AS sig FROM instances i WHERE {where}),
                g AS (SELECT SOPInstanceUID, sig,
                        first(SOPInstanceUID ORDER BY received_at, SOPInstanceUID) OVER (PARTITION BY sig) AS first_uid,
                        count(*) OVER (PARTITION BY sig) AS n
                      FROM k WHERE sig IN (SELECT sig FROM k JOIN _cur_scope USING (SOPInstanceUID)))
                SELECT SOPInstanceUID, 'duplicate', ?, 'SOPInstanceUID', SOPInstanceUID,
                  'Same acquisition as ' || first_uid || ' under another SOP Instance UID ('
                    || n || ' copies; same {", ".join(sig[:4])}, …)', first_uid
                FROM g WHERE n > 1 AND SOPInstanceUID <> first_uid""",
            [c.severity.value],
        )

    def clock_drift(self) -> None:
        c = self.rules.check("clock-drift")
        if not c:
            return
        sources = list(self.rules.setting("receipt_sources", []))
        if not sources:
            return
        limit = float(self.rules.setting("clock_drift_minutes", 10))
        min_n = int(self.rules.setting("clock_drift_min_instances", 3))
        device = ("coalesce(nullif(i.DeviceSerialNumber, ''), nullif(i.StationName, ''), "
                  "i.Manufacturer || ' ' || i.ManufacturerModelName)")  # fmt: skip
        self.insert_sql(
            f"""WITH o AS (
                  SELECT i.SOPInstanceUID, {device} AS device, i.StationName,
                         (epoch(i.received_at) - epoch(coalesce(i.acquisition_datetime, i.content_datetime))) / 60.0 AS lag
                  FROM instances i
                  WHERE lower(i.source) IN ({_in_list([s.lower() for s in sources])})
                    AND i.received_at IS NOT NULL AND coalesce(i.acquisition_datetime, i.content_datetime) IS NOT NULL),
                d AS (SELECT device, median(lag) AS lag, count(*) AS n FROM o GROUP BY device HAVING count(*) >= {min_n}),
                f AS (SELECT median(lag) AS fleet FROM d)
                SELECT o.SOPInstanceUID, 'clock-drift', ?, 'acquisition_datetime', CAST(round(d.lag - f.fleet, 1) AS VARCHAR),
                  'Clock of ' || coalesce(o.StationName, o.device) || ' is '
                    || CAST(round(abs(d.lag - f.fleet), 1) AS VARCHAR) || ' min '
                    || CASE WHEN d.lag < f.fleet THEN 'ahead of' ELSE 'behind' END
                    || ' the other devices (median acquisition-to-receipt lag ' || CAST(round(d.lag, 1) AS VARCHAR)
                    || ' min over ' || d.n || ' instances; fleet median ' || CAST(round(f.fleet, 1) AS VARCHAR) || ' min)',
                  CAST(round(f.fleet - d.lag, 1) AS VARCHAR)
                FROM o JOIN d USING (device) CROSS JOIN f JOIN _cur_scope s ON s.SOPInstanceUID = o.SOPInstanceUID
                WHERE (SELECT count(*) FROM d) >= 2 AND abs(d.lag - f.fleet) > ?""",
            [c.severity.value, limit],
        )

    def worklist_identity(self) -> None:
        """Header identity against the Modality Worklist (curate/worklist.py); off unless enabled."""
        from dicomlake.curate.worklist import run_check

        run_check(self)


def curate(
    con: duckdb.DuckDBPyConnection,
    uids: Iterable[str] | None = None,
    rules: Rules | None = None,
) -> CurateReport:
    """Run every rule over the lake (``uids=None``) or over some instances; replace their flags.

    Parameters
    ----------
    con
        A writable connection to the lake (``DuckDBStore.con``).
    uids
        SOP Instance UIDs just written (ingest); their series (acquisition order) and their
        duplicates are re-checked with them.
    rules
        Parsed rules; by default :func:`~dicomlake.curate.rules.load_rules`.
    """
    t0 = time.perf_counter()
    rules = rules or load_rules()
    ensure_tables(con)
    started = dt.datetime.now()
    con.execute("CREATE OR REPLACE TEMP TABLE _cur_scope (SOPInstanceUID VARCHAR)")
    if uids is None:
        con.execute("INSERT INTO _cur_scope SELECT SOPInstanceUID FROM instances")
        scope_text = "lake"
    else:
        # registered, not a replacement scan: those are off once user SQL locked the instance
        con.register("_cur_batch", pa.table({"SOPInstanceUID": pa.array(list(uids), pa.string())}))
        con.execute("INSERT INTO _cur_scope SELECT DISTINCT SOPInstanceUID FROM _cur_batch")
        con.unregister("_cur_batch")
        # series siblings: an out-of-order instance may be an earlier one
        con.execute(
            "INSERT INTO _cur_scope SELECT SOPInstanceUID FROM instances WHERE SeriesInstanceUID IN "
            "(SELECT SeriesInstanceUID FROM instances JOIN _cur_scope USING (SOPInstanceUID)) "
            "AND SOPInstanceUID NOT IN (SELECT SOPInstanceUID FROM _cur_scope)"
        )
        scope_text = "batch"
    run = _Run(con, rules)
    for step in (run.ranges, run.required, run.dates_in_future, run.study_before_birth, run.ages,
                 run.acquisition_order, run.body_part, run.duplicates, run.clock_drift,
                 run.worklist_identity):  # fmt: skip
        try:
            step()
        except duckdb.Error as exc:
            run.notes.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
            log.warning("curation step %s failed: %s", step.__name__, exc)
    now = dt.datetime.now()
    flags = pa.table({
        **{name: pa.array([r[i] for r in run.rows], pa.string()) for i, name in enumerate(FLAG_COLUMNS)},
        "rules_version": pa.array([rules.version] * len(run.rows), pa.string()),
        "flagged_at": pa.array([now] * len(run.rows), pa.timestamp("us")),
    })  # fmt: skip
    # a duplicate found from a batch instance may flag a later copy outside the batch:
    # its duplicate flag (only) is replaced too
    extra = {r[0] for r in run.rows if r[1] == "duplicate"}
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM quality_flags WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope)")
        if extra:
            con.register("_cur_extra", pa.table({"u": pa.array(sorted(str(e) for e in extra), pa.string())}))
            con.execute(
                "DELETE FROM quality_flags WHERE rule = 'duplicate' AND SOPInstanceUID IN (SELECT u FROM _cur_extra)"
            )
            con.unregister("_cur_extra")
        if flags.num_rows:
            con.register("_cur_flags", flags)
            con.execute("INSERT INTO quality_flags BY NAME SELECT * FROM _cur_flags")
            con.unregister("_cur_flags")
        n_scope = con.execute("SELECT count(*) FROM _cur_scope").fetchall()[0]
        report = CurateReport(instances=int(n_scope[0]) if n_scope else 0, flags=flags.num_rows,
                              rules_version=rules.version, notes=run.notes)  # fmt: skip
        for r in run.rows:
            report.by_rule[str(r[1])] = report.by_rule.get(str(r[1]), 0) + 1
        report.seconds = time.perf_counter() - t0
        con.execute(
            "INSERT INTO curate_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
            [started, report.seconds, scope_text, report.instances, report.flags, rules.version, rules.source],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("DROP TABLE IF EXISTS _cur_scope")
    return report
