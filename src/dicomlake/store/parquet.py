"""The Parquet lake: the interchange format and the scale-out path.

A Parquet lake is a folder::

    LAKE/_dicomlake_lake.json                    format marker (format, version, partitioning)
    LAKE/instances/part_modality=CT/part_month=2024-03/<writer>-0.parquet
    LAKE/elements/part_modality=CT/part_month=2024-03/...
    LAKE/dicom_json/...   LAKE/dose_events/...   (same partitioning)
    LAKE/rejects/<writer>-0.parquet             (not partitioned)

The files hold the embedded lake's columns with the embedded lake's Arrow types (they
are written by Arrow from the very tables :func:`dicomlake.ingest.worker.process_chunk`
returns). ``part_modality`` (Modality) and ``part_month`` (StudyDate as ``YYYY-MM``) are
hive partition keys kept out of the files; an element, JSON or dose row lives in its
instance's partition, so a scan of one modality and month touches one folder per
table. A missing value is written ``_none``.

:class:`ParquetStore` reads such a folder through an in-memory DuckDB whose views are
named like the tables, so every query, audit and filter runs unchanged over it.
Both the Spark engine and ``dicomlake export --format lake`` / ``dicomlake import`` write
through :class:`ParquetLakeWriter`, so there is one writer of the format.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dicomlake.errors import ConfigError, QueryError
from dicomlake.lakeschema import (
    INGEST_RUNS_SCHEMA,
    PARTITION_COLUMNS,
    ElementJoin,
    InstanceColumns,
    instance_columns,
    table_schemas,
)
from dicomlake.store.base import WriteReport
from dicomlake.store.pullstate import PullStateTables

MARKER = "_dicomlake_lake.json"
FORMAT = "dicomlake-parquet"
FORMAT_VERSION = 1
PART_COLUMNS = PARTITION_COLUMNS
PARTITIONED = ("instances", "elements", "dicom_json", "dose_events")
PRUNED = ("instances", "elements")
"""Tables whose views show the partition keys, which filters use to open only the folders they need."""
UNPARTITIONED = ("rejects", "ingest_runs")
NONE = "_none"
ROWS_PER_FILE = 4_000_000
"""Rows per Parquet file at most; row groups hold up to 250,000 rows. Default: 4,000,000"""
ROWS_PER_GROUP = 250_000
ELEMENT_ORDER = ("path_key", "value_text")
"""Element rows are sorted by attribute, then value, inside each file (within a partition), so
each row group's statistics name a narrow range of ``path_key``: an any-attribute filter
(``e.path_key = ?``) reads only the row groups of its attribute (DuckDB, Spark and pyarrow skip
the others from the footer). docs/explanation/lake.md, "The element store in a Parquet lake"."""
ELEMENT_ROWS_PER_GROUP = 32_768
"""Row groups of ``elements`` hold this many rows at most (a typical attribute has one row per
instance: a group of a partition file then holds a few attributes). Default: 32,768"""


def rows_per_group(table: str) -> int:
    """Row-group size of a lake table's files: :data:`ELEMENT_ROWS_PER_GROUP` for ``elements``,
    else :data:`ROWS_PER_GROUP`."""
    return ELEMENT_ROWS_PER_GROUP if table == "elements" else ROWS_PER_GROUP


def sorting_columns(names: list[str]) -> list[pq.SortingColumn]:
    """Parquet's declaration of :data:`ELEMENT_ORDER` (``RowGroup.sorting_columns``, missing
    values last) for a file of the columns ``names`` (partition columns are not in the file)."""
    in_file = [n for n in names if n not in PART_COLUMNS]
    return [pq.SortingColumn(in_file.index(c)) for c in ELEMENT_ORDER if c in in_file]


def _declares_sorted(fs: pafs.FileSystem, path: str) -> bool:
    """True when the file's row groups declare :data:`ELEMENT_ORDER` (a sorted writer wrote it)."""
    meta = pq.read_metadata(path, filesystem=fs)
    want = tuple(sorting_columns(meta.schema.names))
    return bool(want) and all(meta.row_group(g).sorting_columns == want for g in range(meta.num_row_groups))


