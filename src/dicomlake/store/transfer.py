"""Moving a whole lake between back ends (DuckDB, PostgreSQL, Parquet) without loss.

Tables travel as Arrow record batches of the lake's own schema, so every value keeps its
type: text, integers, doubles (exact), dates, times and timestamps (microseconds).
Instances go first: in a DuckDB or PostgreSQL destination each instance batch is an
upsert on SOPInstanceUID (importing twice changes nothing), and the elements, JSON and
dose rows that follow replace those the destination held for the same instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dicomlake.errors import ConfigError
from dicomlake.lakeschema import INGEST_RUNS_SCHEMA, INTERNAL_COLUMNS, TABLES, table_schemas
from dicomlake.store.base import Store
from dicomlake.store.curation import CURATION_SCHEMAS, curation_of
from dicomlake.store.parquet import (
    MARKER,
    NONE,
    PART_COLUMNS,
    PARTITIONED,
    ParquetLakeWriter,
    partition_keys,
)

BATCH_ROWS = 100_000


@dataclass(slots=True)
class TransferReport:
    """Rows copied per table."""

    source: str
    destination: str
    rows: dict[str, int] = field(default_factory=dict)


def table_schema(store: Any, name: str) -> pa.Schema | None:
    """The Arrow schema a store holds for a table (None when it has no such table)."""
    from dicomlake.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        if name not in store.table_names():
            return None
        schemas = dict(table_schemas(store.columns))
        schemas["ingest_runs"] = INGEST_RUNS_SCHEMA
        schemas.update(CURATION_SCHEMAS)
        known = schemas.get(name)
        have = {
            r[0]
            for r in store.connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "AND table_schema = current_schema()",
                [name],
            ).fetchall()
        }
        if known is None:
            return None
        return pa.schema([f for f in known if f.name in have])
    try:
        schema: pa.Schema = store.query(f'SELECT * FROM "{name}" LIMIT 0').schema
    except Exception:
        return None
    # a DuckDB lake's instance numbers (instances._iid) are its own: a copy numbers anew
    return pa.schema([f for f in schema if f.name not in INTERNAL_COLUMNS])


def iter_table(store: Store, name: str, schema: pa.Schema, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Every row of a table as Arrow batches of ``schema`` (:meth:`Store.iter_table`)."""
    yield from store.iter_table(name, schema, batch_rows)


def copy_lake(source: Any, destination: Any, *, batch_rows: int = BATCH_ROWS) -> TransferReport:
    """Copy every table of ``source`` into ``destination``.

    ``destination`` is an open DuckDB or PostgreSQL store (upsert), or a
    :class:`ParquetLakeWriter` on an empty folder.
    """
    rep = TransferReport(
        str(getattr(source, "lake", source)),
        str(getattr(destination, "root", getattr(destination, "lake", destination))),
    )
    names = [*TABLES, "ingest_runs", *CURATION_SCHEMAS]  # curation's tables too (store/curation.py)
    if isinstance(destination, ParquetLakeWriter):
        existing = [p for p in destination.root.iterdir() if p.name != MARKER] if destination.root.exists() else []
        if existing:
            raise ConfigError(
                f"{destination.root} is not empty; a Parquet lake is written into a new folder "
                "(remove it or choose another --out)"
            )
        destination.write_marker(source.columns)
        keys = _PartitionIndex(_keys(source, batch_rows))
        for name in names:
            schema = table_schema(source, name)
            if schema is None:
                continue
            batches = iter_table(source, name, schema, batch_rows)
            if name in PARTITIONED:
                out_schema = schema.append(pa.field("part_modality", pa.string())).append(
                    pa.field("part_month", pa.string())
                )
                batches = (
                    keys.add_to(pa.Table.from_batches([b])).combine_chunks().to_batches()[0]
                    if b.num_rows
                    else pa.RecordBatch.from_pylist([], schema=out_schema)
                    for b in batches
                )
                rep.rows[name] = destination.write(name, _nonempty(batches), out_schema)
                if name == "elements":  # streamed in the source's order: sorted by attribute now
                    destination.sort_elements_files()
            else:
                rep.rows[name] = destination.write(name, _nonempty(batches), schema)
        return rep
    from dicomlake.store.postgres import PostgresStore

    numbers: _InstanceNumbers | None = None
    for name in names:
        schema = table_schema(source, name)
        if schema is None:
            continue
        n = 0
        if name == "elements" and isinstance(destination, PostgresStore):
            numbers = _InstanceNumbers(destination.instance_numbers())
        for batch in iter_table(source, name, schema, batch_rows):
            if not batch.num_rows:
                continue
            tab = pa.Table.from_batches([batch])
            if numbers is not None and name == "elements":
                tab = numbers.add_to(tab)
            if name == "ingest_runs":
                for row in tab.to_pylist():
                    destination.record_run(row)
            elif name in CURATION_SCHEMAS:
                curation_of(destination).import_table(name, tab)
            else:
                destination.write_batch({name: tab}, [])
            n += batch.num_rows
        rep.rows[name] = n
    numbers = None
    if isinstance(destination, PostgresStore) and rep.rows.get("elements"):
        # streamed in the source's order, in batches that split attributes' groups: one run each now
        destination.compact_elements()
    return rep


