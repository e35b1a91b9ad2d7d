"""Schema migrations of a PostgreSQL lake, recorded in the ``schema_migrations`` table.

Each migration runs once, in its own transaction, under a transaction-level advisory lock,
so several processes opening the same lake at once (listener, workers, web) apply each
migration exactly once and the others wait and find it done. A lake created by an older
dicomlake is upgraded in place when a newer one opens it for writing; a read-only open
of a lake whose schema is older than this code raises :class:`~dicomlake.errors.ConfigError`
naming the command that upgrades it.

Typed ``instances`` columns added to the shipped column list, or by a user's
``columns_file``, are added after the numbered migrations (``ALTER TABLE ADD COLUMN``), as
the DuckDB store does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dicomlake.lakeschema import InstanceColumns, table_schemas
from dicomlake.store.pullstate import pull_state_ddl

# pg_advisory_xact_lock keys (any constants unique to dicomlake)
MIGRATION_LOCK = 0x44_4C_4D_49  # "DLMI"


def pg_type(t: pa.DataType) -> str:
    """The PostgreSQL type that holds an Arrow type without loss."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "TEXT"
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return "SMALLINT"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_float32(t):
        return "REAL"
    if pa.types.is_floating(t):
        return "DOUBLE PRECISION"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "BYTEA"
    raise TypeError(f"no PostgreSQL type for Arrow type {t}")


def _create(cur: Any, name: str, schema: pa.Schema) -> None:
    cols = ", ".join(f'"{f.name}" {pg_type(f.type)}' for f in schema)
    cur.execute(f'CREATE TABLE IF NOT EXISTS "{name}" ({cols})')


def _m1_tables(cur: Any, columns: InstanceColumns) -> None:
    for name, schema in table_schemas(columns).items():
        _create(cur, name, schema)
    cur.execute(
        "CREATE TABLE IF NOT EXISTS ingest_runs (run_id TEXT, started_at TIMESTAMP, finished_at TIMESTAMP, "
        "sources TEXT, files BIGINT, instances BIGINT, rejected BIGINT, skipped BIGINT, status TEXT)"
    )
    cur.execute("CREATE TABLE IF NOT EXISTS lake_meta (key TEXT PRIMARY KEY, value TEXT)")


# DuckDB functions the query layer and the audits use, defined with DuckDB's names.
_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION list_contains(anyarray, anyelement) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT $2 = ANY($1) $$;
CREATE OR REPLACE FUNCTION string_split(text, text) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT string_to_array($1, $2) $$;
CREATE OR REPLACE FUNCTION _dl_first_sfunc(anyelement, anyelement) RETURNS anyelement
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT COALESCE($1, $2) $$;
CREATE OR REPLACE FUNCTION epoch(timestamp) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT extract(epoch FROM $1)::double precision $$;
CREATE OR REPLACE FUNCTION epoch(interval) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT extract(epoch FROM $1)::double precision $$;
CREATE OR REPLACE FUNCTION strftime(timestamp, text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char($1, replace(replace(replace(replace(replace(replace(replace($2,
        '%Y', 'YYYY'), '%m', 'MM'), '%d', 'DD'), '%H', 'HH24'), '%M', 'MI'), '%S', 'SS'), '%j', 'DDD')) $$;
CREATE OR REPLACE FUNCTION strftime(date, text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT strftime($1::timestamp, $2) $$;
CREATE OR REPLACE FUNCTION _dl_median_final(double precision[]) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest($1) AS x $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'first' AND prokind = 'a') THEN
    CREATE AGGREGATE first(anyelement) (SFUNC = _dl_first_sfunc, STYPE = anyelement);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'any_value' AND prokind = 'a') THEN
    CREATE AGGREGATE any_value(anyelement) (SFUNC = _dl_first_sfunc, STYPE = anyelement);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'median' AND prokind = 'a') THEN
    CREATE AGGREGATE median(double precision) (SFUNC = array_append, STYPE = double precision[],
        FINALFUNC = _dl_median_final, INITCOND = '{}');
  END IF;
