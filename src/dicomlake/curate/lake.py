"""What curation needs from the lake, as protocols.

``curate/`` decides (which rules run, severities, tolerances, messages, name clusters);
the Store reads and writes the lake. ``curate/`` and ``store/`` are one layer and import
neither each other: the caller (``cli/``, ``audit/``, ``ingest/``) passes the lake's
curation door, :class:`dicomlake.store.curation.LakeCuration` (``store.curation()``),
which meets these protocols on DuckDB, PostgreSQL and, read-only, a Parquet lake.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import pyarrow as pa

Row = tuple[Any, ...]


class NameLake(Protocol):
    """Name variants and confirmed mappings."""

    @property
    def writable(self) -> bool: ...

    def mapping_version(self) -> int | None: ...

    def mapping(self, version: int) -> list[tuple[str, str, str]]: ...

    def name_variants(self, fields: Iterable[str]) -> dict[str, list[tuple[str, int]]]: ...

    def add_mapping_version(
        self, version: int, rows: Sequence[tuple[str, str, str]], *, confirmed_by: str, source_file: str
    ) -> None: ...

    def mapping_history(self) -> list[tuple[int, int, str | None, dt.datetime | None, str | None]]: ...


class CurationLake(NameLake, Protocol):
    """A run's scope, the checks' queries, and the flags."""

    engine: str

    def require_writable(self, what: str) -> None: ...

    def columns(self, table: str) -> set[str]: ...

    def has_table(self, name: str) -> bool: ...

    def open_scope(self, uids: Iterable[str] | None) -> int: ...

    def close_scope(self) -> None: ...

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
    ) -> list[Row]: ...

    def collect_present(self, keywords: Sequence[str]) -> None: ...

    def missing_flags(
        self,
        *,
        rule: str,
        severity: str,
        keywords: Sequence[str],
        need_value: bool,
        explanation: str,
        modalities: Sequence[str],
    ) -> list[Row]: ...

    def future_date_flags(self, *, severity: str, attribute: str, tolerance_days: int, today: dt.date) -> list[Row]: ...

    def before_birth_flags(self, *, severity: str) -> list[Row]: ...

    def ages(self) -> list[Row]: ...

    def order_flags(self, *, severity: str, modalities: Sequence[str], tolerance_s: float) -> list[Row]: ...

    def body_part_rows(self, columns: Sequence[str]) -> list[Row]: ...

    def duplicate_flags(self, *, severity: str, signature: Sequence[str], required: Sequence[str]) -> list[Row]: ...

    def clock_drift_flags(
        self, *, severity: str, sources: Sequence[str], limit_min: float, min_instances: int
    ) -> list[Row]: ...

    def identity_rows(self, keywords: Sequence[str], uids: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    def replace_flags(self, flags: pa.Table, also_duplicates_of: Sequence[str], run: Mapping[str, object]) -> None: ...

    def replace_rule_flags(self, rule: str, uids: Sequence[str], flags: pa.Table) -> None: ...


__all__ = ["CurationLake", "NameLake"]