class _InstanceNumbers:
    """Each instance's number in a PostgreSQL destination (``instances._iid``), found in constant
    time per element row as a copy streams ``elements``: the batch then carries the numbers, where
    looking 100,000 UIDs up in the destination's primary key per batch took ~2 s at 10 M
    instances. Read once after ``instances`` is copied (about 150 bytes per instance while the
    copy runs, as :class:`_PartitionIndex`)."""

    def __init__(self, numbers: dict[str, int]) -> None:
        self.number = numbers

    def add_to(self, table: pa.Table) -> pa.Table:
        """``table`` with the column ``_iid`` (null for an instance the destination does not hold)."""
        get = self.number.get
        return table.append_column(
            "_iid", pa.array([get(u) for u in table.column("SOPInstanceUID").to_pylist()], pa.int64())
        )


class _PartitionIndex:
    """Each instance's partition, found in constant time per row as a copy streams its tables.

    ``parquet.with_partitions`` hashes every key of the lake for each batch it is given (Arrow
    rebuilds the set of ``index_in`` on each call): at 10 M instances, seconds per 100,000-row
    batch, so an export's cost grew with the square of the lake. Here the lake's UIDs are
    hashed once, into a dict from UID to a small partition number (about 150 bytes per instance
    while the copy runs).
    """

    def __init__(self, keys: pa.Table) -> None:
        combos: dict[tuple[str, str], int] = {}
        numbers = [
            combos.setdefault((m, mo), len(combos))
            for m, mo in zip(*(keys.column(c).to_pylist() for c in PART_COLUMNS), strict=True)
        ]
        # reversed: the first row of a UID wins, as with ``index_in``
        self.number = dict(zip(reversed(keys.column("SOPInstanceUID").to_pylist()), reversed(numbers), strict=True))
        self.parts = {c: pa.array([combo[i] for combo in combos], pa.string()) for i, c in enumerate(PART_COLUMNS)}

    def add_to(self, table: pa.Table) -> pa.Table:
        """``table`` with its rows' partition columns (``_none`` for an instance not in the lake)."""
        get = self.number.get
        idx = pa.array([get(u) for u in table.column("SOPInstanceUID").to_pylist()], pa.int32())
        out = table
        for c in PART_COLUMNS:
            col = pc.take(self.parts[c], idx) if len(self.parts[c]) else pa.nulls(len(idx), pa.string())
            out = out.append_column(c, pc.fill_null(col, NONE))
        return out


def _nonempty(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    return (b for b in batches if b.num_rows)


def _keys(source: Any, batch_rows: int) -> pa.Table:
    schema = table_schema(source, "instances")
    if schema is None:
        return partition_keys(pa.table({"SOPInstanceUID": pa.array([], pa.string())}))
    wanted = pa.schema([f for f in schema if f.name in ("SOPInstanceUID", "Modality", "StudyDate")])
    parts = [
        partition_keys(pa.Table.from_batches([b]))
        for b in iter_table(source, "instances", wanted, batch_rows)
        if b.num_rows
    ]
    if not parts:
        return partition_keys(pa.table({"SOPInstanceUID": pa.array([], pa.string())}))
    return pa.concat_tables(parts)


def open_destination(url_or_path: str, *, parquet: bool = False) -> Any:
    """A destination for :func:`copy_lake`: a Parquet lake writer, or a store opened for writing."""
    if parquet:
        return ParquetLakeWriter(Path(url_or_path))
    from dicomlake.store.open import open_store

    return open_store(url_or_path)
