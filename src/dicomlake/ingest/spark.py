"""The Spark engine: the embedded engine's extraction over an Apache Spark cluster, into a Parquet lake.

The driver looks at the sources' top level only and hands Spark one listing unit per
top-level folder, URI prefix or manifest range (:func:`_units`); the executors expand them
(folders, zips, DICOMDIRs: :func:`dicomlake.ingest.sources.expand`, or ``pyarrow.fs``
listings of ``s3://``/``hdfs://`` prefixes) into chunks of tasks, exactly as the embedded
pipeline does, so the driver never holds one object per file. Each Spark task runs
:func:`dicomlake.ingest.worker.process_chunk` — the same pure function the embedded
engine's worker processes run — over its chunks and writes the resulting Arrow tables with
:class:`dicomlake.store.parquet.ParquetLakeWriter`, so the Parquet files hold the embedded
lake's columns with its Arrow types, partitioned by modality and study month. Input and
output may be local paths every node sees or URIs (:mod:`dicomlake.store.fs`).

Why paths and not Spark's ``binaryFile`` source: a header is a few kB at the front of a
file that carries megabytes of pixel data; ``binaryFile`` would move every byte of the
archive through Spark, while a task that opens the path (or issues ranged reads of the
object) reads only the header.

Commit protocol: a task attempt writes under ``OUT/_staging/<partition>-<attempt>-<uuid>/``
and returns, through ``mapInArrow``, one row per instance (its SOP Instance UID and the
ordinal of its file in the expanded source list) and one summary row. The driver
checkpoints those rows, so each partition's output is the output of exactly one successful
attempt. Instances that occur in more than one file are resolved by Spark jobs, never by
rows brought to the driver: a grouping finds the losing copies (the copy read last in
source order wins, as in the embedded engine's upsert); when the run appends to a lake,
executor tasks read the SOPInstanceUID column of the lake's files and a join with the
run's UIDs finds the older copies there (checkpointed before any file moves). A commit job
moves the staged files into place without the losing copies, then a replacement job
rewrites the lake files that hold older copies, one task per group of files. The driver
sums counts; it holds one summary row per task and the staged sub-folders' names. A
failed or speculative attempt leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dicomlake.config import Settings, get_settings
from dicomlake.errors import ConfigError, DicomlakeError
from dicomlake.ingest.sources import DICOMDIR_NAMES, Task, expand
from dicomlake.ingest.worker import WorkerConfig, process_chunk
from dicomlake.lakeschema import REJECT_SCHEMA
from dicomlake.store.fs import S3_ENV, filesystem, is_remote, is_uri, join, local_path, write_bytes
from dicomlake.store.parquet import (
    ELEMENT_ROWS_PER_GROUP,
    MARKER,
    PARTITIONED,
    ROWS_PER_GROUP,
    ParquetLakeWriter,
)

FILES_PER_CHUNK = 48
"""Files per chunk (one ``process_chunk`` call), as in the embedded pipeline. Default: 48"""
MAX_FILES_PER_TASK = 50_000
"""By default a Spark task reads at most this many files (more tasks for a larger input). Default: 50,000"""
FLUSH_INSTANCES = 20_000
"""A task writes its buffered rows once this many instances are buffered. Default: 20,000"""
FLUSH_BYTES = 256 << 20
"""... or once its buffered Arrow tables hold this many bytes, whichever comes first: the
memory of a task's buffer is bounded whatever the element density of the input (a header of
a large SR or a multi-frame enhanced object is tens of thousands of element rows).
Default: 256 MiB"""
STAGING = "_staging"

RESULT_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string()),  # "instance" | "task"
        pa.field("SOPInstanceUID", pa.string()),
        pa.field("ordinal", pa.int64()),
        pa.field("stage", pa.string()),
        pa.field("summary", pa.string()),  # JSON counts of a task
    ]
)

RESULT_DDL = "kind string, SOPInstanceUID string, ordinal long, stage string, summary string"


@dataclass(slots=True)
class SparkIngestReport:
    """Counts of one Spark ingest run."""

    run_id: str
    out: str
    master: str
    files: int = 0
    instances: int = 0
    unique_instances: int = 0
    duplicates_resolved: int = 0
    replaced: int = 0  # appended run: instances whose older copy in the lake this run replaced
    rejected: int = 0
    skipped: int = 0
    tasks: int = 0
    partitions: int = 0
    files_written: int = 0
    seconds: float = 0.0
    seconds_extract: float = 0.0
    task_seconds: float = 0.0  # summed over tasks: the time spent reading, extracting and writing
    peak_buffer_bytes: int = 0  # the largest Arrow buffer of one task before a write (FLUSH_BYTES bounds it)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.rejected else 0

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["notes"] = self.notes[:100]
        d["files_per_second"] = round(self.rate, 1)
        return d


def spark_session(master: str = "local[2]", app_name: str = "dicomlake-ingest", **conf: str) -> Any:
    """A SparkSession for ingest; local masters bind to loopback and run this Python."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ConfigError(
            "the Spark engine needs PySpark and a Java runtime: pip install 'dicomlake[spark]' "
            "and apt-get install default-jre-headless"
        ) from exc
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ConfigError("the Spark engine needs a Java runtime (17 or later): apt-get install default-jre-headless")
    builder = SparkSession.builder.master(master).appName(app_name)
    defaults = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "64",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": "8",
        "spark.python.worker.reuse": "true",
    }
    # the executors' Python must be this one (it has dicomlake); on a cluster, install
    # dicomlake on every node or ship it with spark-submit --py-files / an archive
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        defaults |= {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.memory": "1g",
        }
    for k, v in (defaults | conf).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("FATAL")  # a failed job is reported in one line, its traces in a log file
    return spark


