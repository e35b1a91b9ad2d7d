"""The Spark engine: the embedded engine's extraction over an Apache Spark cluster, into a Parquet lake.

The driver expands the sources (folders, zips, DICOMDIRs: :func:`dicomlake.ingest.sources.expand`)
into chunks of tasks, exactly as the embedded pipeline does, and hands the chunks to Spark
as rows of a DataFrame. Each Spark task runs :func:`dicomlake.ingest.worker.process_chunk`
— the same pure function the embedded engine's worker processes run — over its chunks
and writes the resulting Arrow tables with :class:`dicomlake.store.parquet.ParquetLakeWriter`,
so the Parquet files hold the embedded lake's columns with its Arrow types, partitioned
by modality and study month.

Why paths and not Spark's ``binaryFile`` source: a header is a few kB at the front of a
file that carries megabytes of pixel data; ``binaryFile`` would move every byte of the
archive through Spark, while a task that opens the path reads only the header (the
executors see the archive on a shared file system, as the driver does).

Commit protocol: a task attempt writes under ``OUT/_staging/<partition>-<attempt>-<uuid>/``
and returns, through ``mapInArrow``, one row per instance (its SOP Instance UID and the
ordinal of its file in the expanded source list) and one summary row. The driver
checkpoints those rows, so each partition's output is the output of exactly one successful
attempt; it then resolves instances that occur in more than one file (the copy read last
in source order wins, as in the embedded engine's upsert), moves the committed files into
place and removes the staging folder. A failed or speculative attempt leaves nothing behind.
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
import pyarrow.parquet as pq

from dicomlake.config import Settings, get_settings
from dicomlake.errors import ConfigError, DicomlakeError
from dicomlake.ingest.sources import Task, expand
from dicomlake.ingest.worker import WorkerConfig, process_chunk
from dicomlake.lakeschema import REJECT_SCHEMA
from dicomlake.store.parquet import MARKER, PARTITIONED, ParquetLakeWriter

FILES_PER_CHUNK = 48
"""Files per chunk (one ``process_chunk`` call), as in the embedded pipeline. Default: 48"""
FLUSH_INSTANCES = 20_000
"""A task writes its buffered rows once this many instances are buffered. Default: 20,000"""
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

    def __init__(self, stage_root: Path, stage_name: str, writer_id: str) -> None:
        self.stage_root = stage_root
        self.stage_name = stage_name
        self.writer_id = writer_id
        self.segments: list[tuple[dict[str, pa.Table], list[int]]] = []
        self.rejects: list[pa.Table] = []
        self.buffered = 0
        self.written: list[tuple[str, int, str]] = []  # (uid, ordinal, sub-stage)
        self.dropped = 0  # older copies dropped inside this task (same SOP Instance UID, one flush)
        self.stages: list[str] = []

    def add(self, tables: dict[str, pa.Table], ordinals: list[int]) -> None:
        self.segments.append((tables, ordinals))
        self.buffered += len(ordinals)
        if self.buffered >= FLUSH_INSTANCES:
            self.flush()

    def _writer(self) -> tuple[ParquetLakeWriter, str]:
        sub = f"{self.stage_name}-f{len(self.stages)}"
        self.stages.append(sub)
        return ParquetLakeWriter(self.stage_root / sub, f"{self.writer_id}-{len(self.stages)}"), sub

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

    def close(self) -> None:
        self.flush()
        if self.rejects:
            writer, _sub = self._writer()
            writer.write("rejects", pa.concat_tables(self.rejects))


def _run_partition(cfg: WorkerConfig, out: str, env: dict[str, str] | None = None) -> Any:
    """The ``mapInArrow`` function: chunks in, result rows out (module-level so it pickles).

    ``env`` is the driver's ``DICOMLAKE_*`` environment (de-identification keys among them):
    an executor's environment is its worker's, not the driver's, so the task sets it itself
    (in its own Python worker process, never logged) before it reads a file.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        if env is not None:
            from dicomlake.ingest import worker

            if {k: v for k, v in os.environ.items() if k.startswith("DICOMLAKE_")} != env:
                worker.init_worker(cfg, env)  # sets the variables, forgets Deidentifiers keyed otherwise

        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx else 0
        attempt = ctx.attemptNumber() if ctx else 0
        stage_name = f"p{pid:06d}-a{attempt}-{uuid.uuid4().hex[:8]}"
        tw = _TaskWriter(Path(out) / STAGING, stage_name, f"part-{pid:06d}-{uuid.uuid4().hex[:8]}")
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
) -> SparkIngestReport:
    """Extract every header under ``paths`` on Spark into the Parquet lake at ``out``.

    Parameters
    ----------
    paths
        Files, folders, zips, DICOMDIRs, visible at the same paths on every executor.
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
    out_dir = Path(out)
    append = _appendable(out_dir)
    if (
        not append
        and out_dir.exists()
        and any(p.name not in (STAGING, "quarantine", "reports") for p in out_dir.iterdir())
    ):
        raise ConfigError(
            f"{out_dir} holds files but no lake written by the Spark engine; the Spark engine writes a new "
            "Parquet lake folder or appends to one it wrote (choose a new --out, or remove it)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # executors run in their own working folders: every path they see is absolute
    out_dir = Path(os.path.abspath(out_dir))
    paths = [os.path.abspath(p) for p in paths]
    tasks = expand(paths)
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
    report = SparkIngestReport(run_id=run_id, out=str(out_dir), master=sc.master, files=len(tasks))
    ing = settings.ingest
    cfg = WorkerConfig(
        lake=str(out_dir.resolve()),
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
    chunks = _chunks(tasks, FILES_PER_CHUNK)
    parallelism = max(1, sc.defaultParallelism)
    # default: 4 tasks per core, so a slow task does not hold the job up
    spread = max(1, min(len(chunks), parallelism * 4))
    n_parts = max(1, -(-len(tasks) // files_per_task)) if files_per_task else spread
    n_parts = min(n_parts, max(1, len(chunks)))
    report.partitions = n_parts
    rows = [(i, json.dumps([(o, asdict(t)) for o, t in c])) for i, c in enumerate(chunks)]
    try:
        from pyspark import StorageLevel

        df = spark.createDataFrame(rows, "chunk_id long, chunk string").repartitionByRange(n_parts, "chunk_id")
        result = df.mapInArrow(_run_partition(cfg, str(out_dir), env), RESULT_DDL)
        spark.sparkContext.setCheckpointDir(str((out_dir / STAGING / "_checkpoint").resolve()))
        result = result.persist(StorageLevel.MEMORY_AND_DISK).checkpoint(eager=True)
        t_extract = time.perf_counter()
        summaries = result.filter("kind = 'task'").select("stage", "summary").collect()
        from pyspark.sql import functions as F

        inst = result.filter("kind = 'instance'")
        dup = (
            inst.groupBy("SOPInstanceUID").agg(F.count("*").alias("n"), F.max("ordinal").alias("keep")).filter("n > 1")
        )
        losers = inst.join(dup, "SOPInstanceUID").filter("ordinal < keep").select("stage", "SOPInstanceUID").collect()
        new_uids = inst.select("SOPInstanceUID").distinct()
        report.unique_instances = new_uids.count()
        appended = [r["SOPInstanceUID"] for r in new_uids.collect()] if append else []
        report.seconds_extract = t_extract - t0  # expand + extraction + staged writes
    except Exception as exc:
        # one clear line on the console; the Java and Python traces go to a log file
        log = _failure_log(out_dir, run_id, exc)
        shutil.rmtree(out_dir / STAGING, ignore_errors=True)
        raise DicomlakeError(
            f"the Spark job failed: {_reason(exc)} (nothing was added to {out_dir}; details in {log})"
        ) from None
    finally:
        if own:
            spark.stop()
    stages = []
    for row in summaries:
        c = json.loads(row["summary"])
        report.tasks += 1
        report.instances += c["instances"]
        report.rejected += c["rejected"]
        report.skipped += c["skipped"]
        report.notes.extend(c["notes"])
        report.task_seconds += c["seconds"]
        report.duplicates_resolved += c.get("dropped", 0)
        stages.extend(c["stages"])
    by_stage: dict[str, list[str]] = {}
    for row in losers:
        by_stage.setdefault(row["stage"], []).append(row["SOPInstanceUID"])
    report.duplicates_resolved += len(losers)  # and those dropped inside tasks, counted above
    for stage, uids in by_stage.items():
        _drop_instances(out_dir / STAGING / stage, uids)
    moved = _commit(out_dir, stages)
    report.files_written = len(moved)
    if appended:
        # the copy this run read is the newest: older copies in the lake's earlier files go
        # (after the new files are in place, so an interruption leaves a duplicate, never a loss)
        report.replaced = _drop_instances(out_dir, appended, skip=set(moved))
    writer = ParquetLakeWriter(out_dir, f"run-{run_id}")
    writer.write_marker(extra={"written_by": "dicomlake ingest --engine spark", "run_id": run_id})
    report.seconds = time.perf_counter() - t0
    _write_run(out_dir, report, paths, deid)
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


def _failure_log(out_dir: Path, run_id: str, exc: BaseException) -> Path:
    import traceback

    log = out_dir / "reports" / f"ingest-{run_id}-failed.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    return log


def _appendable(out_dir: Path) -> bool:
    """True for a Parquet lake the Spark engine wrote (its files encode times alike)."""
    marker = out_dir / MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text("utf-8"))
    except ValueError:
        return False
    return str(meta.get("written_by", "")).startswith("dicomlake ingest --engine spark")


def _drop_instances(stage: Path, uids: list[str], skip: set[Path] | None = None) -> int:
    """Remove the rows of ``uids`` (copies superseded by a later file) from a staged output or
    the lake's files (but not those in ``skip``); the number of instance rows removed."""
    drop = pa.array(sorted(set(uids)), pa.string())
    removed = 0
    for name in PARTITIONED:
        for f in sorted((stage / name).rglob("*.parquet")) if (stage / name).is_dir() else []:
            if skip and f in skip:
                continue
            tab = pq.read_table(f, partitioning=None)
            mask = pc.invert(pc.is_in(tab.column("SOPInstanceUID"), value_set=drop))
            kept = tab.filter(mask)
            if kept.num_rows == tab.num_rows:
                continue
            if name == "instances":
                removed += tab.num_rows - kept.num_rows
            if kept.num_rows:
                tmp = f.with_name(f".{f.name}.tmp")
                pq.write_table(kept, tmp, compression="zstd")
                tmp.replace(f)
            else:
                f.unlink()
    return removed


def _commit(out_dir: Path, stages: list[str]) -> list[Path]:
    """Move the committed attempts' files into the lake; remove the staging folder; their new paths."""
    moved: list[Path] = []
    for stage in stages:
        root = out_dir / STAGING / stage
        if not root.is_dir():
            continue
        for f in root.rglob("*.parquet"):
            dest = out_dir / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            moved.append(dest)
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
    return moved


def _write_run(
    out_dir: Path, report: SparkIngestReport, paths: Sequence[str | os.PathLike[str]], deid: str | None
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
