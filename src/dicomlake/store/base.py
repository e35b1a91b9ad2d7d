"""The Store protocol every back end implements, and the value objects it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source_path", pa.string()),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("quarantine_path", pa.string()),
        pa.field("rejected_at", pa.timestamp("us")),
    ]
)


def dose_schema() -> pa.Schema:
    """The dose_events schema, from :data:`dicomlake.extract.dose.DOSE_EVENT_COLUMNS`."""
    from dicomlake.extract.dose import DOSE_EVENT_COLUMNS

    return pa.schema([pa.field(k, v) for k, v in DOSE_EVENT_COLUMNS.items()])


# The lake's tables, in the order a batch is written.
TABLES = ("instances", "elements", "dicom_json", "dose_events", "rejects")


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