def sort_elements(table: pa.Table) -> pa.Table:
    """Element rows in the lake's file order: partition, then :data:`ELEMENT_ORDER`."""
    keys = [c for c in (*PART_COLUMNS, *ELEMENT_ORDER) if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in keys]) if keys else table


PROLEPTIC_DATES = {b"org.apache.spark.version": b"3.0.0"}
"""Footer key-value written into every file: Spark 3.0 and later read the dates and timestamps
of a file that names a Spark version >= 3.0.0 (and no ``org.apache.spark.legacyDateTime``) as
proleptic Gregorian, which is what Arrow writes. Without it Spark 3.x applies
``spark.sql.parquet.datetimeRebaseModeInRead`` (default ``EXCEPTION``) and refuses a file
with a date before 1582-10-15 (a PatientBirthDate of 1111-11-11 is in pydicom's samples).
Spark: ``DataSourceUtils.getRebaseSpec`` (sql/core/.../datasources/DataSourceUtils.scala)."""


def portable_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a lake file is written with, so that plain engines read it (Spark 3.5 and 4.x
    with no settings, DuckDB, pyarrow): a time of day (Arrow ``time32``/``time64``, Parquet
    ``TIME``, which Spark 3.5 cannot read and Spark 4.x only with ``spark.sql.timeType.enabled``)
    becomes int64 microseconds since midnight with field metadata ``dicomlake: time-us``
    (:class:`ParquetStore`'s views turn it back into TIME), and the footer carries
    :data:`PROLEPTIC_DATES`."""
    fields = [
        pa.field(f.name, pa.int64(), f.nullable, {**(f.metadata or {}), b"dicomlake": b"time-us"})
        if pa.types.is_time(f.type)
        else f
        for f in schema
    ]
    return pa.schema(fields, metadata={**(schema.metadata or {}), **PROLEPTIC_DATES})


def _portable(data: Any, schema: pa.Schema) -> Any:
    """A table or record batch in :func:`portable_schema`'s ``schema``."""
    cols = [c.cast(pa.time64("us")).cast(pa.int64()) if pa.types.is_time(c.type) else c for c in data.columns]
    return type(data).from_arrays(cols, schema=schema)


def is_parquet_lake(path: str | Path) -> bool:
    """True for a folder written as a Parquet lake (marker file or an ``instances/`` of Parquet)."""
    p = Path(path)
    if (p / MARKER).is_file():
        return True
    inst = p / "instances"
    return inst.is_dir() and any(inst.rglob("*.parquet"))


def partition_keys(instances: pa.Table) -> pa.Table:
    """``SOPInstanceUID → (part_modality, part_month)`` for a table of instances."""
    uid = instances.column("SOPInstanceUID")
    if "Modality" in instances.column_names:
        mod = pc.fill_null(instances.column("Modality"), NONE)
        mod = pc.if_else(pc.equal(mod, ""), NONE, mod)
    else:
        mod = pa.array([NONE] * instances.num_rows, pa.string())
    if "StudyDate" in instances.column_names and instances.num_rows:
        date = instances.column("StudyDate")
        month = pc.strftime(date.cast(pa.timestamp("s")), format="%Y-%m")
        month = pc.fill_null(month, NONE)
    else:
        month = pa.array([NONE] * instances.num_rows, pa.string())
    return pa.table({"SOPInstanceUID": uid, "part_modality": mod, "part_month": month})


def with_partitions(table: pa.Table, keys: pa.Table) -> pa.Table:
    """``table`` plus its rows' partition columns, looked up by SOPInstanceUID (order kept)."""
    idx = pc.index_in(table.column("SOPInstanceUID"), value_set=keys.column("SOPInstanceUID"))
    out = table
    for name in PART_COLUMNS:
        col = (
            pc.fill_null(pc.take(keys.column(name), idx), NONE)
            if keys.num_rows
            else pa.array([NONE] * table.num_rows, pa.string())
        )
        out = out.append_column(name, col)
    return out


class ParquetLakeWriter:
    """Writes tables into a Parquet lake folder; each call adds files, never rewrites one.

    Parameters
    ----------
    root
        The lake folder (created), or a URI (``s3://bucket/lake``, ``hdfs://…``: written through
        :mod:`pyarrow.fs`, :mod:`dicomlake.store.fs`).
    writer_id
        Prefix of this writer's file names (a Spark task's id, a run id), unique per writer.
    """

    def __init__(self, root: str | Path, writer_id: str | None = None) -> None:
        from dicomlake.store.fs import filesystem, is_remote

        self.uri = str(root) if is_remote(str(root)) else None
        self.root = Path(root) if self.uri is None else Path(str(root).split("://", 1)[1])
        self.fs, self.base = filesystem(self.uri or str(self.root))
        self.writer_id = writer_id or uuid.uuid4().hex[:12]
        self.seq = 0
        self.files: list[str] = []
        self.fs.create_dir(self.base, recursive=True)

    def write_marker(self, columns: InstanceColumns | None = None, extra: Mapping[str, object] | None = None) -> None:
        """Write the format marker (idempotent; the driver/exporter calls it once)."""
        marker = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "partitioning": {"tables": list(PARTITIONED), "keys": list(PART_COLUMNS), "flavor": "hive"},
            "instance_columns": list((columns or instance_columns()).kinds),
            **(extra or {}),
        }
        from dicomlake.store.fs import write_bytes

        write_bytes(
            self.uri + "/" + MARKER if self.uri else str(self.root / MARKER), json.dumps(marker, indent=1).encode()
        )

    def write(self, name: str, data: pa.Table | Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> int:
        """Write one table's rows (with partition columns for a partitioned table); rows written."""
        if isinstance(data, pa.Table):
            if not data.num_rows:
                return 0
            if name == "elements":
                data = sort_elements(data)
            schema = portable_schema(data.schema)
            source: pa.Table | pa.RecordBatchReader = _portable(data, schema)
        else:
            if schema is None:
                raise ValueError("schema is required when writing an iterator of batches")
            out = portable_schema(schema)
            source = pa.RecordBatchReader.from_batches(out, (_portable(b, out) for b in data))
            schema = out
        count = 0

        def visit(written: ds.WrittenFile) -> None:
            nonlocal count
            self.files.append(written.path)
            if written.metadata is not None:
                count += written.metadata.num_rows

        partitioned = all(c in schema.names for c in PART_COLUMNS)
        sorted_rows = name == "elements" and isinstance(data, pa.Table)
        self.seq += 1
        ds.write_dataset(
            source,
            base_dir=f"{self.base}/{name}",
            filesystem=self.fs,
            format="parquet",
            partitioning=list(PART_COLUMNS) if partitioned else None,
            partitioning_flavor="hive" if partitioned else None,
            basename_template=f"{self.writer_id}-{self.seq}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_options=ds.ParquetFileFormat().make_write_options(
                compression="zstd", sorting_columns=sorting_columns(schema.names) if sorted_rows else None
            ),
            max_rows_per_file=ROWS_PER_FILE,
            max_rows_per_group=rows_per_group(name),
            min_rows_per_group=min(rows_per_group(name), 50_000),
            max_partitions=100_000,
            file_visitor=visit,
            use_threads=True,
            preserve_order=sorted_rows,  # sorted rows stay sorted in each file
        )
        return count

    def sort_elements_files(self) -> int:
        """Rewrite the ``elements`` partition folders this writer wrote with their rows sorted
        (:data:`ELEMENT_ORDER`; :func:`compact_partition`). A streamed :meth:`write` (``export
        --format lake``) cannot sort rows it has not seen yet; this second pass does. Folders
        rewritten."""
        prefix = f"{self.base}/elements/"
        folders = sorted({f.rsplit("/", 1)[0] for f in self.files if f.startswith(prefix)})
        for folder in folders:
            _compact_folder(self.fs, self.base, folder, TARGET_FILE_BYTES, sort=True)
        journal = f"{self.base}/{COMPACT_JOURNAL}"
        left = self.fs.get_file_info(pafs.FileSelector(journal, allow_not_found=True, recursive=True))
        if folders and not left:  # the rewrites' journal folder, when nothing else is in it
            try:
                self.fs.delete_dir(journal)
            except (FileNotFoundError, OSError):
                pass
        mine = set(folders)
        self.files = [f for f in self.files if f.rsplit("/", 1)[0] not in mine]
        for folder in folders:
            self.files += sorted(
                i.path for i in self.fs.get_file_info(pafs.FileSelector(folder)) if i.path.endswith(".parquet")
            )
        return len(folders)

    def write_tables(self, tables: Mapping[str, pa.Table]) -> dict[str, int]:
        """Write the tables of one extracted batch; rows written per table."""
        inst = tables.get("instances")
        keys = partition_keys(inst) if inst is not None else None
        counts: dict[str, int] = {}
        for name, tab in tables.items():
            if tab is None or not tab.num_rows:
                continue
            if name in PARTITIONED:
                if keys is None:
                    raise ValueError(f"{name} rows without their instances: partitions unknown")
                tab = with_partitions(tab, keys)
            counts[name] = self.write(name, tab)
        return counts