END $$;
"""


def _m2_functions(cur: Any, columns: InstanceColumns) -> None:
    cur.execute(_FUNCTIONS)


def _m3_keys_and_indexes(cur: Any, columns: InstanceColumns) -> None:
    # a lake written before the key existed may hold two rows of one instance: keep the later
    for table in ("instances", "dicom_json"):
        cur.execute(
            f'DELETE FROM "{table}" a USING "{table}" b WHERE a."SOPInstanceUID" = b."SOPInstanceUID" '
            "AND a.ctid < b.ctid"
        )
    cur.execute('ALTER TABLE instances ADD PRIMARY KEY ("SOPInstanceUID")')
    cur.execute('ALTER TABLE dicom_json ADD PRIMARY KEY ("SOPInstanceUID")')
    cur.execute('CREATE INDEX IF NOT EXISTS elements_uid ON elements ("SOPInstanceUID")')
    cur.execute("CREATE INDEX IF NOT EXISTS elements_path_key ON elements (path_key)")
    cur.execute('CREATE INDEX IF NOT EXISTS dose_events_uid ON dose_events ("SOPInstanceUID")')
    cur.execute("CREATE INDEX IF NOT EXISTS rejects_source_path ON rejects (source_path)")
    cur.execute('CREATE INDEX IF NOT EXISTS instances_study ON instances ("StudyInstanceUID")')
    cur.execute('CREATE INDEX IF NOT EXISTS instances_study_date ON instances ("StudyDate")')


def _m4_pull_state(cur: Any, columns: InstanceColumns) -> None:
    for ddl in pull_state_ddl(pg_type):
        cur.execute(ddl)


def _m5_rejects_key(cur: Any, columns: InstanceColumns) -> None:
    # writers upsert rejects on their file, with no lake-wide lock: one row per source_path
    # (a lake written before may hold two rows of one file: keep the later)
    cur.execute("DELETE FROM rejects a USING rejects b WHERE a.source_path = b.source_path AND a.ctid < b.ctid")
    cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS rejects_source_path_key ON rejects (source_path)")
    cur.execute("DROP INDEX IF EXISTS rejects_source_path")  # the unique index serves its lookups


def _m6_element_store(cur: Any, columns: InstanceColumns) -> None:
    from dicomlake.store import pg_elements

    pg_elements.create(cur)


def _m7_filter_views(cur: Any, columns: InstanceColumns) -> None:
    from dicomlake.store import pg_elements

    pg_elements.create_filter_views(cur)


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: its number, what it does, and the function that does it."""

    version: int
    description: str
    apply: Callable[[Any, InstanceColumns], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "lake tables (instances, elements, dicom_json, dose_events, rejects, ingest_runs)", _m1_tables),
    Migration(
        2, "DuckDB-named SQL functions (list_contains, string_split, first, any_value, median, ...)", _m2_functions
    ),
    Migration(3, "primary keys on SOPInstanceUID; indexes for upserts and element filters", _m3_keys_and_indexes),
    Migration(4, "pull state (pull_runs, pull_studies) for dicomlake pull --resume", _m4_pull_state),
    Migration(5, "unique rejects.source_path: writers upsert without a lake-wide lock", _m5_rejects_key),
    Migration(
        6,
        "element store: element_keys, element_runs, element_delta, instances._iid; elements is a view",
        _m6_element_store,
    ),
    Migration(
        7,
        "element filter views (element_nums, element_texts, element_values): 64-bit masks per word of instance numbers",
        _m7_filter_views,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this code writes."""


def current_version(con: Any) -> int:
    """The lake's schema version (0 for an empty database)."""
    row = con.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(con: Any, columns: InstanceColumns, target: int | None = None) -> list[int]:
    """Bring the lake's schema up to ``target`` (default: the latest); the versions applied.

    ``con`` is a psycopg connection in autocommit mode.
    """
    target = SCHEMA_VERSION if target is None else target
    applied: list[int] = []
    for m in MIGRATIONS:
        if m.version > target:
            break
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = con.execute("SELECT 1 FROM schema_migrations WHERE version = %s", [m.version]).fetchone()
            if done:
                continue
            with con.cursor() as cur:
                m.apply(cur, columns)
            con.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", [m.version, m.description]
            )
            con.execute(
                "INSERT INTO lake_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                [str(m.version)],
            )
            applied.append(m.version)
    if target >= 1:
        ensure_columns(con, columns)
    return applied


def ensure_columns(con: Any, columns: InstanceColumns) -> list[str]:
    """Add the typed columns the lake lacks (shipped list grew, or a user's columns_file)."""
    added: list[str] = []
    schemas = table_schemas(columns)
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
    ).fetchall()
    have: dict[str, set[str]] = {}
    for t, c in rows:
        have.setdefault(t, set()).add(c)
    schemas.pop("elements", None)  # a view over the element store (store/pg_elements.py)
    missing = [(n, f) for n, s in schemas.items() for f in s if f.name not in have.get(n, set())]
    if not missing:
        return added
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        for name, f in missing:
            con.execute(f'ALTER TABLE "{name}" ADD COLUMN IF NOT EXISTS "{f.name}" {pg_type(f.type)}')
            added.append(f"{name}.{f.name}")
    return added
