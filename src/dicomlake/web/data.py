"""The lake as the web layer reads it: one shared store, a cursor per request, STOW-RS ingest.

Either the service hands in its open store (``dicomlake serve``: listener, workers and web
share one DuckDB connection) or :func:`LakeAccess.open` opens the lake folder itself
(standalone and tests). Reads use a cursor of the shared connection per call, so they run
in parallel with each other and with ingest transactions (DuckDB MVCC).
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.errors import ConfigError, QueryError
from dicomlake.lakeschema import InstanceColumns, instance_columns

IngestFn = Callable[[list[Path]], Any]
"""Takes files written by STOW-RS and puts them into the lake (returns when committed)."""


class LakeAccess:
    """Read access to the lake for the web layer, and the way STOW-RS ingests."""

    def __init__(
        self,
        lake: Path,
        store_or_holder: Any,
        *,
        owns_store: bool,
        ingest: IngestFn | None = None,
    ) -> None:
        self.lake = Path(lake)
        # the service hands in its StoreHolder (the store may be reopened after a fault)
        self._holder = store_or_holder if hasattr(store_or_holder, "reopen") else None
        self._store = None if self._holder is not None else store_or_holder
        store = self.store
        self.owns_store = owns_store
        self.columns: InstanceColumns = getattr(store, "columns", None) or instance_columns()
        self._ingest = ingest
        self._ingest_lock = threading.Lock()
        self._query_lock = threading.Lock()
        self.read_only = bool(getattr(store, "read_only", False))
        self._tables: set[str] | None = None

    @property
    def store(self) -> Any:
        return self._holder.store if self._holder is not None else self._store

    @classmethod
    def open(cls, lake: str | Path, *, store: Any = None, ingest: IngestFn | None = None) -> LakeAccess:
        lake = Path(lake)
        if store is not None:
            return cls(lake, store, owns_store=False, ingest=ingest)
        from dicomlake.config import get_settings
        from dicomlake.store.duckdb import DuckDBStore

        settings = get_settings()
        cols = instance_columns(str(settings.columns_file) if settings.columns_file else None)
        try:
            st = DuckDBStore(lake, columns=cols)
        except ConfigError:
            # another process holds the lake for writing: serve it read-only (no STOW-RS)
            st = DuckDBStore(lake, read_only=True, columns=cols)
        return cls(lake, st, owns_store=True, ingest=ingest)

    def close(self) -> None:
        if self.owns_store:
            self.store.close()

    # ---- reading -----------------------------------------------------------------------

    def query_readonly(self, sql: str, params: Sequence[object] | None = None, **kw: Any) -> pa.Table:
        """A user's statement (the internal SQL endpoint): the sandbox of dicomlake.store.sandbox."""
        return self.store.query_readonly(sql, list(params) if params else None, **kw)  # type: ignore[no-any-return]

    def query(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        """Run one statement on a fresh cursor; an Arrow table."""
        con = getattr(self.store, "con", None)
        if con is not None and hasattr(con, "cursor"):
            import duckdb

            cur = con.cursor()
            try:
                rel = cur.sql(sql, params=list(params)) if params else cur.sql(sql)
                if rel is None:
                    return pa.table({})
                return rel.to_arrow_table()  # type: ignore[no-any-return]
            except duckdb.Error as exc:
                raise QueryError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                cur.close()
        with self._query_lock:
            return self.store.query(sql, list(params) if params else None)  # type: ignore[no-any-return]

    def rows(self, sql: str, params: Sequence[object] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.query(sql, params).to_pylist()
        return rows

    def has_table(self, name: str) -> bool:
        if self._tables is None or name not in self._tables:
            t = self.query("SELECT table_name FROM information_schema.tables")
            self._tables = {str(x) for x in t.column(0).to_pylist()}
        return name in self._tables

    def open_lake(self) -> Any:
        """A :class:`~dicomlake.query.lake.Lake` over a cursor of its own (close it after use)."""
        from dicomlake.query.lake import Lake

        con = self.store.con.cursor()
        return Lake(CursorStore(con, self.columns, self.lake))

    def json_by_uid(self, uids: Sequence[str]) -> dict[str, str]:
        """DICOM JSON text of instances, by SOP Instance UID."""
        if not uids:
            return {}
        out: dict[str, str] = {}
        for i in range(0, len(uids), 2000):
            part = list(uids[i : i + 2000])
            marks = ",".join("?" for _ in part)
            t = self.query(f"SELECT SOPInstanceUID, json FROM dicom_json WHERE SOPInstanceUID IN ({marks})", part)
            out.update(zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True))
        return out

    # ---- files -------------------------------------------------------------------------

    def read_file(self, source_path: str | None) -> bytes | None:
        """The bytes of a kept instance (a file, or a zip member ``archive.zip!/member``)."""
        if not source_path:
            return None
        if "!/" in source_path:
            archive, _, member = source_path.partition("!/")
            try:
                with zipfile.ZipFile(archive) as zf:
                    return zf.read(member)
            except (OSError, KeyError, zipfile.BadZipFile):
                return None
        try:
            with open(source_path, "rb") as fh:
                return fh.read()
        except OSError:
            return None

    # ---- STOW-RS -----------------------------------------------------------------------

    @property
    def can_ingest(self) -> bool:
        return self._ingest is not None or not self.read_only

    def ingest(self, files: list[Path]) -> None:
        """Put files into the lake; returns once they are committed."""
        if self._ingest is not None:
            self._ingest(files)
            return
        if self.read_only:
            raise ConfigError(
                f"the lake {self.lake} is open read-only here (another process holds it); "
                "send STOW-RS to the running `dicomlake serve` instead"
            )
        from dicomlake.ingest.pipeline import ingest_paths

        with self._ingest_lock:
            ingest_paths([str(f) for f in files], self.lake, workers=1, source="stow-rs", store=self.store)
        self._tables = None

    def files_dir(self) -> Path:
        d = self.lake / "files"
        d.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass
        return d


class CursorStore:
    """A read-only store over one DuckDB cursor (what the audits of :mod:`dicomlake.audit` read)."""

    read_only = True

    def __init__(self, con: Any, columns: InstanceColumns, lake: Path | None = None) -> None:
        self.con = con
        self.columns = columns
        self.lake = lake

    def query(self, sql: str, params: Any = None) -> pa.Table:
        import duckdb

        try:
            rel = self.con.sql(sql, params=list(params)) if params else self.con.sql(sql)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}") from exc

    def query_readonly(self, sql: str, params: Any = None, **kw: Any) -> pa.Table:
        """A user's statement: the sandbox of dicomlake.store.sandbox."""
        from dicomlake.store.sandbox import lock_duckdb, run_duckdb

        lock_duckdb(self.con)
        return run_duckdb(self.con, sql, list(params) if params else None, **kw)

    def close(self) -> None:
        self.con.close()
