"""The Store protocol every back end implements, and the value objects it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from dicomlake.lakeschema import REJECT_SCHEMA, TABLES

# The schemas live in dicomlake.lakeschema; these two names are kept for callers of the store.
__all__ = ["REJECT_SCHEMA", "TABLES", "Store", "WriteReport"]


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What one batch write did."""

    inserted: int
    replaced: int
    elements: int
    dose_events: int
    rejects: int


class Store(Protocol):
    """Where extracted metadata lives (DuckDB file, PostgreSQL, Parquet lake)."""

    def write_batch(self, tables: Mapping[str, pa.Table], accepted_paths: list[str]) -> WriteReport:
        """Upsert one batch atomically: instances keyed by SOPInstanceUID, with their
        elements, JSON and dose events; rejects keyed by source path. ``accepted_paths``
        are sources that read cleanly now, so earlier rejects of them are cleared."""
        ...

    def query(self, sql: str, params: Mapping[str, object] | list[object] | None = None) -> pa.Table:
        """Run a read-only SQL statement and return an Arrow table."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
