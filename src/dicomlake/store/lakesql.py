"""One statement, every engine: the executor the Store's curation, name-mapping and SC-table
methods run their SQL through.

The statements are written once, in DuckDB's dialect, and run as written on a DuckDB lake
(and on a Parquet lake's in-memory DuckDB, read-only). On PostgreSQL sqlglot parses them
and writes PostgreSQL (every identifier quoted, so ``SOPInstanceUID`` keeps its case; ``?``
parameters become psycopg's ``%s``; ``round(double, n)`` rounds a ``numeric``, as
PostgreSQL has no ``round(double precision, int)``). No token rewriting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, Protocol

import pyarrow as pa

from dicomlake.errors import ConfigError, QueryError

_PARAM = "__dicomlake_param__"


@lru_cache(maxsize=512)
def to_postgres_sql(sql: str) -> str:
    """A DuckDB statement in PostgreSQL's dialect, for psycopg (``%s`` parameters)."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            return exp.var(_PARAM)
        if isinstance(node, exp.Round) and node.args.get("decimals") is not None:
            # PostgreSQL rounds numerics only; trim_scale keeps "1.5", not "1.500000"
            inner = exp.Round(this=exp.cast(node.this, "numeric"), decimals=node.args["decimals"])
            return exp.cast(exp.func("trim_scale", inner), "double")
        return node

    tree = tree.transform(fix)
    text = tree.sql(dialect="postgres", identify=True)
    return text.replace("%", "%%").replace(_PARAM, "%s")


def duckdb_type(t: pa.DataType) -> str:
    """The column type of an Arrow type, in DuckDB's dialect (sqlglot writes PostgreSQL's).

    >>> duckdb_type(pa.string()), duckdb_type(pa.int32()), duckdb_type(pa.timestamp("us"))
    ('VARCHAR', 'BIGINT', 'TIMESTAMP')
    """
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_date(t):
        return "DATE"
    raise ValueError(f"no column type for {t}")


class LakeSql(Protocol):
    """What the Store's SQL-owning modules need from an engine."""

    dialect: str
    writable: bool

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, params: Sequence[object] = ()) -> None: ...

    def transaction(self) -> contextlib.AbstractContextManager[None]: ...

    def columns(self, table: str) -> set[str]: ...

    def load_temp(self, name: str, table: pa.Table) -> None: ...

    def append(self, name: str, table: pa.Table) -> None: ...


class DuckDBSql:
    """A DuckDB connection: a lake file (writable unless opened read-only) or a Parquet lake's views."""

    dialect = "duckdb"

    def __init__(self, con: Any, *, writable: bool) -> None:
        self.con = con
        self.writable = writable

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        import duckdb

        try:
            return self.con.execute(sql, list(params)).fetchall()  # type: ignore[no-any-return]
        except duckdb.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}") from exc

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        import duckdb

        try:
            self.con.execute(sql, list(params))
        except duckdb.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def columns(self, table: str) -> set[str]:
        return {
            r[0]
            for r in self.con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = 'main'",
                [table],
            ).fetchall()
        }

    def load_temp(self, name: str, table: pa.Table) -> None:
        # registered, not a replacement scan: those are off once user SQL locked the instance
        self.con.register("_dl_arrow", table)
        try:
            self.con.execute(f'CREATE OR REPLACE TEMP TABLE "{name}" AS SELECT * FROM _dl_arrow')
        finally:
            self.con.unregister("_dl_arrow")

    def append(self, name: str, table: pa.Table) -> None:
        self.con.register("_dl_arrow", table)
        try:
            self.con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM _dl_arrow')
        finally:
            self.con.unregister("_dl_arrow")


_PG_TYPES = {
    pa.string(): "TEXT",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE PRECISION",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.timestamp("us"): "TIMESTAMP",
}


class PostgresSql:
    """A :class:`~dicomlake.store.postgres.PostgresStore`'s connection (statements translated by sqlglot)."""

    dialect = "postgres"

    def __init__(self, store: Any) -> None:
        self.store = store
        self.con = store.connection
        self.writable = not store.read_only

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        pg = to_postgres_sql(sql)
        try:
            with self.con.cursor() as cur:
                cur.execute(pg, list(params))
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {str(exc).strip()}\n  in: {pg.strip()[:300]}") from exc

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        self.rows(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.con.transaction():
            yield

    def columns(self, table: str) -> set[str]:
        rows = self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "AND (table_schema = current_schema() OR table_schema LIKE 'pg_temp%%')",
            [table],
        ).fetchall()
        return {r[0] for r in rows}

    def load_temp(self, name: str, table: pa.Table) -> None:
        cols = ", ".join(f'"{f.name}" {_PG_TYPES.get(f.type, "TEXT")}' for f in table.schema)
        with self.con.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS pg_temp."{name}"')
            cur.execute(f'CREATE TEMP TABLE "{name}" ({cols})')
            if table.num_rows:
                self.store._copy_in(cur, name, table)

    def append(self, name: str, table: pa.Table) -> None:
        if table.num_rows:
            with self.con.cursor() as cur:
                self.store._copy_in(cur, name, table)


class ReadOnlySql:
    """A lake answered through ``store.query`` only (a running service's): reads, no writes."""

    dialect = "duckdb"
    writable = False

    def __init__(self, store: Any) -> None:
        self.store = store

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        tab = self.store.query(sql, list(params))
        cols = [c.to_pylist() for c in tab.columns]
        return list(zip(*cols, strict=True)) if cols else []

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        raise ConfigError("this lake is answered by a running service, read-only; stop `dicomlake serve` to write")

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        raise ConfigError("this lake is answered by a running service, read-only")

    def columns(self, table: str) -> set[str]:
        return {
            r[0]
            for r in self.rows(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = 'main'",
                [table],
            )
        }

    def load_temp(self, name: str, table: pa.Table) -> None:
        self.run("")

    def append(self, name: str, table: pa.Table) -> None:
        self.run("")


def lake_sql(store: Any) -> LakeSql:
    """The executor of any open store (DuckDB, PostgreSQL, Parquet, or a service's)."""
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.parquet import ParquetStore
    from dicomlake.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return PostgresSql(store)
    if isinstance(store, DuckDBStore):
        return DuckDBSql(store.con, writable=not store.read_only)
    if isinstance(store, ParquetStore):
        return DuckDBSql(store.con, writable=False)
    return ReadOnlySql(store)


__all__ = ["DuckDBSql", "LakeSql", "PostgresSql", "ReadOnlySql", "duckdb_type", "lake_sql", "to_postgres_sql"]