def _chunks(tasks: Sequence[Task], size: int) -> list[list[tuple[int, Task]]]:
    """Chunks of (ordinal, task); zip members of one archive stay together."""
    out: list[list[tuple[int, Task]]] = []
    cur: list[tuple[int, Task]] = []
    for i, t in enumerate(tasks):
        if cur and (len(cur) >= size or (t.kind == "zip") != (cur[-1][1].kind == "zip")):
            out.append(cur)
            cur = []
        cur.append((i, t))
    if cur:
        out.append(cur)
    return out


LISTING_DDL = "chunk_id long, chunk string, n long"
UNIT_BITS = 32
"""An ordinal is ``unit << 32 | index``: the source order across listing units without a
global count (a unit is a top-level folder, a source file, a manifest range)."""
MANIFEST_RANGE_BYTES = 32 << 20
"""A text manifest is read by the executors in ranges of this many bytes (~300,000 lines of
100 characters). Default: 32 MiB"""


def _units(sources: Sequence[str], manifest: str | None) -> list[tuple[str, str, int, int]]:
    """What the executors list, as (kind, path, start, end): the driver looks at the sources'
    top level only (and a manifest's size or row groups), never at every file.

    - ``tree``: a file, zip, DICOMDIR, or a folder whose top level holds a DICOMDIR (its
      references may reach every subfolder): :func:`~dicomlake.ingest.sources.expand` on one executor;
    - ``flat``: the files directly in a folder; each subfolder is a ``tree`` of its own, in
      the order ``os.walk`` visits them, so ordinals follow the embedded engine's source order;
    - ``rflat`` / ``rtree`` / ``rfile``: the same for a URI (``pyarrow.fs`` listing);
    - ``text`` / ``parquet``: a byte range of a text manifest, a row group of a Parquet one.
    """
    units: list[tuple[str, str, int, int]] = []
    if manifest is not None:
        fs, path = filesystem(manifest)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise ConfigError(f"no such manifest: {manifest}")
        if manifest.lower().endswith(".parquet"):
            with fs.open_input_file(path) as fh:
                groups = pq.ParquetFile(fh).metadata.num_row_groups
            units += [("parquet", manifest, g, g + 1) for g in range(groups)]
        else:
            size = int(info.size or 0)
            units += [
                ("text", manifest, s, min(size, s + MANIFEST_RANGE_BYTES)) for s in range(0, size, MANIFEST_RANGE_BYTES)
            ]
    missing = [p for p in sources if not is_remote(p) and not os.path.exists(p)]
    if missing:
        raise ConfigError(
            "no such file or folder: " + ", ".join(missing) + " (check the path; folders are walked recursively)"
        )
    for src in sources:
        if is_remote(src):
            fs, root = filesystem(src)
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                raise ConfigError(f"no such file or prefix: {src}")
            if info.type == pafs.FileType.File:
                units.append(("rfile", src, 0, 0))
                continue
            units.append(("rflat", src, 0, 0))
            top = fs.get_file_info(pafs.FileSelector(root, recursive=False))
            subs = sorted(f.base_name for f in top if f.type == pafs.FileType.Directory)
            units += [("rtree", f"{src}/{name}", 0, 0) for name in subs]
        elif not os.path.isdir(src):
            units.append(("tree", src, 0, 0))
        else:
            with os.scandir(src) as it:
                entries = sorted(it, key=lambda e: e.name)
            if any(e.name in DICOMDIR_NAMES for e in entries):
                units.append(("tree", src, 0, 0))
                continue
            units.append(("flat", src, 0, 0))
            # os.walk descends into folders, not into links to folders
            units += [("tree", e.path, 0, 0) for e in entries if e.is_dir() and not e.is_symlink()]
    return units


def _list_unit(kind: str, path: str, start: int, end: int) -> list[Task]:
    """The tasks of one listing unit (runs on an executor)."""
    if kind == "tree":
        return expand([path])
    if kind == "flat":
        with os.scandir(path) as it:
            names = sorted(e.name for e in it if not e.is_dir())
        return expand([os.path.join(path, n) for n in names]) if names else []
    if kind in ("rfile", "rtree", "rflat"):
        fs, root = filesystem(path)
        if kind == "rfile":
            found = [path]
        else:
            sel = pafs.FileSelector(root, recursive=kind == "rtree")
            found = sorted(path + f.path[len(root) :] for f in fs.get_file_info(sel) if f.type == pafs.FileType.File)
        return [_remote_task(u) for u in found]
    if kind == "text":
        lines = [ln.decode("utf-8", "replace").strip() for ln in _text_range(path, start, end).split(b"\n")]
        return _manifest_tasks(path, [ln for ln in lines if ln and not ln.startswith("#")])
    if kind == "parquet":
        fs, p = filesystem(path)
        with fs.open_input_file(p) as fh:
            pf = pq.ParquetFile(fh)
            name = "path" if "path" in pf.schema_arrow.names else pf.schema_arrow.names[0]
            col = pf.read_row_group(start, columns=[name]).column(0).to_pylist()
        return _manifest_tasks(path, [str(v).strip() for v in col if v])
    raise ValueError(kind)


