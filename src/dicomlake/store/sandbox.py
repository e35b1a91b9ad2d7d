"""Read-only user SQL: one sandbox for every way a statement reaches the lake.

``dicomlake sql``, :meth:`dicomlake.query.lake.Lake.sql`, the service's ``POST /internal/query``
and the web app's copy of it all end here. Two independent locks guard the lake:

1. **The statement** (:func:`check_sql`): parsed with sqlglot; exactly one read-only query
   (SELECT / WITH … SELECT / FROM / VALUES / TABLE / set operations, DESCRIBE, SHOW,
   SUMMARIZE, PIVOT, EXPLAIN without ANALYZE). A data-changing or schema-changing node anywhere
   in the tree (``WITH x AS (…) DELETE …``), a session or engine command (SET, PRAGMA,
   ATTACH, INSTALL, LOAD, COPY, CALL, …), a table function that reads files or the network
   (``read_csv``, ``read_text``, ``read_blob``, ``glob``, ``query`` …), a file name used as a
   table (``FROM '/etc/passwd'``) and server-side file or session functions (``getenv``,
   ``pg_read_file``, ``set_config`` …) are refused with one line saying what to do.
2. **The engine**: DuckDB runs the statement in a ``READ ONLY`` transaction on an instance
   whose ``enable_external_access`` is off and whose configuration is locked
   (:func:`lock_duckdb`); PostgreSQL in a ``READ ONLY`` transaction with
   ``statement_timeout``. Either lock alone refuses every payload of the tests.

Limits: ``query.time_limit_s`` (DuckDB: a timer interrupts the query; PostgreSQL:
``statement_timeout``) and a row limit. A cut result carries ``dicomlake.truncated`` in its
schema metadata (it survives Arrow IPC), so every caller can say "showing N; more were cut".
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from dicomlake.errors import QueryError

TRUNCATED_KEY = b"dicomlake.truncated"

# table functions a user statement may use in FROM (no file, network or SQL-string access)
_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "explode",
        "duckdb_tables",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_schemas",
        "duckdb_types",
        "duckdb_functions",
        "duckdb_constraints",
        "duckdb_indexes",
        "pragma_table_info",
        "pragma_show",
        "information_schema",
    }
)
# scalar functions refused anywhere (host files, environment, other SQL, session settings, sleeping)
_DENIED_FUNCTION_PREFIXES = (
    "read_",
    "getenv",
    "glob",
    "pg_read",
    "pg_ls_",
    "pg_stat_file",
    "pg_file",
    "lo_",
    "dblink",
    "set_config",
    "pg_sleep",
    "sleep",
    "query",
    "pg_terminate",
    "pg_cancel",
    "pg_reload",
    "pg_rotate",
    "pg_promote",
    "current_setting",
    "sniff_",
    "parquet_",
    "iceberg_",
    "delta_",
    "sqlite_",
    "postgres_",
    "mysql_",
    "http",
    "load_",
    "install_",
    "make_secret",
    "which_secret",
    "duckdb_secrets",
    "duckdb_extensions",
    "duckdb_settings",
    "duckdb_temporary_files",
    "duckdb_databases",
    "database_list",
    "pragma_database",
    "checkpoint",
    "force_checkpoint",
    "txt_to_xml",
    "xml",
    "ts_stat",
    "to_json_file",
)
_READ_ONLY_ROOTS: tuple[type[exp.Expression], ...] = tuple(
    t
    for t in (
        getattr(exp, n, None)
        for n in ("Select", "Union", "Intersect", "Except", "SetOperation", "Values", "Describe", "Summarize", "Show")
    )
    if isinstance(t, type)
)
_WRITE_NODES: tuple[type[exp.Expression], ...] = tuple(
    t
    for t in (
        getattr(exp, n, None)
        for n in (
            "Insert",
            "Update",
            "Delete",
            "Merge",
            "Create",
            "Drop",
            "Alter",
            "AlterTable",
            "TruncateTable",
            "Command",
            "Copy",
            "Set",
            "SetItem",
            "Pragma",
            "Attach",
            "Detach",
            "Install",
            "Use",
            "Transaction",
            "Commit",
            "Rollback",
            "LoadData",
            "Kill",
            "Grant",
            "Revoke",
            "Export",
            "Analyze",
            "Into",
            "Lock",
            "Cache",
            "Uncache",
            "Refresh",
        )
    )
    if isinstance(t, type)
)
_WHAT = "one read-only query (SELECT, WITH … SELECT, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, PIVOT, EXPLAIN)"


def _refuse(reason: str, sql: str) -> QueryError:
    one_line = " ".join(sql.split())
    return QueryError(f"refused: {reason}; user SQL may be {_WHAT} over the lake's tables — got {one_line[:80]!r}")


def _func_name(node: Any) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    name = node.sql_name() if isinstance(node, exp.Func) else ""
    return name.lower()


def _check_tree(tree: Any, sql: str) -> None:
    for node in tree.walk():
        if isinstance(node, _WRITE_NODES):
            what = type(node).__name__.upper()
            if isinstance(node, exp.Command):
                what = str(node.this).upper()
            raise _refuse(f"{what} is not a query", sql)
        if isinstance(node, exp.Table):
            target = node.this
            if isinstance(target, exp.Func):
                name = _func_name(target)
                if name not in _TABLE_FUNCTIONS and not isinstance(target, (exp.GenerateSeries, exp.Unnest)):
                    raise _refuse(f"table function {name}() reads outside the lake and is not allowed", sql)
                continue
            if isinstance(target, exp.Literal) or (
                isinstance(target, exp.Identifier) and any(ch in target.name for ch in "/\\:.*?")
            ):
                raise _refuse(f"{target.name!r} names a file, not a table of the lake", sql)
        if isinstance(node, exp.Func) and not isinstance(node, exp.AggFunc):
            name = _func_name(node)
            if isinstance(node, (exp.ReadCSV,)) or (name and name.startswith(_DENIED_FUNCTION_PREFIXES)):
                raise _refuse(f"function {name}() reads files, settings or other SQL and is not allowed", sql)


def check_sql(sql: str, dialect: str = "duckdb") -> str:
    """The statement if it is one read-only query; otherwise :class:`QueryError` (one line).

    >>> check_sql("SELECT Modality, count(*) FROM instances GROUP BY ALL")
    'SELECT Modality, count(*) FROM instances GROUP BY ALL'
    >>> try:
    ...     check_sql("WITH x AS (SELECT 1) DELETE FROM instances")
    ... except QueryError as exc:
    ...     print(str(exc)[:30])
    refused: DELETE is not a query
    """
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise _refuse("the statement is empty", sql)
    head = text.split(None, 2)
    if head[0].lower() == "explain":
        if len(head) > 1 and head[1].lower() in ("analyze", "analyse", "verbose", "(analyze", "(analyse"):
            raise _refuse("EXPLAIN ANALYZE runs the statement", sql)
        check_sql(text[len(head[0]) :], dialect)
        return text
    import logging

    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    try:
        trees = sqlglot.parse(text, read=dialect)
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(f"the statement does not parse ({first})", sql) from exc
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise _refuse(f"{len(trees)} statements given, one is allowed", sql)
    tree = trees[0]
    if not isinstance(tree, (*_READ_ONLY_ROOTS, exp.Pivot)):
        what = str(tree.this).upper() if isinstance(tree, exp.Command) else type(tree).__name__.upper()
        raise _refuse(f"{what} is not a query", sql)
    _check_tree(tree, sql)
    return text


def truncated(table: pa.Table) -> int | None:
    """The row limit a sandboxed result was cut at, or None when it holds every row."""
    meta = table.schema.metadata or {}
    raw = meta.get(TRUNCATED_KEY)
    return int(raw) if raw else None


def _mark(table: pa.Table, cut_at: int | None) -> pa.Table:
    if cut_at is None:
        return table
    meta = dict(table.schema.metadata or {})
    meta[TRUNCATED_KEY] = str(cut_at).encode()
    return table.replace_schema_metadata(meta)


def _take(batches: Iterable[pa.RecordBatch], schema: pa.Schema, max_rows: int | None) -> pa.Table:
    got: list[pa.RecordBatch] = []
    n = 0
    for b in batches:
        got.append(b)
        n += b.num_rows
        if max_rows is not None and n > max_rows:
            break
    table = pa.Table.from_batches(got, schema=schema) if got else schema.empty_table()
    if max_rows is not None and table.num_rows > max_rows:
        return _mark(table.slice(0, max_rows), max_rows)
    return table


def _settings_limits(max_rows: int | None, time_limit_s: float | None) -> tuple[int | None, float | None]:
    from dicomlake.config import get_settings

    q = get_settings().query
    return (q.max_rows if max_rows is None else (max_rows or None)), (
        q.time_limit_s if time_limit_s is None else (time_limit_s or None)
    )


# ---- DuckDB ------------------------------------------------------------------------------


def lock_duckdb(con: Any, allowed_directories: Sequence[str | Path] = ()) -> None:
    """Take file, network and extension access away from a DuckDB instance, for good.

    ``enable_external_access`` is global to the instance and cannot be turned back on; with
    ``lock_configuration`` no statement can change a setting afterwards. The instance's own
    database file, WAL and temporary folder stay usable (DuckDB allows them itself);
    ``allowed_directories`` adds folders a Parquet lake's views read.
    """
    import duckdb

    # a cursor of its own: the settings are the instance's, and the caller's connection may be
    # in use by another thread (the service's drainer writes on it)
    cur = con.cursor()
    try:
        locked = cur.execute("SELECT current_setting('lock_configuration')").fetchall()
        if locked and locked[0][0] in (True, "true"):
            return
        if allowed_directories:
            dirs = ", ".join("'" + (str(d).rstrip("/") + "/").replace("'", "''") + "'" for d in allowed_directories)
            cur.execute(f"SET allowed_directories = [{dirs}]")
        cur.execute("SET enable_external_access = false")
        cur.execute("SET lock_configuration = true")
    except duckdb.Error as exc:  # pragma: no cover - a DuckDB without these settings
        raise QueryError(f"cannot lock the DuckDB instance for user SQL: {exc}") from exc
    finally:
        cur.close()


def query_readonly_duckdb(
    con: Any,
    sql: str,
    params: Mapping[str, object] | Sequence[object] | None = None,
    *,
    max_rows: int | None = None,
    time_limit_s: float | None = None,
    allowed_directories: Sequence[str | Path] = (),
) -> pa.Table:
    """``query_readonly`` of the stores on a DuckDB instance (a DuckDB lake, a Parquet lake's
    views): check the statement, lock the instance (for good; the first call does it, with
    ``allowed_directories`` the only folders it may still read), run it read-only."""
    text = check_sql(sql)
    lock_duckdb(con, allowed_directories=allowed_directories)
    return run_duckdb(con, text, params, max_rows=max_rows, time_limit_s=time_limit_s, checked=True)


def run_duckdb(
    con: Any,
    sql: str,
    params: Mapping[str, object] | Sequence[object] | None = None,
    *,
    max_rows: int | None = None,
    time_limit_s: float | None = None,
    checked: bool = False,
) -> pa.Table:
    """Run a user statement on a cursor of ``con`` (an instance :func:`lock_duckdb` locked)
    in a READ ONLY transaction, interrupted after ``time_limit_s``, cut after ``max_rows``."""
    import duckdb

    max_rows, time_limit_s = _settings_limits(max_rows, time_limit_s)
    text = sql if checked else check_sql(sql, "duckdb")
    cur = con.cursor()
    timer = threading.Timer(time_limit_s, cur.interrupt) if time_limit_s else None
    try:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        if timer is not None:
            timer.start()
        rel = cur.sql(text, params=params) if params else cur.sql(text)
        if rel is None:
            return pa.table({})
        reader = rel.to_arrow_reader(min(max_rows + 1, 100_000) if max_rows else 100_000)
        return _take(reader, reader.schema, max_rows)
    except duckdb.InterruptException as exc:
        raise QueryError(
            f"the query ran longer than query.time_limit_s = {time_limit_s:g} s and was stopped; narrow it "
            "(a WHERE clause, LIMIT) or raise DICOMLAKE_QUERY__TIME_LIMIT_S"
        ) from exc
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QueryError(f"{type(exc).__name__}: {first}") from exc
    finally:
        if timer is not None:
            timer.cancel()
        try:
            cur.execute("ROLLBACK")
        except duckdb.Error:
            pass
        cur.close()


# ---- PostgreSQL --------------------------------------------------------------------------


def run_postgres(
    store: Any,
    sql: str,
    params: Mapping[str, object] | Sequence[object] | None = None,
    *,
    max_rows: int | None = None,
    time_limit_s: float | None = None,
) -> pa.Table:
    """Run a user statement (DuckDB dialect, translated) on a PostgreSQL lake in a READ ONLY
    transaction with ``statement_timeout``; cut after ``max_rows``."""
    import psycopg

    from dicomlake.store.lakesql import to_postgres
    from dicomlake.store.postgres import _arrow

    max_rows, time_limit_s = _settings_limits(max_rows, time_limit_s)
    text = check_sql(sql, "duckdb")
    pg_sql, pg_params = to_postgres(text, params, store._sql_names)
    check_sql(re.sub(r"%%|%s|%\([^)]*\)s", lambda m: "%" if m.group() == "%%" else "NULL", pg_sql), "postgres")
    conn = store.connection
    role = _pg_reader_role(store)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            if role:
                cur.execute(f'SET LOCAL ROLE "{role}"')
            if time_limit_s:
                cur.execute(f"SET LOCAL statement_timeout = {int(time_limit_s * 1000)}")
            cur.execute(pg_sql, pg_params)
            if cur.description is None:
                return pa.table({})
            rows = cur.fetchmany(max_rows + 1) if max_rows else cur.fetchall()
            table = _arrow(cur.description, rows)
            if max_rows and table.num_rows > max_rows:
                table = _mark(table.slice(0, max_rows), max_rows)
            # leave the transaction without committing anything (it is read-only anyway)
            raise _Rollback(table)
    except _Rollback as done:
        return done.table
    except psycopg.errors.QueryCanceled as exc:
        raise QueryError(
            f"the query ran longer than query.time_limit_s = {time_limit_s:g} s and was stopped; narrow it "
            "(a WHERE clause, LIMIT) or raise DICOMLAKE_QUERY__TIME_LIMIT_S"
        ) from exc
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QueryError(f"{type(exc).__name__}: {first}") from exc


PG_READER_ROLE = "dicomlake_sql_reader"


def _pg_reader_role(store: Any) -> str | None:
    """The role user SQL runs as on PostgreSQL: SELECT on the lake's tables and nothing else
    (not a superuser, no ``pg_read_server_files``), made once when the lake's user may create
    roles; None (statement check and READ ONLY only) when it may not."""
    import psycopg

    cached = getattr(store, "_sql_reader_role", None)
    if cached is not None:
        return cached or None
    conn = store.connection
    role = PG_READER_ROLE
    try:
        with conn.transaction():
            schema = conn.execute("SELECT current_schema()").fetchone()
            schema_name = str(schema[0]) if schema and schema[0] else "public"
            quoted = '"' + schema_name.replace('"', '""') + '"'
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(f'CREATE ROLE "{role}" NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT')
            conn.execute(f'GRANT USAGE ON SCHEMA {quoted} TO "{role}"')
            conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA {quoted} TO "{role}"')
            conn.execute(f'ALTER DEFAULT PRIVILEGES IN SCHEMA {quoted} GRANT SELECT ON TABLES TO "{role}"')
            member = conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [role]).fetchone()
            if not (member and member[0]):
                conn.execute(f'GRANT "{role}" TO CURRENT_USER')
    except psycopg.Error:
        store._sql_reader_role = ""
        return None
    store._sql_reader_role = role
    return role


class _Rollback(Exception):
    def __init__(self, table: pa.Table) -> None:
        super().__init__("rollback")
        self.table = table


__all__ = [
    "TRUNCATED_KEY",
    "check_sql",
    "lock_duckdb",
    "query_readonly_duckdb",
    "run_duckdb",
    "run_postgres",
    "truncated",
]
