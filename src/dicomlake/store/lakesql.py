"""One statement, every engine: the executor the Store's curation, name-mapping and SC-table
methods run their SQL through, and the translation of every DuckDB statement for PostgreSQL
(:func:`to_postgres`: the query layer's, the audits' and users' SQL as well).

The statements are written once, in DuckDB's dialect, and run as written on a DuckDB lake
(and on a Parquet lake's in-memory DuckDB, read-only). On PostgreSQL sqlglot parses them
and writes PostgreSQL (every identifier quoted, so ``SOPInstanceUID`` keeps its case; ``?``
parameters become psycopg's ``%s``; ``round(double, n)`` rounds a ``numeric``, as
PostgreSQL has no ``round(double precision, int)``). No token rewriting.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

import pyarrow as pa

from dicomlake.errors import ConfigError, QueryError

_MARK = "__dicomlake_param_{}__"
_MARK_RE = re.compile(r"__dicomlake_param_(\d+)__")


@lru_cache(maxsize=512)
def to_postgres_sql(sql: str) -> str:
    """A DuckDB statement in PostgreSQL's dialect, for psycopg (``%s`` parameters).

    Identifiers keep their case as written (every one quoted).
    """
    return translate(sql, frozenset())[0]


def to_postgres(
    sql: str,
    params: Mapping[str, object] | Sequence[object] | None = None,
    names: frozenset[str] = frozenset(),
) -> tuple[str, dict[str, object] | list[object]]:
    """One DuckDB statement and its parameters (``?``, ``$1`` or ``$name``), for psycopg.

    ``names`` are the lake's tables and ``table.column`` names: an identifier that matches one
    case-insensitively, as DuckDB resolves it, gets that name's spelling, quoted.

    >>> text, values = to_postgres("SELECT modality, '5%' AS p FROM instances WHERE SOPInstanceUID = ?",
    ...                            ["1.2"], frozenset({"instances.Modality", "instances.SOPInstanceUID", "instances"}))
    >>> print(text)
    SELECT "Modality", '5%%' AS "p" FROM "instances" WHERE "SOPInstanceUID" = %s
    """
    text, order = translate(sql, names)
    if isinstance(params, Mapping):
        return text, dict(params)
    values = list(params or ())
    if order is not None:
        values = [values[i] for i in order]
    return text, values


@lru_cache(maxsize=1024)
def translate(sql: str, names: frozenset[str]) -> tuple[str, tuple[int, ...] | None]:
    """The PostgreSQL text of a DuckDB statement (by sqlglot) and, for ``$1``-style
    parameters, the order of the values its ``%s`` take (None: as given).

    - Identifiers: a definition (an output name, a table or CTE alias) keeps its case; a
      column of a lake table named in its scope (``FROM instances i``, ``i.kvp``) takes
      that table's spelling; another identifier takes the spelling of a name in ``names``
      it matches, exactly or else case-insensitively, or of a definition in the
      statement; all are quoted.
    - ``?`` → ``%s``, ``$name`` → ``%(name)s``, ``$1`` → ``%s`` (reordered); every other
      ``%`` (literals, modulo) doubled.
    - The DuckDB functions the lake's PostgreSQL schema defines (migration 2) are called by
      name where sqlglot's rewrite is wrong or missing in PostgreSQL (``list_contains``,
      ``string_split``, ``strftime`` with a non-literal format, ``median`` over a window);
      ``round(x, n)`` rounds a ``numeric``; ``GROUP BY ALL`` lists the non-aggregate
      output columns by position.
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QueryError(f"this DuckDB statement cannot be translated for PostgreSQL: {first}") from exc
    exact: set[str] = set()
    folded: dict[str, str] = {}
    table_columns: dict[str, dict[str, str]] = {}  # table → lower-case column → column
    for n in sorted(names):
        table, _, column = n.rpartition(".")
        if table:
            table_columns.setdefault(table.lower(), {})[column.lower()] = column
        exact.add(column)
        folded.setdefault(column.lower(), column)
    defined: dict[str, str] = {}
    for ident in tree.find_all(exp.Identifier):
        if _is_definition(ident):
            defined.setdefault(ident.name.lower(), ident.name)
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    aliases: dict[str, set[str | None]] = {}  # alias → the lake tables it names (None: a derived table)
    for t in tree.find_all(exp.Table):
        aliases.setdefault(t.alias_or_name.lower(), set()).add(None if t.name.lower() in ctes else t.name.lower())
    for q in tree.find_all(exp.Subquery):
        if q.alias:
            aliases.setdefault(q.alias.lower(), set()).add(None)

    def scope(column: Any) -> list[dict[str, str]]:
        """The columns of the lake tables a column reference can name (none when unknown)."""
        if column.table:
            tables = aliases.get(column.table.lower(), {None})
        else:
            select = column.find_ancestor(exp.Select)
            items = [select.args.get("from_"), *(select.args.get("joins") or [])] if select else []
            tables = set()
            for item in items:
                source = item.this if item is not None else None
                if isinstance(source, exp.Table):
                    tables |= aliases.get(source.alias_or_name.lower(), {None})
                else:
                    tables.add(None)
        known = sorted(t for t in tables if t is not None)
        if len(known) < len(tables):
            return []
        return [table_columns[t] for t in known if t in table_columns]

    def spell(ident: Any) -> str:
        name: str = ident.name
        if _is_definition(ident):
            return name
        low = name.lower()
        if isinstance(ident.parent, exp.Column) and ident.arg_key == "this":
            for cols in scope(ident.parent):
                if low in cols:
                    return cols[low]
        if name in exact:
            return name
        # the statement's own names (aliases) before the lake's: `AS Mask … ORDER BY Mask` is the
        # alias, though a lake view has a column `mask`
        return defined.get(low) or folded.get(low) or name

    marks: list[str | None] = []  # per placeholder: its name, or None for ``?``

    def fix(node: Any) -> Any:
        if isinstance(node, exp.Placeholder):
            marks.append(node.this if isinstance(node.this, str) else None)
            return exp.var(_MARK.format(len(marks) - 1))
        if isinstance(node, exp.Identifier):
            node.set("this", spell(node))
            node.set("quoted", True)
            return node
        if isinstance(node, exp.ArrayContains):
            return exp.Anonymous(this="list_contains", expressions=[node.this, node.expression])
        if isinstance(node, exp.Split):
            return exp.Anonymous(this="string_split", expressions=[node.this, node.expression])
        if isinstance(node, exp.TimeToStr) and not isinstance(node.args.get("format"), exp.Literal):
            return exp.Anonymous(this="strftime", expressions=[node.this, node.args["format"]])
        if isinstance(node, exp.Window) and isinstance(node.this, exp.Median):
            node.set("this", exp.Anonymous(this="median", expressions=[node.this.this]))
            return node
        if isinstance(node, exp.Interval) and not isinstance(node.this, exp.Literal) and node.unit is not None:
            # INTERVAL (?) DAY: sqlglot would put the parameter inside a string literal
            return exp.Paren(
                this=exp.Mul(
                    this=exp.cast(node.this.unnest(), "double"),
                    expression=exp.Interval(this=exp.Literal.string("1"), unit=node.unit),
                )
            )
        if isinstance(node, exp.Round) and node.args.get("decimals") is not None:
            # PostgreSQL rounds numerics only; trim_scale keeps "1.5", not "1.500000"
            inner = exp.Round(this=exp.cast(node.this, "numeric"), decimals=node.args["decimals"])
            return exp.cast(exp.func("trim_scale", inner), "double")
        if isinstance(node, exp.Select) and isinstance(node.args.get("group"), exp.Group):
            _expand_group_by_all(node)
        return node

    # children first, so that a rewritten call keeps its rewritten arguments
    for node in reversed(list(tree.dfs())):
        new = fix(node)
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    text = tree.sql(dialect="postgres", identify=True, unsupported_level=ErrorLevel.IGNORE)
    text = text.replace("%", "%%")
    positions = [m for m in marks if m is not None and m.isdigit()]

    def param(m: re.Match[str]) -> str:
        name = marks[int(m.group(1))]
        return "%s" if name is None or name.isdigit() else f"%({name})s"

    text = _MARK_RE.sub(param, text)
    order = tuple(int(m) - 1 for m in positions) if positions else None
    return text, order