def _remote_task(uri: str) -> Task:
    note = "zip archive on an object store: not expanded (copy it to a shared file system)"
    return Task("file", uri, note=note if uri.lower().endswith(".zip") else None)


def _manifest_tasks(manifest: str, entries: list[str]) -> list[Task]:
    """A manifest's entries: URIs as they are, local paths relative to the manifest's folder;
    a listed file that is missing is a reject, not a failed job."""
    here = os.path.dirname(local_path(manifest)) if not is_remote(manifest) else None
    out: list[Task] = []
    for e in entries:
        if is_remote(e):
            out.append(_remote_task(e.rstrip("/")))
            continue
        p = local_path(e) if is_uri(e) or here is None else os.path.join(here, e)
        if os.path.exists(p):
            out += expand([p])
        else:
            out.append(Task("missing", p, note=f"listed in the manifest {manifest} but not found"))
    return out


def _text_range(path: str, start: int, end: int) -> bytes:
    """The lines of a text file that start in ``[start, end)`` (each range read by one task)."""
    fs, p = filesystem(path)
    with fs.open_input_file(p) as f:
        s0 = max(0, start - 1)
        data = bytes(f.read_at(end - s0, s0))
        pos = end
        while data and not data.endswith(b"\n"):  # the last line runs past the range: finish it
            more = bytes(f.read_at(1 << 16, pos))
            if not more:
                break
            cut = more.find(b"\n")
            data += more if cut < 0 else more[: cut + 1]
            pos += len(more)
    if start > 0:  # a line that started before the range belongs to the range before
        cut = data.find(b"\n")
        data = data[cut + 1 :] if cut >= 0 else b""
    return data


