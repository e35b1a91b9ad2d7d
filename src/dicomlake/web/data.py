"""The lake as the web layer reads it: one shared store, a cursor per request, STOW-RS ingest.

Either the service hands in its open store (``dicomlake serve``: listener, workers and web
share one DuckDB connection) or :func:`LakeAccess.open` opens the lake folder itself
(standalone and tests). Reads go through :class:`dicomlake.store.reads.LakeReads` (a cursor of
the shared DuckDB connection per call, so they run in parallel with each other and with ingest
transactions); the statements are those of :mod:`dicomlake.query`.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.errors import ConfigError
from dicomlake.lakeschema import InstanceColumns, instance_columns
from dicomlake.store.reads import LakeReads

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
        self._reads = LakeReads(lambda: self.store, self.columns)
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

    @property
    def reads(self) -> LakeReads:
        """The lake's read door (:class:`dicomlake.store.reads.LakeReads`): what :mod:`dicomlake.query` functions take."""
        return self._reads

    def query_readonly(self, sql: str, params: Sequence[object] | None = None, **kw: Any) -> pa.Table:
        """A user's statement (the internal SQL endpoint): the sandbox of dicomlake.store.sandbox."""
        return self._reads.query_readonly(sql, params, **kw)

    def query(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        """Run one statement written in :mod:`dicomlake.query` (on a fresh cursor); an Arrow table."""
        return self._reads.query(sql, params)

    def rows(self, sql: str, params: Sequence[object] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.query(sql, params).to_pylist()
        return rows

    def has_table(self, name: str) -> bool:
        if self._tables is None or name not in self._tables:
            self._tables = self._reads.table_names()
        return name in self._tables

    def open_lake(self) -> Any:
        """A :class:`~dicomlake.query.lake.Lake` over a store of its own (close its store after use)."""
        from dicomlake.query.lake import Lake

        return Lake(self._reads.own_store(self.lake))

    def json_by_uid(self, uids: Sequence[str]) -> dict[str, str]:
        """DICOM JSON text of instances, by SOP Instance UID."""
        from dicomlake.query.qido import json_by_uid

        return json_by_uid(self._reads, uids) if uids else {}

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