def _is_definition(ident: Any) -> bool:
    """True for an identifier that names something: an output column, a table or CTE alias."""
    from sqlglot import exp

    parent = ident.parent
    return (isinstance(parent, exp.Alias) and ident.arg_key == "alias") or isinstance(parent, exp.TableAlias)


def _expand_group_by_all(select: Any) -> None:
    """DuckDB's ``GROUP BY ALL``: the output columns without an aggregate, by position."""
    from sqlglot import exp

    group = select.args["group"]
    if not group.args.get("all"):
        return
    keys = []
    for i, e in enumerate(select.expressions, 1):
        if isinstance(e, exp.Star) or isinstance(e.unalias(), exp.Star):
            return  # left to PostgreSQL (which refuses GROUP BY ALL with its own error)
        aggs = [a for a in e.find_all(exp.AggFunc) if not a.find_ancestor(exp.Window)]
        if not aggs and not e.find(exp.Window):
            keys.append(exp.Literal.number(i))
    if keys:
        select.set("group", exp.Group(expressions=keys))
    else:
        select.set("group", None)


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


__all__ = [
    "DuckDBSql",
    "LakeSql",
    "PostgresSql",
    "ReadOnlySql",
    "duckdb_type",
    "lake_sql",
    "to_postgres",
    "to_postgres_sql",
    "translate",
]