def _list_partition(files_per_chunk: int, store_env: dict[str, str]) -> Any:
    """The ``mapInArrow`` function of the listing job: units in, chunks of tasks out."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for k, v in store_env.items():
            os.environ.setdefault(k, v)
        for batch in batches:
            for unit, kind, path, start, end in zip(
                *(batch.column(c).to_pylist() for c in ("unit", "kind", "path", "start", "end")), strict=True
            ):
                tasks = _list_unit(kind, path, start, end)
                ids, chunks, ns = [], [], []
                for j, c in enumerate(_chunks(tasks, files_per_chunk)):
                    ids.append(unit << UNIT_BITS | j)
                    chunks.append(json.dumps([(unit << UNIT_BITS | o, asdict(t)) for o, t in c]))
                    ns.append(len(c))
                if ids:
                    yield pa.RecordBatch.from_pydict(
                        {"chunk_id": ids, "chunk": chunks, "n": ns},
                        schema=pa.schema([("chunk_id", pa.int64()), ("chunk", pa.string()), ("n", pa.int64())]),
                    )

    return run


def portable_times(table: pa.Table) -> pa.Table:
    """Time-of-day columns (Arrow ``time64[us]``, Parquet TIME) as int64 microseconds since
    midnight, so that any engine reads the lake: Spark 3.x cannot read a Parquet TIME column
    and Spark 4.x only with ``spark.sql.timeType.enabled``. The Parquet store's views turn
    them back into TIME (``docs/reference/lake.md``, "Time of day")."""
    for i, f in enumerate(table.schema):
        if pa.types.is_time(f.type):
            us = table.column(i).cast(pa.time64("us")).cast(pa.int64())
            table = table.set_column(i, pa.field(f.name, pa.int64(), f.nullable, {b"dicomlake": b"time-us"}), us)
    return table


class _TaskWriter:
    """Buffers one Spark task's segments and writes them as Parquet, one sub-stage per flush.

    Inside a flush the copy of an instance read last (highest ordinal) wins; each flush
    reports the (uid, ordinal) it wrote, so the driver can resolve copies in different
    flushes or tasks and drop a losing copy from exactly the sub-stage that holds it.
    """

    def __init__(self, stage_root: str, stage_name: str, writer_id: str) -> None:
        self.stage_root = stage_root
        self.stage_name = stage_name
        self.writer_id = writer_id
        self.segments: list[tuple[dict[str, pa.Table], list[int]]] = []
        self.rejects: list[pa.Table] = []
        self.buffered = 0
        self.buffered_bytes = 0
        self.peak_bytes = 0  # the largest buffer written, reported in the task's summary
        self.written: list[tuple[str, int, str]] = []  # (uid, ordinal, sub-stage)
        self.dropped = 0  # older copies dropped inside this task (same SOP Instance UID, one flush)
        self.stages: list[str] = []

    def add(self, tables: dict[str, pa.Table], ordinals: list[int]) -> None:
        self.segments.append((tables, ordinals))
        self.buffered += len(ordinals)
        self.buffered_bytes += sum(t.nbytes for t in tables.values() if t is not None)
        self.peak_bytes = max(self.peak_bytes, self.buffered_bytes)
        if self.buffered >= FLUSH_INSTANCES or self.buffered_bytes >= FLUSH_BYTES:
            self.flush()

    def _writer(self) -> tuple[ParquetLakeWriter, str]:
        sub = f"{self.stage_name}-f{len(self.stages)}"
        self.stages.append(sub)
        return ParquetLakeWriter(join(self.stage_root, sub), f"{self.writer_id}-{len(self.stages)}"), sub

    def flush(self) -> None:
        if not self.segments:
            return
        keep: dict[str, tuple[int, int]] = {}
        rows = 0
        for si, (tables, ords) in enumerate(self.segments):
            for uid, o in zip(tables["instances"].column("SOPInstanceUID").to_pylist(), ords, strict=True):
                rows += 1
                if uid not in keep or o >= keep[uid][1]:
                    keep[uid] = (si, o)
        self.dropped += rows - len(keep)
        merged: dict[str, list[pa.Table]] = {}
        for si, (tables, _ords) in enumerate(self.segments):
            mine = pa.array([u for u, (s, _o) in keep.items() if s == si], pa.string())
            for name, tab in tables.items():
                if tab is None or not tab.num_rows:
                    continue
                if len(mine) < tables["instances"].num_rows:
                    tab = tab.filter(pc.is_in(tab.column("SOPInstanceUID"), value_set=mine))
                merged.setdefault(name, []).append(tab)
        writer, sub = self._writer()
        writer.write_tables({n: portable_times(pa.concat_tables(ts)) for n, ts in merged.items()})
        self.written.extend((u, o, sub) for u, (_s, o) in keep.items())
        self.segments.clear()
        self.buffered = 0
        self.buffered_bytes = 0

    def close(self) -> None:
        self.flush()
        if self.rejects:
            writer, _sub = self._writer()
            writer.write("rejects", pa.concat_tables(self.rejects))


def _run_partition(
    cfg: WorkerConfig, out: str, env: dict[str, str] | None = None, store_env: dict[str, str] | None = None
) -> Any:
    """The ``mapInArrow`` function: chunks in, result rows out (module-level so it pickles).

    ``env`` is the driver's ``DICOMLAKE_*`` environment (de-identification keys among them):
    an executor's environment is its worker's, not the driver's, so the task sets it itself
    (in its own Python worker process, never logged) before it reads a file. ``store_env`` is
    the driver's S3 addressing (``AWS_*``, :data:`dicomlake.store.fs.S3_ENV`), set likewise
    where the executor has none of its own.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        for k, v in (store_env or {}).items():
            os.environ.setdefault(k, v)
        if env is not None:
            from dicomlake.ingest import worker

            if {k: v for k, v in os.environ.items() if k.startswith("DICOMLAKE_")} != env:
                worker.init_worker(cfg, env)  # sets the variables, forgets Deidentifiers keyed otherwise

        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx else 0
        attempt = ctx.attemptNumber() if ctx else 0
        stage_name = f"p{pid:06d}-a{attempt}-{uuid.uuid4().hex[:8]}"
        tw = _TaskWriter(join(out, STAGING), stage_name, f"part-{pid:06d}-{uuid.uuid4().hex[:8]}")
        counts: dict[str, Any] = {"files": 0, "instances": 0, "rejected": 0, "skipped": 0, "notes": []}
        t0 = time.perf_counter()
        for batch in batches:
            for chunk_json in batch.column("chunk").to_pylist():
                items = json.loads(chunk_json)
                tasks = [Task(**d) for _o, d in items]
                ordinal_of = {t.source_path: o for t, (o, _d) in zip(tasks, items, strict=True)}
                res = process_chunk(tasks, cfg)
                counts["files"] += res.files
                counts["instances"] += res.instances
                counts["rejected"] += res.rejected
                counts["skipped"] += res.skipped
                counts["notes"].extend(res.notes[:20])
                if res.rejects.num_rows:
                    tw.rejects.append(res.rejects)
                for seg in res.segments:
                    paths = seg.tables["instances"].column("source_path").to_pylist()
                    tw.add(seg.tables, [ordinal_of.get(p, -1) for p in paths])
        tw.close()
        counts["seconds"] = time.perf_counter() - t0
        counts["stages"] = tw.stages
        counts["dropped"] = tw.dropped
        counts["peak_buffer_bytes"] = tw.peak_bytes
        n = len(tw.written)
        yield pa.RecordBatch.from_pydict(
            {
                "kind": ["instance"] * n + ["task"],
                "SOPInstanceUID": [w[0] for w in tw.written] + [None],
                "ordinal": [w[1] for w in tw.written] + [None],
                "stage": [w[2] for w in tw.written] + [stage_name],
                "summary": [None] * n + [json.dumps(counts)],
            },
            schema=RESULT_SCHEMA,
        )

    return run


