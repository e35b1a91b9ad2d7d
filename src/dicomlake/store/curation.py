"""Curation and name mappings in the lake: every statement that reads or writes
``quality_flags``, ``curate_runs`` and ``name_mappings``, on DuckDB and PostgreSQL (and
read-only on a Parquet lake or through a running service).

:mod:`dicomlake.curate` keeps the rules and the decisions (which checks run, their
severities, tolerances and messages, the name clusters) and calls the typed methods of
:class:`LakeCuration`, which it sees through the protocols of
:mod:`dicomlake.curate.lake` (``curate/`` and ``store/`` are one layer and import
neither each other). The statements are written once in DuckDB's dialect and translated
for PostgreSQL by sqlglot (:mod:`dicomlake.store.lakesql`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from dicomlake.errors import ConfigError, QueryError
from dicomlake.store.lakesql import LakeSql, lake_sql

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
MAPPINGS_DDL = (
    "CREATE TABLE IF NOT EXISTS name_mappings (version INTEGER, field VARCHAR, variant VARCHAR, "
    "standard VARCHAR, confirmed_by VARCHAR, confirmed_at TIMESTAMP, source_file VARCHAR)"
)
# the tables curation keeps, as Arrow schemas (export / import, a Parquet lake's views)
CURATION_SCHEMAS: dict[str, pa.Schema] = {
    "quality_flags": pa.schema(
        [*((c, pa.string()) for c in FLAG_COLUMNS), ("rules_version", pa.string()), ("flagged_at", pa.timestamp("us"))]
    ),
    "curate_runs": pa.schema(
        [
            ("started_at", pa.timestamp("us")),
            ("seconds", pa.float64()),
            ("scope", pa.string()),
            ("instances", pa.int64()),
            ("flags", pa.int64()),
            ("rules_version", pa.string()),
            ("rules_source", pa.string()),
        ]
    ),
    "name_mappings": pa.schema(
        [
            ("version", pa.int32()),
            ("field", pa.string()),
            ("variant", pa.string()),
            ("standard", pa.string()),
            ("confirmed_by", pa.string()),
            ("confirmed_at", pa.timestamp("us")),
            ("source_file", pa.string()),
        ]
    ),
}
# name field → the instances column whose variants it standardises
NAME_FIELDS: dict[str, str] = {
    "institution": "InstitutionName",
    "station": "StationName",
    "protocol": "ProtocolName",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
}

Row = tuple[Any, ...]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _in_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _modality_cond(modalities: Sequence[str], col: str = 'i."Modality"') -> str:
    mods = [m for m in modalities if m != "*"]
    if not mods or "*" in modalities:
        return "TRUE"
    return f"{col} IN ({_in_list(mods)})"


class LakeCuration:
    """The curation and name-mapping door of one open lake.

    Parameters
    ----------
    sql
        The engine's executor (:func:`dicomlake.store.lakesql.lake_sql`).
    """

    def __init__(self, sql: LakeSql) -> None:
        self.sql = sql
        self.engine = sql.dialect

    @classmethod
    def of(cls, store: Any) -> LakeCuration:
        """The curation door of any open store."""
        return cls(lake_sql(store))

    @property
    def writable(self) -> bool:
        return self.sql.writable

    def require_writable(self, what: str) -> None:
        if not self.sql.writable:
            raise ConfigError(
                f"{what} writes to the lake, and this lake is read-only (a Parquet lake, a read-only open or a "
                "running service's lake): curate a DuckDB or PostgreSQL lake, then export it"
            )

    # ---- tables -------------------------------------------------------------------------

    def columns(self, table: str) -> set[str]:
        return self.sql.columns(table)

    def has_table(self, name: str) -> bool:
        return bool(self.sql.columns(name))

    def ensure_tables(self) -> None:
        """Create ``quality_flags``, ``curate_runs`` and ``name_mappings`` when missing (two
        PostgreSQL writers creating one at once: the loser finds it made)."""
        for name, ddl in (("quality_flags", FLAGS_DDL), ("curate_runs", RUNS_DDL), ("name_mappings", MAPPINGS_DDL)):
            if self.has_table(name):
                continue
            try:
                self.sql.run(ddl)
            except QueryError:
                if not self.has_table(name):
                    raise

    # ---- the scope of a run ---------------------------------------------------------------

    def open_scope(self, uids: Iterable[str] | None) -> int:
        """Fill the run's scope (``_cur_scope``): every instance, or ``uids`` and their series
        siblings (an out-of-order instance may be an earlier one); how many it holds."""
        empty = pa.table({"SOPInstanceUID": pa.array([], pa.string())})
        if uids is None:
            self.sql.load_temp("_cur_scope", empty)
            self.sql.run("INSERT INTO _cur_scope SELECT SOPInstanceUID FROM instances")
        else:
            batch = sorted(set(uids))
            self.sql.load_temp("_cur_scope", pa.table({"SOPInstanceUID": pa.array(batch, pa.string())}))
            self.sql.run(
                "INSERT INTO _cur_scope SELECT SOPInstanceUID FROM instances WHERE SeriesInstanceUID IN "
                "(SELECT SeriesInstanceUID FROM instances WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope)) "
                "AND SOPInstanceUID NOT IN (SELECT SOPInstanceUID FROM _cur_scope)"
            )
        return self.scope_size()

    def scope_size(self) -> int:
        row = self.sql.rows("SELECT count(*) FROM _cur_scope")
        return int(row[0][0]) if row else 0

    def close_scope(self) -> None:
        self.sql.run("DROP TABLE IF EXISTS _cur_scope")
        self.sql.run("DROP TABLE IF EXISTS _cur_present")

    # ---- the checks: flag rows in FLAG_COLUMNS order ----------------------------------------

    def range_flags(
        self,
        *,
        rule: str,
        severity: str,
        table: str,
        attribute: str,
        low: float | None,
        high: float | None,
        unit: str,
        message: str,
        modalities: Sequence[str],
    ) -> list[Row]:
        """Values of ``attribute`` (instances, or RDSR dose events) outside ``[low, high]``."""
        lo = "FALSE" if low is None else f"v < {float(low)!r}"
        hi = "FALSE" if high is None else f"v > {float(high)!r}"
        span = f"{'' if low is None else f'{low:g}'}–{'' if high is None else f'{high:g}'} {unit}".strip()
        if table == "instances":
            return self.sql.rows(
                f"""SELECT SOPInstanceUID, ?, ?, ?, CAST(v AS VARCHAR),
                    CAST(? AS VARCHAR) || ' (found ' || CAST(round(v, 6) AS VARCHAR) || ' ' || CAST(? AS VARCHAR)
                      || '; plausible ' || CAST(? AS VARCHAR) || ')', NULL
                    FROM (SELECT i.SOPInstanceUID, CAST(i.{_q(attribute)} AS DOUBLE) AS v
                          FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                          WHERE {_modality_cond(modalities)}) x WHERE v IS NOT NULL AND ({lo} OR {hi})""",
                [rule, severity, attribute, message, unit, span],
            )
        return self.sql.rows(
            f"""SELECT SOPInstanceUID, ?, ?, ?, CAST(v AS VARCHAR),
                CAST(? AS VARCHAR) || ' (found ' || CAST(round(v, 6) AS VARCHAR) || ' ' || CAST(? AS VARCHAR)
                  || ' in irradiation event ' || coalesce(ev, '?') || '; plausible ' || CAST(? AS VARCHAR) || ')', NULL
                FROM (SELECT d.SOPInstanceUID, d.IrradiationEventUID AS ev, CAST(d.{_q(attribute)} AS DOUBLE) AS v
                      FROM dose_events d JOIN _cur_scope s USING (SOPInstanceUID)
                      WHERE d.source = 'rdsr' AND {_modality_cond(modalities, "d.modality_family")}) x
                WHERE v IS NOT NULL AND ({lo} OR {hi})""",
            [rule, severity, attribute, message, unit, span],
        )

    def collect_present(self, keywords: Sequence[str]) -> None:
        """The scope's top-level elements among ``keywords``, whether each has a value
        (``_cur_present``): one pass over the (large) elements table, not one per rule."""
        self.sql.run("DROP TABLE IF EXISTS _cur_present")
        self.sql.run(
            f"""CREATE TEMP TABLE _cur_present AS
                SELECT e.SOPInstanceUID, e.keyword,
                       bool_or((e.value_text IS NOT NULL AND trim(e.value_text) <> '')
                               OR (e.VR = 'SQ' AND coalesce(e.value_num, 0) > 0)
                               OR (e.value_num IS NOT NULL AND e.VR <> 'SQ')) AS has_value
                FROM elements e
                WHERE e.SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope)
                  AND e.depth = 0 AND e.keyword IN ({_in_list(list(keywords))})
                GROUP BY e.SOPInstanceUID, e.keyword"""
        )

    def missing_flags(
        self,
        *,
        rule: str,
        severity: str,
        keywords: Sequence[str],
        need_value: bool,
        explanation: str,
        modalities: Sequence[str],
    ) -> list[Row]:
        """Instances of the scope lacking one of ``keywords`` (or its value, ``need_value``);
        :meth:`collect_present` first."""
        missing = "(p.keyword IS NULL OR NOT p.has_value)" if need_value else "p.keyword IS NULL"
        return self.sql.rows(
            f"""SELECT i.SOPInstanceUID, ?, ?, k.kw, NULL, k.kw || CAST(? AS VARCHAR), NULL
                FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                CROSS JOIN (SELECT unnest([{_in_list(list(keywords))}]) AS kw) k
                LEFT JOIN _cur_present p ON p.SOPInstanceUID = i.SOPInstanceUID AND p.keyword = k.kw
                WHERE {_modality_cond(modalities)} AND {missing}""",
            [rule, severity, explanation],
        )

    def future_date_flags(self, *, severity: str, attribute: str, tolerance_days: int, today: dt.date) -> list[Row]:
        """A date after the instance was received (or ``today``) by more than the tolerance."""
        a = f"i.{_q(attribute)}"
        return self.sql.rows(
            f"""SELECT i.SOPInstanceUID, 'date-in-future', ?, ?, strftime({a}, '%Y%m%d'),
                '{attribute} ' || strftime({a}, '%Y-%m-%d') || ' is after the instance was received ('
                  || strftime(coalesce(CAST(i.received_at AS DATE), CAST(? AS DATE)), '%Y-%m-%d') || ')', NULL
                FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                WHERE {a} > coalesce(CAST(i.received_at AS DATE), CAST(? AS DATE)) + INTERVAL {int(tolerance_days)} DAY""",
            [severity, attribute, today, today],
        )

    def before_birth_flags(self, *, severity: str) -> list[Row]:
        return self.sql.rows(
            """SELECT i.SOPInstanceUID, 'study-before-birth', ?, 'StudyDate', strftime(i.StudyDate, '%Y%m%d'),
               'Study Date ' || strftime(i.StudyDate, '%Y-%m-%d') || ' is before Patient''s Birth Date '
                 || strftime(i.PatientBirthDate, '%Y-%m-%d'), NULL
               FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
               WHERE i.StudyDate < i.PatientBirthDate""",
            [severity],
        )

    def ages(self) -> list[Row]:
        """``(SOPInstanceUID, PatientAge, PatientBirthDate, StudyDate)`` of the scope's instances with an age."""
        return self.sql.rows(
            """SELECT i.SOPInstanceUID, i.PatientAge, i.PatientBirthDate, i.StudyDate
               FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
               WHERE i.PatientAge IS NOT NULL AND trim(i.PatientAge) <> ''"""
        )

    def order_flags(self, *, severity: str, modalities: Sequence[str], tolerance_s: float) -> list[Row]:
        """Instances acquired before an earlier-numbered instance of their series (by more than the tolerance)."""
        return self.sql.rows(
            f"""WITH s AS (
                  SELECT i.SOPInstanceUID, i.SeriesInstanceUID, i.InstanceNumber, i.acquisition_datetime AS t,
                         max(i.acquisition_datetime) OVER (PARTITION BY i.SeriesInstanceUID ORDER BY i.InstanceNumber
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max
                  FROM instances i
                  WHERE i.SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM instances
                                                WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope))
                    AND i.InstanceNumber IS NOT NULL AND i.acquisition_datetime IS NOT NULL
                    AND {_modality_cond(modalities)})
                SELECT SOPInstanceUID, 'acquisition-order', ?, 'acquisition_datetime', CAST(t AS VARCHAR),
                  'Instance Number ' || CAST(InstanceNumber AS VARCHAR) || ' was acquired at ' || CAST(t AS VARCHAR)
                    || ', before an earlier-numbered instance of its series (' || CAST(prev_max AS VARCHAR) || ')', NULL
                FROM s WHERE prev_max IS NOT NULL AND epoch(prev_max) - epoch(t) > ?""",
            [severity, float(tolerance_s)],
        )

    def body_part_rows(self, columns: Sequence[str]) -> list[Row]:
        """``(SOPInstanceUID, *columns)`` of the scope's images and instances with a Body Part Examined
        (a column the lake lacks comes back NULL)."""
        have = self.columns("instances")
        sel = ", ".join(f"i.{_q(k)}" if k in have else f"NULL AS {_q(k)}" for k in columns)
        return self.sql.rows(
            f"""SELECT i.SOPInstanceUID, {sel} FROM instances i JOIN _cur_scope s USING (SOPInstanceUID)
                WHERE coalesce(i.pixel_data_bytes, 0) > 0 OR i.BodyPartExamined IS NOT NULL"""
        )

    def duplicate_flags(self, *, severity: str, signature: Sequence[str], required: Sequence[str]) -> list[Row]:
        """Instances whose ``signature`` columns equal an earlier-received instance's under another UID."""
        key = " || '|' || ".join(f"coalesce(CAST(i.{_q(k)} AS VARCHAR), '')" for k in signature)
        where = " AND ".join(f"i.{_q(k)} IS NOT NULL" for k in required) or "TRUE"
        same = ", ".join(signature[:4]).replace("'", "''")
        return self.sql.rows(
            f"""WITH k AS (SELECT i.SOPInstanceUID, i.received_at, md5({key}) AS sig FROM instances i WHERE {where}),
                g AS (SELECT SOPInstanceUID, sig,
                        first_value(SOPInstanceUID) OVER (PARTITION BY sig ORDER BY received_at NULLS LAST, SOPInstanceUID
                          ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS first_uid,
                        count(*) OVER (PARTITION BY sig) AS n
                      FROM k WHERE sig IN (SELECT sig FROM k WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope)))
                SELECT SOPInstanceUID, 'duplicate', ?, 'SOPInstanceUID', SOPInstanceUID,
                  'Same acquisition as ' || first_uid || ' under another SOP Instance UID ('
                    || CAST(n AS VARCHAR) || ' copies; same {same}, …)', first_uid
                FROM g WHERE n > 1 AND SOPInstanceUID <> first_uid""",
            [severity],
        )

    def clock_drift_flags(
        self, *, severity: str, sources: Sequence[str], limit_min: float, min_instances: int
    ) -> list[Row]:
        """Instances of devices whose median acquisition-to-receipt lag differs from the fleet's."""
        device = ("coalesce(nullif(i.DeviceSerialNumber, ''), nullif(i.StationName, ''), "
                  "i.Manufacturer || ' ' || i.ManufacturerModelName)")  # fmt: skip
        return self.sql.rows(
            f"""WITH o AS (
                  SELECT i.SOPInstanceUID, {device} AS device, i.StationName,
                         (epoch(i.received_at) - epoch(coalesce(i.acquisition_datetime, i.content_datetime))) / 60.0 AS lag
                  FROM instances i
                  WHERE lower(i.source) IN ({_in_list([s.lower() for s in sources])})
                    AND i.received_at IS NOT NULL AND coalesce(i.acquisition_datetime, i.content_datetime) IS NOT NULL),
                d AS (SELECT device, median(lag) AS lag, count(*) AS n FROM o GROUP BY device
                      HAVING count(*) >= {int(min_instances)}),
                f AS (SELECT median(lag) AS fleet FROM d)
                SELECT o.SOPInstanceUID, 'clock-drift', ?, 'acquisition_datetime', CAST(round(d.lag - f.fleet, 1) AS VARCHAR),
                  'Clock of ' || coalesce(o.StationName, o.device) || ' is '
                    || CAST(round(abs(d.lag - f.fleet), 1) AS VARCHAR) || ' min '
                    || CASE WHEN d.lag < f.fleet THEN 'ahead of' ELSE 'behind' END
                    || ' the other devices (median acquisition-to-receipt lag ' || CAST(round(d.lag, 1) AS VARCHAR)
                    || ' min over ' || CAST(d.n AS VARCHAR) || ' instances; fleet median '
                    || CAST(round(f.fleet, 1) AS VARCHAR) || ' min)',
                  CAST(round(f.fleet - d.lag, 1) AS VARCHAR)
                FROM o JOIN d USING (device) CROSS JOIN f JOIN _cur_scope s ON s.SOPInstanceUID = o.SOPInstanceUID
                WHERE (SELECT count(*) FROM d) >= 2 AND abs(d.lag - f.fleet) > ?""",
            [severity, float(limit_min)],
        )

    def identity_rows(self, keywords: Sequence[str], uids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """``keyword → text`` of the scope's instances (or of ``uids``) with an Accession Number."""
        have = self.columns("instances")
        wanted = ["SOPInstanceUID", "AccessionNumber", *keywords]
        select = ", ".join(
            f"CAST(i.{_q(k)} AS VARCHAR) AS {_q(k)}" if k in have else f"NULL AS {_q(k)}" for k in wanted
        )
        if uids is not None:
            self.sql.load_temp("_wl_batch", pa.table({"u": pa.array(list(uids), pa.string())}))
            scope = "i.SOPInstanceUID IN (SELECT u FROM _wl_batch)"
        else:
            scope = "i.SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope)"
        rows = self.sql.rows(
            f"SELECT {select} FROM instances i WHERE {scope} AND i.AccessionNumber IS NOT NULL "
            "AND trim(i.AccessionNumber) <> ''"
        )
        if uids is not None:
            self.sql.run("DROP TABLE IF EXISTS _wl_batch")
        return [dict(zip(wanted, r, strict=True)) for r in rows]

    # ---- writing flags ---------------------------------------------------------------------

    def replace_flags(self, flags: pa.Table, also_duplicates_of: Sequence[str], run: Mapping[str, object]) -> None:
        """In one transaction: drop the scope's flags (and the ``duplicate`` flags of
        ``also_duplicates_of``, later copies outside the scope), add ``flags`` and the
        ``curate_runs`` row ``run``."""
        self.require_writable("curation")
        self.ensure_tables()
        if also_duplicates_of:
            self.sql.load_temp("_cur_extra", pa.table({"u": pa.array(sorted(also_duplicates_of), pa.string())}))
        with self.sql.transaction():
            self.sql.run("DELETE FROM quality_flags WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM _cur_scope)")
            if also_duplicates_of:
                self.sql.run(
                    "DELETE FROM quality_flags WHERE rule = 'duplicate' AND SOPInstanceUID IN (SELECT u FROM _cur_extra)"
                )
            self.sql.append("quality_flags", flags)
            cols = list(run)
            self.sql.run(
                f"INSERT INTO curate_runs ({', '.join(_q(c) for c in cols)}) VALUES ({', '.join('?' for _ in cols)})",
                [run[c] for c in cols],
            )
        if also_duplicates_of:
            self.sql.run("DROP TABLE IF EXISTS _cur_extra")

    def replace_rule_flags(self, rule: str, uids: Sequence[str], flags: pa.Table) -> None:
        """Replace the ``rule`` flags of ``uids`` by ``flags`` (one check over received instances)."""
        self.require_writable("curation")
        self.ensure_tables()
        self.sql.load_temp("_rule_uids", pa.table({"u": pa.array([str(u) for u in uids], pa.string())}))
        with self.sql.transaction():
            self.sql.run(
                "DELETE FROM quality_flags WHERE rule = ? AND SOPInstanceUID IN (SELECT u FROM _rule_uids)", [rule]
            )
            self.sql.append("quality_flags", flags)
        self.sql.run("DROP TABLE IF EXISTS _rule_uids")

    def import_table(self, name: str, table: pa.Table) -> None:
        """Add rows of a curation table copied from another lake (``dicomlake import``): flags
        replace the flags of their instances, a mapping version replaces the same version,
        curation runs are appended."""
        self.require_writable("importing curation tables")
        self.ensure_tables()
        if not table.num_rows:
            return
        key = {"quality_flags": "SOPInstanceUID", "name_mappings": "version"}.get(name)
        with self.sql.transaction():
            if key is not None:
                self.sql.load_temp("_imp_keys", pa.table({"k": table.column(key).unique()}))
                self.sql.run(f"DELETE FROM {_q(name)} WHERE {_q(key)} IN (SELECT k FROM _imp_keys)")
            self.sql.append(name, table)
        if key is not None:
            self.sql.run("DROP TABLE IF EXISTS _imp_keys")

    # ---- name mappings ---------------------------------------------------------------------

    def mapping_version(self) -> int | None:
        """The latest confirmed name-mapping version, None when there is none."""
        if not self.has_table("name_mappings"):
            return None
        row = self.sql.rows("SELECT max(version) FROM name_mappings")
        return int(row[0][0]) if row and row[0][0] is not None else None

    def mapping(self, version: int) -> list[tuple[str, str, str]]:
        """``(field, variant, standard)`` of one version."""
        return [
            (str(f), str(v), str(s))
            for f, v, s in self.sql.rows(
                "SELECT field, variant, standard FROM name_mappings WHERE version = ? ORDER BY field, variant",
                [version],
            )
        ]

    def name_variants(self, fields: Iterable[str]) -> dict[str, list[tuple[str, int]]]:
        """Distinct values of each name field with their instance counts (dose-event protocols
        included, each irradiation event once)."""
        from dicomlake.events import distinct_events_sql

        has_events = self.has_table("dose_events")
        out: dict[str, list[tuple[str, int]]] = {}
        for f in fields:
            col = NAME_FIELDS[f]
            sql = (
                f"SELECT trim({_q(col)}) AS v, count(*) AS n FROM instances "
                f"WHERE trim(coalesce({_q(col)}, '')) <> '' GROUP BY 1"
            )
            if f == "protocol" and has_events:
                sql = (
                    f"SELECT v, sum(n) AS n FROM ({sql} UNION ALL SELECT trim(acquisition_protocol) AS v, count(*) AS n "
                    f"FROM ({distinct_events_sql()}) d "
                    "WHERE trim(coalesce(acquisition_protocol, '')) <> '' GROUP BY 1) u GROUP BY v"
                )
            out[f] = [(str(v), int(n)) for v, n in self.sql.rows(sql + " ORDER BY 2 DESC, 1")]
        return out

    def add_mapping_version(
        self, version: int, rows: Sequence[tuple[str, str, str]], *, confirmed_by: str, source_file: str
    ) -> None:
        """Store ``(field, variant, standard)`` rows as ``version`` and point the ``instances_std``
        view at it, in one transaction."""
        self.require_writable("confirming name mappings")
        self.ensure_tables()
        now = dt.datetime.now()
        table = pa.table(
            {
                "version": pa.array([version] * len(rows), pa.int32()),
                "field": pa.array([r[0] for r in rows], pa.string()),
                "variant": pa.array([r[1] for r in rows], pa.string()),
                "standard": pa.array([r[2] for r in rows], pa.string()),
                "confirmed_by": pa.array([confirmed_by] * len(rows), pa.string()),
                "confirmed_at": pa.array([now] * len(rows), pa.timestamp("us")),
                "source_file": pa.array([source_file] * len(rows), pa.string()),
            }
        )
        with self.sql.transaction():
            self.sql.append("name_mappings", table)
            self.sql.run("DROP VIEW IF EXISTS instances_std")
            self.sql.run(f"CREATE VIEW instances_std AS {std_relation(version)}")

    def mapping_history(self) -> list[tuple[int, int, str | None, dt.datetime | None, str | None]]:
        """Per version: mappings, who confirmed, when, from which file."""
        if not self.has_table("name_mappings"):
            return []
        return [
            (int(r[0]), int(r[1]), r[2], r[3], r[4])
            for r in self.sql.rows(
                "SELECT version, count(*), min(confirmed_by), max(confirmed_at), min(source_file) "
                "FROM name_mappings GROUP BY version ORDER BY version"
            )
        ]

    def std_relation(self, table: str = "instances") -> str:
        """SQL (DuckDB dialect, for the query layer) of ``instances`` with the ``*_std`` columns."""
        return std_relation(self.mapping_version(), table)

    def std_value_sql(self, field: str, expr: str) -> str:
        """SQL mapping one expression through a name field's latest mapping."""
        return std_value_sql(self.mapping_version(), field, expr)


def std_relation(version: int | None, table: str = "instances") -> str:
    """SQL of ``table`` with the ``*_std`` columns of mapping ``version`` (raw values without one)."""
    cols = []
    joins = []
    for n, (f, col) in enumerate(NAME_FIELDS.items()):
        if version is None:
            cols.append(f"nullif(trim(i.\"{col}\"), '') AS {f}_std")
            continue
        cols.append(f"coalesce(m{n}.standard, nullif(trim(i.\"{col}\"), '')) AS {f}_std")
        joins.append(
            f"LEFT JOIN (SELECT variant, standard FROM name_mappings WHERE version = {int(version)} "
            f"AND field = '{f}') m{n} ON m{n}.variant = trim(i.\"{col}\")"
        )
    return f"SELECT i.*, {', '.join(cols)} FROM {table} i {' '.join(joins)}".rstrip()


def std_value_sql(version: int | None, field: str, expr: str) -> str:
    """SQL mapping one expression (e.g. ``d.acquisition_protocol``) through a field's mapping ``version``."""
    if version is None:
        return f"nullif(trim({expr}), '')"
    if field not in NAME_FIELDS:
        raise ValueError(f"name field {field!r}: one of {', '.join(NAME_FIELDS)}")
    return (
        f"coalesce((SELECT standard FROM name_mappings WHERE version = {int(version)} AND field = '{field}' "
        f"AND variant = trim({expr}) LIMIT 1), nullif(trim({expr}), ''))"
    )


def curation_of(store: Any) -> LakeCuration:
    """The curation door of any open store (DuckDB, PostgreSQL, Parquet, a running service's)."""
    own = getattr(store, "curation", None)
    return own() if callable(own) else LakeCuration.of(store)


__all__ = [
    "CURATION_SCHEMAS",
    "FLAG_COLUMNS",
    "NAME_FIELDS",
    "LakeCuration",
    "curation_of",
    "std_relation",
    "std_value_sql",
]