class ParquetStore:
    """A Parquet lake folder opened for querying (DuckDB views named like the tables).

    Writing goes through :class:`ParquetLakeWriter` (``dicomlake import``, ``export``, the
    Spark engine); :meth:`write_batch` therefore refuses.
    """

    def __init__(self, lake: str | Path, *, read_only: bool = True, columns: InstanceColumns | None = None) -> None:
        self.lake = Path(lake)
        self.read_only = True
        self.columns = columns or instance_columns()
        # the per-element table, by UID; filters on Modality/StudyDate also name their partitions
        self.element_join = ElementJoin(partitions=True)
        if not self.lake.is_dir():
            raise ConfigError(f"no Parquet lake at {self.lake} (not a folder)")
        marker = self.lake / MARKER
        self.meta: dict[str, object] = json.loads(marker.read_text("utf-8")) if marker.is_file() else {}
        if self.meta and self.meta.get("format") != FORMAT:
            raise ConfigError(f"{marker}: format {self.meta.get('format')!r} is not {FORMAT!r}")
        self.con = duckdb.connect(":memory:")
        # footers read once per store, not once per query: a lake of many partition files pays
        # the opening of each file's metadata (~1 ms) on every scan otherwise
        self.con.execute("SET parquet_metadata_cache = true")
        self._make_views()

    def _make_views(self) -> None:
        schemas = dict(table_schemas(self.columns))
        schemas["ingest_runs"] = INGEST_RUNS_SCHEMA
        for name, schema in schemas.items():
            folder = self.lake / name
            files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
            if files:
                glob = str(folder / ("**/*.parquet" if name in PARTITIONED else "*.parquet")).replace("'", "''")
                hive = "true" if name in PARTITIONED else "false"
                # instances and elements keep the partition keys (filters prune folders by them:
                # ElementJoin.partitions); the other tables show the lake's columns only
                excl = " EXCLUDE (part_modality, part_month)" if name in PARTITIONED and name not in PRUNED else ""
                source = f"read_parquet('{glob}', hive_partitioning = {hive}, union_by_name = true)"
                # time of day stored as int64 microseconds (the Spark engine: plain engines read
                # it; docs/reference/lake.md) is TIME again in the view
                stored = {r[0]: r[1] for r in self.con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
                times = [f.name for f in schema if pa.types.is_time(f.type) and stored.get(f.name) == "BIGINT"]
                repl = ", ".join(f'TIME \'00:00:00\' + to_microseconds("{c}") AS "{c}"' for c in times)
                self.con.execute(
                    f'CREATE VIEW "{name}" AS SELECT *{excl}{f" REPLACE ({repl})" if repl else ""} FROM {source}'
                )
            else:
                if name in PRUNED:  # the columns a filter names, on an empty table too
                    schema = schema.append(pa.field(PART_COLUMNS[0], pa.string())).append(
                        pa.field(PART_COLUMNS[1], pa.string())
                    )
                empty = schema.empty_table()  # noqa: F841 - referenced by name in SQL
                self.con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM empty')
        from dicomlake.store.curation import CURATION_SCHEMAS

        for name in CURATION_SCHEMAS:  # exported with the lake when it was curated (store/curation.py)
            folder = self.lake / name
            if folder.is_dir() and any(folder.glob("*.parquet")):
                glob = str(folder / "*.parquet").replace("'", "''")
                self.con.execute(
                    f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', union_by_name = true)"
                )

    def _read_only(self) -> ConfigError:
        return ConfigError(
            f"{self.lake} is a Parquet lake, written by `dicomlake ingest --engine spark --out DIR` or "
            "`dicomlake import SOURCE --out DIR`; ingest into a DuckDB folder or a postgresql:// lake instead"
        )

    def write_batch(self, tables: Mapping[str, pa.Table], accepted_paths: list[str]) -> WriteReport:
        raise self._read_only()

    def record_run(self, row: Mapping[str, object]) -> None:
        """Refused like :meth:`write_batch` (it returned silently, so a run looked recorded)."""
        raise self._read_only()

    def query(self, sql: str, params: Mapping[str, object] | list[object] | None = None) -> pa.Table:
        from dicomlake.store.duckdb import DuckDBStore

        return DuckDBStore.query(self, sql, params)  # type: ignore[arg-type]

    def query_readonly(
        self,
        sql: str,
        params: Mapping[str, object] | list[object] | None = None,
        *,
        max_rows: int | None = None,
        time_limit_s: float | None = None,
    ) -> pa.Table:
        """A user's statement in the sandbox; the views may still read the lake's own table folders."""
        from dicomlake.store.sandbox import query_readonly_duckdb

        folders = [p for p in sorted(self.lake.iterdir()) if p.is_dir()]
        return query_readonly_duckdb(
            self.con, sql, params, max_rows=max_rows, time_limit_s=time_limit_s, allowed_directories=folders
        )

    def pull_state(self) -> PullStateTables:
        raise ConfigError(
            f"{self.lake} is a Parquet lake, which keeps no pull state; pull into a DuckDB folder or a postgresql:// lake"
        )

    def iter_table(
        self, name: str, schema: pa.Schema | None = None, batch_rows: int = 200_000
    ) -> Iterator[pa.RecordBatch]:
        try:
            cols = ", ".join(f'"{f.name}"' for f in schema) if schema is not None else "*"
            reader = self.con.sql(f'SELECT {cols} FROM "{name}"').to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise QueryError(f"{name}: {exc}") from exc
        yield from reader

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ParquetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TARGET_FILE_BYTES = 256 << 20
"""Compaction writes files of about this size (a partition smaller than it becomes one file).
Default: 256 MiB, inside the 128–512 MB that Spark, DuckDB and object stores read best."""
COMPACT_JOURNAL = "_compact"


def partition_folders(lake: str) -> list[str]:
    """The leaf folders of the partitioned tables (``TABLE/part_modality=…/part_month=…``), as
    paths inside the lake's file system; a few thousand for a national lake."""
    from dicomlake.store.fs import filesystem

    fs, base = filesystem(lake)
    out: list[str] = []
    for name in PARTITIONED:
        for mod in fs.get_file_info(pafs.FileSelector(f"{base}/{name}", allow_not_found=True)):
            if mod.type == pafs.FileType.Directory and mod.base_name.startswith("part_modality="):
                months = fs.get_file_info(pafs.FileSelector(mod.path))
                out += sorted(m.path for m in months if m.type == pafs.FileType.Directory)
    return out


def compact_partition(lake: str, folder: str, target_bytes: int = TARGET_FILE_BYTES) -> dict[str, int]:
    """Rewrite one partition folder's Parquet files as few files of about ``target_bytes``;
    an ``elements`` folder's rows sorted (:data:`ELEMENT_ORDER`).

    Crash-safe without a table format: the new files are written under ``LAKE/_compact/…``,
    a journal naming the old and the new files is written, the new files are moved in, the
    old ones deleted, the journal removed. :func:`finish_compaction` completes or undoes an
    interrupted step, so the partition never ends with both copies or with neither. A reader
    during the few moves may see a row twice (never miss one).
    """
    from dicomlake.store.fs import filesystem

    fs, base = filesystem(lake)
    return _compact_folder(fs, base, folder, target_bytes, sort=folder[len(base) :].startswith("/elements/"))


SORT_CHUNK_ROWS = 1_000_000
"""A sorted rewrite sorts this many rows in memory at a time (element rows of real headers take
~280 B each in Arrow, and the sort copies them: ~0.6 GB); a larger partition becomes several
files, each sorted. Default: 1,000,000"""


def _sorted_chunks(table: ds.Dataset, chunk_rows: int) -> Iterator[pa.Table]:
    """The dataset's rows as tables of ``chunk_rows`` (the last fewer), each sorted
    (:func:`sort_elements`): one output file each."""
    held: list[pa.Table] = []
    n = 0
    for batch in table.to_batches():
        held.append(pa.Table.from_batches([batch]))
        n += batch.num_rows
        while n >= chunk_rows:
            whole = pa.concat_tables(held)
            chunk, rest = whole.slice(0, chunk_rows), whole.slice(chunk_rows)
            held, n = [rest], rest.num_rows
            del whole
            yield sort_elements(chunk)
            del chunk
    if n:
        last = pa.concat_tables(held)
        held = []
        yield sort_elements(last)


def _compact_folder(
    fs: pafs.FileSystem, base: str, folder: str, target_bytes: int, *, sort: bool = False
) -> dict[str, int]:
    files = [
        f
        for f in fs.get_file_info(pafs.FileSelector(folder))
        if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
    ]
    before = sum(int(f.size or 0) for f in files)
    stats = {"files_before": len(files), "bytes_before": before, "files_after": len(files), "bytes_after": before}
    if len(files) < (1 if sort else 2):
        return stats  # a sorted folder is settled below, by the declared order of its files
    paths = sorted(f.path for f in files)
    # files of several runs may differ (a column added since): one schema over all, streamed
    schema = pa.unify_schemas([pq.read_schema(p, filesystem=fs) for p in paths], promote_options="permissive")
    schema = schema.with_metadata({**(schema.metadata or {}), **PROLEPTIC_DATES})  # older files gain it
    table = ds.dataset(paths, schema=schema, filesystem=fs, format="parquet")
    stats["rows"] = rows = table.count_rows()
    per_row = max(1.0, before / max(1, rows))
    group = rows_per_group("elements" if sort else "")
    rows_per_file = max(group, int(target_bytes / per_row))
    tag = uuid.uuid4().hex[:12]
    rel = folder[len(base) + 1 :]
    tmp = f"{base}/{COMPACT_JOURNAL}/{tag}"
    new: list[str] = []
    source: Any = table
    if sort:  # each output file sorted in memory, a chunk at a time
        rows_per_file = min(rows_per_file, SORT_CHUNK_ROWS)
        if len(paths) <= -(-rows // rows_per_file) and all(_declares_sorted(fs, p) for p in paths):
            return stats  # as a sorted rewrite would leave it: nothing to do
        source = pa.RecordBatchReader.from_batches(
            schema, (b for t in _sorted_chunks(table, rows_per_file) for b in t.to_batches())
        )
    ds.write_dataset(
        source,
        base_dir=tmp,
        filesystem=fs,
        format="parquet",
        basename_template=f"compact-{tag}-{{i}}.parquet",
        file_options=ds.ParquetFileFormat().make_write_options(
            compression="zstd", sorting_columns=sorting_columns(schema.names) if sort else None
        ),
        max_rows_per_file=rows_per_file,
        max_rows_per_group=min(group, rows_per_file),
        min_rows_per_group=min(group, 50_000),
        file_visitor=lambda w: new.append(w.path),
        preserve_order=sort,
    )
    moves = [(p, f"{folder}/{p.rsplit('/', 1)[1]}") for p in sorted(new)]
    journal = {
        "partition": rel,
        "old": [p[len(base) + 1 :] for p in paths],
        "new": [d[len(base) + 1 :] for _s, d in moves],
    }
    with fs.open_output_stream(f"{tmp}.json") as fh:
        fh.write(json.dumps(journal).encode())
    for src, dest in moves:
        fs.move(src, dest)
    _finish(fs, base, f"{tmp}.json", journal)
    stats["files_after"] = len(moves)
    stats["bytes_after"] = sum(int(fs.get_file_info(d).size or 0) for _s, d in moves)
    return stats


def _finish(fs: pafs.FileSystem, base: str, journal_path: str, journal: Mapping[str, Any]) -> None:
    """Complete a journalled compaction (all new files in place: drop the old ones) or undo it."""
    new_in = [fs.get_file_info(f"{base}/{p}").type == pafs.FileType.File for p in journal["new"]]
    drop = journal["old"] if all(new_in) else [p for p, there in zip(journal["new"], new_in, strict=True) if there]
    for p in drop:
        try:
            fs.delete_file(f"{base}/{p}")
        except FileNotFoundError:
            pass
    tmp = journal_path[: -len(".json")]
    try:
        fs.delete_dir(tmp)
    except (FileNotFoundError, OSError):
        pass
    fs.delete_file(journal_path)


def finish_compaction(lake: str) -> int:
    """Complete or undo the compaction steps an interruption left; how many."""
    from dicomlake.store.fs import filesystem

    fs, base = filesystem(lake)
    found = fs.get_file_info(pafs.FileSelector(f"{base}/{COMPACT_JOURNAL}", allow_not_found=True))
    journals = sorted(f.path for f in found if f.path.endswith(".json"))
    for j in journals:
        with fs.open_input_stream(j) as fh:
            _finish(fs, base, j, json.loads(bytes(fh.read())))
    try:
        fs.delete_dir(f"{base}/{COMPACT_JOURNAL}")
    except (FileNotFoundError, OSError):
        pass
    return len(journals)


def compact(lake: str | Path, *, spark: Any = None, target_bytes: int = TARGET_FILE_BYTES) -> dict[str, int]:
    """Compact every partition of a Parquet lake (folder or URI); with a SparkSession, one
    Spark task per partition. Totals of files and bytes before and after."""
    from dicomlake.store.fs import is_remote, local_path

    uri = str(lake).rstrip("/") if is_remote(str(lake)) else local_path(lake)
    finish_compaction(uri)
    folders = partition_folders(uri)
    if spark is not None and folders:
        from dicomlake.store.fs import S3_ENV

        store_env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k)}
        rdd = spark.sparkContext.parallelize(
            folders, max(1, min(len(folders), spark.sparkContext.defaultParallelism * 4))
        )
        results = rdd.map(_compact_task(uri, target_bytes, store_env)).collect()
    else:
        results = [compact_partition(uri, f, target_bytes) for f in folders]
    total = {"partitions": len(folders)}
    for r in results:
        for k, v in r.items():
            total[k] = total.get(k, 0) + v
    finish_compaction(uri)
    return total


def _compact_task(uri: str, target_bytes: int, store_env: dict[str, str]) -> Any:
    def run(folder: str) -> dict[str, int]:
        for k, v in store_env.items():
            os.environ.setdefault(k, v)
        return compact_partition(uri, folder, target_bytes)

    return run