def ingest_spark(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    spark: Any = None,
    master: str = "local[2]",
    files_per_task: int | None = None,
    settings: Settings | None = None,
    source: str | None = None,
    deid: str | None = None,
    manifest: str | os.PathLike[str] | None = None,
) -> SparkIngestReport:
    """Extract every header under ``paths`` on Spark into the Parquet lake at ``out``.

    Parameters
    ----------
    paths
        Files, folders, zips, DICOMDIRs, visible at the same paths on every executor, or URIs
        (``s3://bucket/prefix``, ``hdfs://…``). The executors list them, one task per top-level
        folder; the driver never holds the file list.
    manifest
        A list of the files to read, one path or URI a line (text) or a ``path`` column (Parquet),
        read in ranges (row groups) by the executors: the way to feed 10⁹ objects.
    out
        The Parquet lake folder: new, empty, or one this engine wrote (the run is appended; for an
        instance already in the lake, this run's copy replaces the older one).
    spark
        A SparkSession (default: one started with ``master``).
    master
        Spark master URL when no session is given (``local[2]``, ``spark://host:7077``, ``yarn``).
    files_per_task
        Files per Spark task (default: spread over 4 tasks per core, at least one chunk).
    deid
        A de-identification profile (name or TOML path), applied on the executors exactly as
        the embedded engine applies it; the keys (``DICOMLAKE_DEID__*``) travel with the
        tasks. A project secret is required, so that every executor draws the same pseudonyms.
    """
    settings = settings or get_settings()
    t0 = time.perf_counter()
    # executors run in their own working folders: every path they see is absolute or a URI
    out_s = os.fspath(out)
    out_uri = out_s.rstrip("/") if is_remote(out_s) else local_path(out_s)
    fs, base = filesystem(out_uri)
    append = _appendable(fs, base)
    if not append:
        found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        if any(f.base_name not in (STAGING, "quarantine", "reports") for f in found):
            raise ConfigError(
                f"{out_uri} holds files but no lake written by the Spark engine; the Spark engine writes a new "
                "Parquet lake folder or appends to one it wrote (choose a new --out, or remove it)"
            )
    fs.create_dir(base, recursive=True)
    sources = [os.fspath(p).rstrip("/") if is_remote(os.fspath(p)) else local_path(p) for p in paths]
    man = None if manifest is None else os.fspath(manifest)
    units = _units(sources, man if man is None or is_remote(man) else local_path(man))
    if deid:
        _check_deid(deid)
    run_id = uuid.uuid4().hex[:12]
    if spark is None:
        try:
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
        except ImportError:
            spark = None
    own = spark is None
    spark = spark or spark_session(master)
    sc = spark.sparkContext
    report = SparkIngestReport(run_id=run_id, out=out_uri, master=sc.master)
    ing = settings.ingest
    cfg = WorkerConfig(
        lake=out_uri,
        columns_file=str(settings.columns_file) if settings.columns_file else None,
        inline_max=ing.inline_binary_max,
        max_header_bytes=ing.max_header_bytes,
        max_zip_member_bytes=ing.max_zip_member_bytes,
        max_zip_ratio=ing.max_zip_ratio,
        received_source=source,
        allow_executable_preamble=ing.allow_executable_preamble,
        deid_profile=deid,
        max_sequence_depth=ing.max_sequence_depth,
    )
    env = {k: v for k, v in os.environ.items() if k.startswith("DICOMLAKE_")}
    store_env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k)}
    parallelism = max(1, sc.defaultParallelism)
    staging = f"{base}/{STAGING}"
    phase = "extract"
    try:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        # listing on the executors: the driver sends the units, gets back two counts
        unit_rows = [(i, *u) for i, u in enumerate(units)]
        listed = (
            spark.createDataFrame(unit_rows, "unit long, kind string, path string, start long, end long")
            .repartition(max(1, min(len(units), parallelism * 4)))
            .mapInArrow(_list_partition(FILES_PER_CHUNK, store_env), LISTING_DDL)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        counted = listed.agg(F.count("*").alias("chunks"), F.sum("n").alias("files")).first()
        n_chunks, report.files = int(counted["chunks"] or 0), int(counted["files"] or 0)
        # default: 4 tasks per core, so a slow task does not hold the job up, and at most
        # MAX_FILES_PER_TASK files a task
        spread = max(parallelism * 4, -(-report.files // MAX_FILES_PER_TASK))
        n_parts = max(1, -(-report.files // files_per_task)) if files_per_task else spread
        n_parts = report.partitions = max(1, min(n_parts, n_chunks))
        df = listed.select("chunk_id", "chunk").repartitionByRange(n_parts, "chunk_id")
        result = df.mapInArrow(_run_partition(cfg, out_uri, env, store_env), RESULT_DDL).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        if not is_remote(out_uri):
            spark.sparkContext.setCheckpointDir(f"{staging}/_checkpoint")
        result = _materialize(result, out_uri)
        t_extract = time.perf_counter()
        summaries = result.filter("kind = 'task'").select("stage", "summary").collect()  # one row a task
        listed.unpersist()
        stages = _add_summaries(report, summaries)
        inst = result.filter("kind = 'instance'")
        # copies of one instance in several files of this run: the copy read last wins; a
        # Spark job finds the losers, the commit job below leaves them out of the lake
        from pyspark.sql import Window

        by_uid = Window.partitionBy("SOPInstanceUID")
        marked = inst.withColumn("keep", F.max("ordinal").over(by_uid)).withColumn(
            "first", F.row_number().over(by_uid.orderBy(F.desc("ordinal"))) == 1
        )
        losers = marked.filter("ordinal < keep").select("stage", "SOPInstanceUID")
        counted = marked.agg(
            F.sum(F.col("first").cast("long")).alias("unique"),
            F.sum((F.col("ordinal") < F.col("keep")).cast("long")).alias("losers"),
        ).first()
        report.unique_instances = int(counted["unique"] or 0)
        report.duplicates_resolved += int(counted["losers"] or 0)  # and those dropped inside tasks, counted above
        new_uids = inst.select("SOPInstanceUID")
        older: Any = None
        if append:
            # the older copies in the lake's files, found before this run's files are moved in
            # (so they cannot be among them) and checkpointed, so a recomputation cannot either
            older = _older_copies(spark, fs, base, out_uri, new_uids, store_env, parallelism)
            if older is not None:
                older = _materialize(older, out_uri)
                report.replaced = older.filter(F.col("table") == "instances").count()
                older = older if report.replaced else None  # no instance row: no other row either
        report.seconds_extract = t_extract - t0  # expand + extraction + staged writes
        phase = "commit"
        report.files_written = _commit_job(spark, stages, losers, out_uri, store_env, parallelism)
        phase = "replace"
        if older is not None:
            # the copy this run read is the newest: older copies in the lake's earlier files go
            # after the new files are in place (an interruption leaves a duplicate, never a loss)
            _rewrite_job(older, out_uri, store_env)
    except Exception as exc:
        # one clear line on the console; the Java and Python traces go to a log file
        log = _failure_log(out_uri, run_id, exc)
        if phase == "extract":
            _delete_dir(fs, staging)
            raise DicomlakeError(
                f"the Spark job failed: {_reason(exc)} (nothing was added to {out_uri}; details in {log})"
            ) from None
        step = "moving this run's files into" if phase == "commit" else "dropping older copies from"
        raise DicomlakeError(
            f"the Spark job failed while {step} {out_uri}: {_reason(exc)} (older copies are kept: a duplicate, "
            f"never a loss; files not yet moved stay in {STAGING}; details in {log})"
        ) from None
    finally:
        if own:
            spark.stop()
    _delete_dir(fs, staging)
    writer = ParquetLakeWriter(out_uri, f"run-{run_id}")
    writer.write_marker(extra={"written_by": "dicomlake ingest --engine spark", "run_id": run_id})
    report.seconds = time.perf_counter() - t0
    _write_run(out_uri, report, sources, deid)
    return report


def _check_deid(deid: str) -> None:
    """Refuse what cannot work on executors before any file is read."""
    from dicomlake.deid import load_profile, settings_from_env

    load_profile(deid)  # a bad profile name fails here
    ds = settings_from_env()
    if ds.secret is None:
        raise ConfigError(
            "--deid with --engine spark needs DICOMLAKE_DEID__SECRET: without a project secret every "
            "executor would draw its own key and pseudonyms would differ within one lake"
        )
    if ds.vault_path is not None and ds.vault_key is not None:
        raise ConfigError(
            "the re-identification vault (DICOMLAKE_DEID__VAULT_PATH) is a local SQLite file that executors "
            "cannot share: unset it for --engine spark, or ingest with the embedded engine"
        )
    for name in ("DICOMLAKE_DEID__MAP_FILE",):  # executors resolve paths in their own folders
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.environ[name])


def _reason(exc: BaseException) -> str:
    """The cause of a failed Spark job in one line: the innermost Python or Java error message."""
    import re

    text = str(exc)
    found = re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception)\b:.*)$", text, re.M)
    line = (
        found[-1].strip() if found else next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    )
    return line[:300]


def _failure_log(out: str, run_id: str, exc: BaseException) -> str:
    import traceback

    log = join(out, "reports", f"ingest-{run_id}-failed.log")
    try:
        write_bytes(log, "".join(traceback.format_exception(exc)).encode("utf-8"))
    except OSError:  # the output cannot be written either: the log goes to the local temp folder
        import tempfile

        log = os.path.join(tempfile.gettempdir(), f"dicomlake-ingest-{run_id}-failed.log")
        Path(log).write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    return log


def _delete_dir(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except (FileNotFoundError, OSError):
        pass


def _appendable(fs: pafs.FileSystem, base: str) -> bool:
    """True for a Parquet lake the Spark engine wrote (its files encode times alike)."""
    try:
        with fs.open_input_stream(f"{base}/{MARKER}") as fh:
            meta = json.loads(bytes(fh.read()).decode("utf-8"))
    except (OSError, ValueError):
        return False
    return str(meta.get("written_by", "")).startswith("dicomlake ingest --engine spark")


def _materialize(df: Any, out: str) -> Any:
    """``df`` computed once and kept: a reliable checkpoint for a local lake; for a URI, Spark's
    own checkpoint would need a Hadoop file system for it (hadoop-aws for ``s3a://``), so the
    rows stay on the executors instead and a lost executor fails the job rather than compute
    the rows a second time."""
    return df.localCheckpoint(eager=True) if is_remote(out) else df.checkpoint(eager=True)


def _add_summaries(report: SparkIngestReport, summaries: Sequence[Any]) -> list[str]:
    """Add the tasks' summary rows to ``report``; the staged sub-folders the tasks wrote."""
    stages: list[str] = []
    for row in summaries:
        c = json.loads(row["summary"])
        report.tasks += 1
        report.instances += c["instances"]
        report.rejected += c["rejected"]
        report.skipped += c["skipped"]
        report.notes.extend(c["notes"])
        report.task_seconds += c["seconds"]
        report.peak_buffer_bytes = max(report.peak_buffer_bytes, c.get("peak_buffer_bytes", 0))
        report.duplicates_resolved += c.get("dropped", 0)
        stages.extend(c["stages"])
    return stages


LAKE_FILES_DDL = "table string, path string, part string"
LAKE_UIDS_DDL = "table string, path string, part string, SOPInstanceUID string"
COUNTS_DDL = "files long, rows long"
_COUNTS = pa.schema([("files", pa.int64()), ("rows", pa.int64())])


def _parquet_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """The Parquet files under ``folder`` (recursively; a file is itself), sorted."""
    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.File:
        return [folder] if folder.endswith(".parquet") else []
    found = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet"))


def _lake_files(out: str, store_env: dict[str, str]) -> Any:
    """``mapInArrow``: (table, folder) in, the folder's Parquet files out, each with its
    partition folder relative to the table's (``part_modality=CT/part_month=2024-05``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for k, v in store_env.items():
            os.environ.setdefault(k, v)
        fs, base = filesystem(out)
        for batch in batches:
            for table, folder in zip(batch.column("table").to_pylist(), batch.column("path").to_pylist(), strict=True):
                files = _parquet_files(fs, folder)
                root = f"{base}/{table}/"
                parts = [f.rsplit("/", 1)[0][len(root) :] if f.startswith(root) else "" for f in files]
                if files:
                    yield pa.RecordBatch.from_pydict(
                        {"table": [table] * len(files), "path": files, "part": parts},
                        schema=pa.schema([("table", pa.string()), ("path", pa.string()), ("part", pa.string())]),
                    )

    return run


def _file_uids(out: str, store_env: dict[str, str]) -> Any:
    """``mapInArrow``: lake files in, one row per row of each file out, read from the
    SOPInstanceUID column only (row group by row group)."""
    schema = pa.schema([(n, pa.string()) for n in ("table", "path", "part", "SOPInstanceUID")])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for k, v in store_env.items():
            os.environ.setdefault(k, v)
        fs, _base = filesystem(out)
        for batch in batches:
            cols = (batch.column(c).to_pylist() for c in ("table", "path", "part"))
            for table, path, part in zip(*cols, strict=True):
                with fs.open_input_file(path) as fh:
                    pf = pq.ParquetFile(fh)
                    if "SOPInstanceUID" not in pf.schema_arrow.names:
                        continue
                    for b in pf.iter_batches(batch_size=65_536, columns=["SOPInstanceUID"]):
                        n = b.num_rows
                        yield pa.RecordBatch.from_arrays(
                            [
                                pa.array([table] * n, pa.string()),
                                pa.array([path] * n, pa.string()),
                                pa.array([part] * n, pa.string()),
                                b.column(0).cast(pa.string()),
                            ],
                            schema=schema,
                        )

    return run


def _older_copies(
    spark: Any, fs: pafs.FileSystem, base: str, out: str, uids: Any, store_env: dict[str, str], parallelism: int
) -> Any:
    """A DataFrame of (table, path, part, SOPInstanceUID): the rows of the lake's files that
    hold an instance in ``uids`` (a DataFrame), or None for a lake without instances.

    The executors list the instances table (the driver looks at its top level only), read the
    SOPInstanceUID column of every file and join it with ``uids``; the other partitioned
    tables are then read only in the partitions where an older instance row was found (an
    instance's elements, JSON and dose rows share its partition)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    top = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector(f"{base}/instances", allow_not_found=True))
        if not f.base_name.startswith((".", "_"))
    ]
    if not top:
        return None
    n = max(1, parallelism * 2)

    def rows(units: Any) -> Any:
        files = units.mapInArrow(_lake_files(out, store_env), LAKE_FILES_DDL)
        return files.repartition(n).mapInArrow(_file_uids(out, store_env), LAKE_UIDS_DDL)

    inst = rows(spark.createDataFrame([("instances", p) for p in top], "table string, path string"))
    hits = (
        inst.join(uids, "SOPInstanceUID", "left_semi")
        .select("table", "path", "part", "SOPInstanceUID")
        .persist(StorageLevel.MEMORY_AND_DISK)  # read twice below: the lake is scanned once
    )
    others = spark.createDataFrame([(t,) for t in PARTITIONED if t != "instances"], "table string")
    units = (
        hits.select("part")
        .distinct()
        .crossJoin(others)
        .select(
            "table",
            F.concat(
                F.lit(base + "/"),
                "table",
                F.when(F.col("part") == "", F.lit("")).otherwise(F.concat(F.lit("/"), "part")),
            ).alias("path"),
        )
    )
    found = hits.select("SOPInstanceUID").distinct()
    rest = rows(units).join(found, "SOPInstanceUID", "left_semi").select("table", "path", "part", "SOPInstanceUID")
    return hits.unionByName(rest).persist(StorageLevel.MEMORY_AND_DISK)  # computed once by the checkpoint


def _rewrite_file(fs: pafs.FileSystem, src: str, dest: str, drop: pa.Array | None, local: bool) -> tuple[int, int]:
    """Put ``src`` at ``dest`` without the rows of the UIDs in ``drop``; (files written, rows
    removed). Locally through a rename; on an object store a PUT replaces the object whole.
    A file left with no row is not written (and ``src`` goes)."""
    if drop is None or not len(drop):
        if src != dest:
            fs.move(src, dest)  # a rename locally and on HDFS; copy and delete on an object store
        return 1, 0
    pf = pq.ParquetFile(src, filesystem=fs)  # one footer read (a GET on an object store)
    tab = pf.read()
    meta = pf.metadata
    kept = tab.filter(pc.invert(pc.is_in(tab.column("SOPInstanceUID"), value_set=drop)))
    removed = tab.num_rows - kept.num_rows
    if not removed:
        return _rewrite_file(fs, src, dest, None, local)
    if kept.num_rows:
        folder, name = dest.rsplit("/", 1)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp" if local else dest
        # rows keep their order, and the file its declared sort (a sorted element file's) and row groups
        declared = list(meta.row_group(0).sorting_columns) if meta.num_row_groups else []
        pq.write_table(
            kept,
            tmp,
            filesystem=fs,
            compression="zstd",
            row_group_size=ELEMENT_ROWS_PER_GROUP if declared else ROWS_PER_GROUP,
            sorting_columns=declared or None,
        )
        if local:
            fs.move(tmp, dest)
    if src != dest or not kept.num_rows:
        fs.delete_file(src)
    return (1 if kept.num_rows else 0), removed


def _task_filesystem(out: str, store_env: dict[str, str]) -> tuple[pafs.FileSystem, str, bool]:
    """On an executor: the lake's file system (object-store credentials from ``store_env``),
    its base path, and whether it is local (files replaced by a rename)."""
    for k, v in store_env.items():
        os.environ.setdefault(k, v)
    fs, base = filesystem(out)
    return fs, base, isinstance(fs, pafs.LocalFileSystem)


def _commit_stages(out: str, store_env: dict[str, str]) -> Any:
    """``mapInArrow`` of the commit job: (staged sub-folder, UIDs of its losing copies) in;
    each file moved into the lake, without the losers' rows; (files, rows dropped) out."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fs, base, local = _task_filesystem(out, store_env)
        files = removed = 0
        for batch in batches:
            for stage, uids in zip(batch.column("stage").to_pylist(), batch.column("uids").to_pylist(), strict=True):
                root = f"{base}/{STAGING}/{stage}"
                drop = pa.array(sorted(set(uids)), pa.string()) if uids else None
                for f in _parquet_files(fs, root):
                    dest = base + f[len(root) :]
                    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                    table = f[len(root) + 1 :].split("/", 1)[0]
                    w, r = _rewrite_file(fs, f, dest, drop if table in PARTITIONED else None, local)
                    files += w
                    removed += r if table == "instances" else 0
        yield pa.RecordBatch.from_pydict({"files": [files], "rows": [removed]}, schema=_COUNTS)

    return run


def _rewrite_files(out: str, store_env: dict[str, str]) -> Any:
    """``mapInArrow`` of the replacement job: (lake file, UIDs) in, the file rewritten in
    place without those rows; (files rewritten, instance rows removed) out."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fs, base, local = _task_filesystem(out, store_env)
        files = removed = 0
        for batch in batches:
            for path, uids in zip(batch.column("path").to_pylist(), batch.column("uids").to_pylist(), strict=True):
                if fs.get_file_info(path).type != pafs.FileType.File:
                    continue  # a retried task: gone already
                _w, r = _rewrite_file(fs, path, path, pa.array(sorted(set(uids)), pa.string()), local)
                files += 1
                removed += r if path.startswith(f"{base}/instances/") else 0
        yield pa.RecordBatch.from_pydict({"files": [files], "rows": [removed]}, schema=_COUNTS)

    return run


def _commit_job(
    spark: Any, stages: list[str], losers: Any, out: str, store_env: dict[str, str], parallelism: int
) -> int:
    """Move the committed attempts' staged files into the lake on the executors, one task per
    group of sub-folders, leaving out the losing copies; the number of files placed."""
    from pyspark.sql import functions as F

    if not stages:
        return 0
    lists = losers.groupBy("stage").agg(F.collect_list("SOPInstanceUID").alias("uids"))
    todo = (
        spark.createDataFrame([(s,) for s in stages], "stage string")
        .join(lists, "stage", "left")
        .repartition(max(1, min(len(stages), parallelism * 4)))
    )
    row = todo.mapInArrow(_commit_stages(out, store_env), COUNTS_DDL).agg(F.sum("files").alias("files")).first()
    return int(row["files"] or 0)


def _rewrite_job(rows: Any, out: str, store_env: dict[str, str]) -> int:
    """Rewrite, on the executors, the lake files named in ``rows`` (path, SOPInstanceUID)
    without those instances' rows, one file per group; the number of files rewritten."""
    from pyspark.sql import functions as F

    per_file = rows.groupBy("path").agg(F.collect_list("SOPInstanceUID").alias("uids"))
    row = per_file.mapInArrow(_rewrite_files(out, store_env), COUNTS_DDL).agg(F.sum("files").alias("files")).first()
    return int(row["files"] or 0)


def _write_run(
    out_dir: str, report: SparkIngestReport, paths: Sequence[str | os.PathLike[str]], deid: str | None
) -> None:
    import datetime as dt

    from dicomlake.ingest.pipeline import _run_sources
    from dicomlake.lakeschema import INGEST_RUNS_SCHEMA

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    row = {
        "run_id": report.run_id,
        "started_at": now - dt.timedelta(seconds=report.seconds),
        "finished_at": now,
        "sources": _run_sources(paths, deid),
        "files": report.files,
        "instances": report.instances,
        "rejected": report.rejected,
        "skipped": report.skipped,
        "status": "partial" if report.rejected else "ok",
    }
    ParquetLakeWriter(out_dir, f"run-{report.run_id}").write(
        "ingest_runs", pa.Table.from_pylist([row], schema=INGEST_RUNS_SCHEMA)
    )


__all__ = ["MARKER", "REJECT_SCHEMA", "SparkIngestReport", "ingest_spark", "spark_session"]
