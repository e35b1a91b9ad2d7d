"""The Store protocol every back end implements, and the value objects it returns.

The tables' schemas are in :mod:`dicomlake.lakeschema`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

import pyarrow as pa

from dicomlake.lakeschema import ElementJoin, InstanceColumns

if TYPE_CHECKING:
    from dicomlake.store.pullstate import PullStateTables

__all__ = ["Params", "Store", "WriteReport"]


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What one batch write did."""

    inserted: int
    replaced: int
    elements: int
    dose_events: int
    rejects: int

    @classmethod
    def of(cls, tables: Mapping[str, pa.Table], replaced: int) -> WriteReport:
        """The report of writing ``tables``, ``replaced`` of whose instances the lake held."""

        def rows(name: str) -> int:
            tab = tables.get(name)
            return tab.num_rows if tab is not None else 0

        return cls(rows("instances") - replaced, replaced, rows("elements"), rows("dose_events"), rows("rejects"))


Params = Mapping[str, object] | list[object] | None
"""Values of a statement's ``?`` (a list) or ``$name`` (a mapping) placeholders."""


class Store(Protocol):
    """The one door to the lake (DuckDB file, PostgreSQL, Parquet lake, a lake held by a service).

    Every back end implements all of it; what an engine cannot do raises
    :class:`~dicomlake.errors.ConfigError` with a one-line reason (a Parquet lake takes no
    batches; a lake held by ``dicomlake serve`` is written by the service only). mypy checks
    each back end against it (:mod:`dicomlake.store.open`).
    """

    columns: InstanceColumns
    """The typed ``instances`` columns this lake was opened with."""
    read_only: bool

    @property
    def element_join(self) -> ElementJoin:
        """How any-attribute filters reach ``instances`` from the element rows (the filter
        compiler's one engine-specific input; :class:`~dicomlake.lakeschema.ElementJoin`)."""
        ...

    @property
    def lake(self) -> Path | str:
        """Where the lake is: its folder, or the PostgreSQL URL."""
        ...

    def write_batch(self, tables: Mapping[str, pa.Table], accepted_paths: list[str]) -> WriteReport:
        """Upsert one batch atomically: instances keyed by SOPInstanceUID, with their
        elements, JSON and dose events; rejects keyed by source path. ``accepted_paths``
        are sources that read cleanly now, so earlier rejects of them are cleared."""
        ...

    def record_run(self, row: Mapping[str, object]) -> None:
        """Append one ``ingest_runs`` row (a read-only lake records nothing)."""
        ...

    def query(self, sql: str, params: Params = None) -> pa.Table:
        """Run one of dicomlake's own statements (DuckDB dialect) and return an Arrow table."""
        ...

    def query_readonly(
        self, sql: str, params: Params = None, *, max_rows: int | None = None, time_limit_s: float | None = None
    ) -> pa.Table:
        """Run a user's statement in the sandbox (:mod:`dicomlake.store.sandbox`): one read-only
        query, cut at ``max_rows`` (default ``query.max_rows``) and stopped after
        ``time_limit_s`` (default ``query.time_limit_s``)."""
        ...

    def iter_table(self, name: str, schema: pa.Schema, batch_rows: int = 200_000) -> Iterator[pa.RecordBatch]:
        """Every row of a table as Arrow batches of ``schema`` (its columns, in its types where
        the engine's differ)."""
        ...

    def pull_state(self) -> PullStateTables:
        """The pull state (``pull_runs``, ``pull_studies``) on this lake's engine."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
