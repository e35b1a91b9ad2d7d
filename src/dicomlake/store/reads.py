"""Reads of a lake held open by a long-lived process (the web app, ``dicomlake serve``).

A DuckDB store gets a fresh cursor of its one connection per statement, so reads run in
parallel with each other and with ingest transactions (DuckDB MVCC); other stores
(PostgreSQL) take their statements one at a time on their connection. The web layer reads
the lake only through a :class:`LakeReads` (and :mod:`dicomlake.query` functions over it):
it holds no connection of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.errors import QueryError
from dicomlake.lakeschema import ELEMENTS_BY_UID, ElementJoin, InstanceColumns, element_join_of, instance_columns


def _cursor_of(store: Any) -> Any:
    con = getattr(store, "con", None)
    return con.cursor() if con is not None and hasattr(con, "cursor") else None


def _duckdb_arrow(cur: Any, sql: str, params: Sequence[object] | None) -> pa.Table:
    import duckdb

    try:
        rel = cur.sql(sql, params=list(params)) if params else cur.sql(sql)
        return pa.table({}) if rel is None else rel.to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"{type(exc).__name__}: {exc}") from exc


class LakeReads:
    """Read-only statements on the store ``get_store()`` returns (it may be reopened after a fault)."""

    def __init__(self, get_store: Callable[[], Any], columns: InstanceColumns | None = None) -> None:
        self._get_store = get_store
        self._lock = threading.Lock()
        self.columns: InstanceColumns = columns or getattr(get_store(), "columns", None) or instance_columns()

    @property
    def element_join(self) -> ElementJoin:
        """The store's :class:`~dicomlake.lakeschema.ElementJoin` (for the filter compiler)."""
        return element_join_of(self.store)

    @property
    def store(self) -> Any:
        return self._get_store()

    def query(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        """One statement; an Arrow table."""
        store = self.store
        cur = _cursor_of(store)
        if cur is not None:
            try:
                return _duckdb_arrow(cur, sql, params)
            finally:
                cur.close()
        with self._lock:
            return store.query(sql, list(params) if params else None)  # type: ignore[no-any-return]

    def query_readonly(self, sql: str, params: Sequence[object] | None = None, **kw: Any) -> pa.Table:
        """A user's statement (the internal SQL endpoint): the sandbox of :mod:`dicomlake.store.sandbox`."""
        return self.store.query_readonly(sql, list(params) if params else None, **kw)  # type: ignore[no-any-return]

    def batches(self, sql: str, params: Sequence[object] | None = None, rows: int = 5000) -> Iterator[pa.RecordBatch]:
        """The result of one statement in batches of about ``rows`` rows (an export's stream)."""
        store = self.store
        cur = _cursor_of(store)
        if cur is None:
            yield from self.query(sql, params).to_batches(rows)
            return
        try:
            rel = cur.sql(sql, params=list(params)) if params else cur.sql(sql)
            yield from rel.to_arrow_reader(rows)
        finally:
            cur.close()

    def table_names(self) -> set[str]:
        t = self.query("SELECT table_name FROM information_schema.tables")
        return {str(x) for x in t.column(0).to_pylist()}

    def own_store(self, lake: Path | None = None) -> Any:
        """A read-only store of its own for a longer job (an audit): close it after use.

        DuckDB: a store over a new cursor; other engines: the shared store, whose ``close``
        here does nothing."""
        store = self.store
        cur = _cursor_of(store)
        if cur is not None:
            return CursorStore(cur, self.columns, lake, element_join_of(store))
        return _Borrowed(self)


class _Borrowed:
    """The shared store, lent: statements one at a time, ``close`` a no-op."""

    read_only = True

    def __init__(self, reads: LakeReads) -> None:
        self._reads = reads
        self.columns = reads.columns

    def query(self, sql: str, params: Any = None) -> pa.Table:
        return self._reads.query(sql, params)

    def query_readonly(self, sql: str, params: Any = None, **kw: Any) -> pa.Table:
        return self._reads.query_readonly(sql, params, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reads.store, name)

    def close(self) -> None:
        pass


class CursorStore:
    """A read-only store over one DuckDB cursor (what the audits of :mod:`dicomlake.audit` read)."""

    read_only = True

    def __init__(
        self, con: Any, columns: InstanceColumns, lake: Path | None = None, element_join: ElementJoin = ELEMENTS_BY_UID
    ) -> None:
        self.con = con
        self.columns = columns
        self.element_join = element_join
        self.lake = lake

    def query(self, sql: str, params: Any = None) -> pa.Table:
        return _duckdb_arrow(self.con, sql, params)

    def query_readonly(self, sql: str, params: Any = None, **kw: Any) -> pa.Table:
        """A user's statement: the sandbox of dicomlake.store.sandbox."""
        from dicomlake.store.sandbox import lock_duckdb, run_duckdb

        lock_duckdb(self.con)
        return run_duckdb(self.con, sql, list(params) if params else None, **kw)

    def close(self) -> None:
        self.con.close()
