"""The ingest pipeline: sources → worker processes (read + extract) → batched upserts.

Each batch is one transaction, so a crash (kill -9 included) leaves the lake as it was
after the last committed batch; running the same ingest again upserts every instance on
SOP Instance UID, so nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from dicomlake.config import Settings, get_settings
from dicomlake.ingest.sources import Task, expand
from dicomlake.ingest.worker import (
    ChunkResult,
    Segment,
    WorkerConfig,
    init_worker,
    process_chunk,
    run_chunk,
    start_worker_server,
    worker_context,
    worker_initargs,
)
from dicomlake.store.base import Store
from dicomlake.store.duckdb import DuckDBStore

CHUNK_FILES = 48
CURATE_EVERY = 20_000
"""Instances committed between two runs of the curation rules during an ingest (and at its end);
a crash leaves at most this many unchecked, until the next ``dicomlake curate``."""
RECYCLE_AFTER_CHUNKS = 50
"""A worker is replaced by a fresh fork after this many chunks (2,400 files): its memory stays
bounded however large the corpus, at the cost of one fork from the preloaded server."""


@dataclass(slots=True)
class IngestReport:
    """Counts of one ingest run."""

    run_id: str
    lake: str
    files: int = 0
    instances: int = 0
    inserted: int = 0
    replaced: int = 0
    rejected: int = 0
    skipped: int = 0
    elements: int = 0
    dose_events: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file was read, 1 when some were rejected (STYLE.md §10)."""
        return 1 if self.rejected else 0

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "lake": self.lake,
            "files": self.files,
            "instances": self.instances,
            "inserted": self.inserted,
            "replaced": self.replaced,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "elements": self.elements,
            "dose_events": self.dose_events,
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.rate, 1),
            "notes": self.notes[:100],
        }


def _chunks(tasks: Sequence[Task], size: int) -> Iterator[list[Task]]:
    """Chunks of tasks; zip members of one archive stay together so it is opened once."""
    cur: list[Task] = []
    for t in tasks:
        if cur and (len(cur) >= size or (t.kind == "zip") != (cur[-1].kind == "zip")):
            yield cur
            cur = []
        cur.append(t)
    if cur:
        yield cur


class _Batcher:
    """Collects segments of chunk results and commits them to the store in batches."""

    def __init__(self, store: Store, report: IngestReport, batch_size: int) -> None:
        self.store = store
        self.report = report
        self.batch_size = batch_size
        self.pending: list[Segment] = []
        self.pending_rejects: list[pa.Table] = []
        self.pending_uids: set[str] = set()
        self.after_commit: Callable[[list[str]], None] | None = None  # curation on ingest

    def add(self, res: ChunkResult) -> None:
        if res.rejects.num_rows:
            self.pending_rejects.append(res.rejects)
        for seg in res.segments:
            # a SOP Instance UID already pending (two copies of a file): commit first, so
            # the upsert replaces the earlier copy instead of inserting it twice
            if self.pending_uids.intersection(seg.uids):
                self.flush()
            self.pending.append(seg)
            self.pending_uids.update(seg.uids)
        if len(self.pending_uids) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending and not self.pending_rejects:
            return
        tables: dict[str, pa.Table] = {}
        for name in ("instances", "elements", "dicom_json", "dose_events"):
            parts = [s.tables[name] for s in self.pending if name in s.tables and s.tables[name].num_rows]
            if parts:
                tables[name] = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if self.pending_rejects:
            tables["rejects"] = pa.concat_tables(self.pending_rejects)
        accepted = [p for s in self.pending for p in s.accepted_paths]
        committed = list(self.pending_uids)
        wr = self.store.write_batch(tables, accepted)
        rep = self.report
        rep.inserted += wr.inserted
        rep.replaced += wr.replaced
        rep.elements += wr.elements
        rep.dose_events += wr.dose_events
        self.pending.clear()
        self.pending_rejects.clear()
        self.pending_uids.clear()
        if self.after_commit is not None:
            self.after_commit(committed)


def _worker_config(settings: Settings, lake: Path, source: str | None, deid: str | None = None) -> WorkerConfig:
    ing = settings.ingest
    return WorkerConfig(
        lake=str(lake),
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


def ingest_paths(
    paths: Sequence[str | os.PathLike[str]],
    lake: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    batch_size: int | None = None,
    source: str | None = None,
    settings: Settings | None = None,
    progress: bool | Callable[[IngestReport, int], None] = False,
    store: Store | None = None,
    deid: str | None = None,
) -> IngestReport:
    """Read files, folders, zips and DICOMDIRs into the lake; return the counts.

    Parameters
    ----------
    paths
        Sources; folders are walked recursively.
    lake
        The lake folder (default: the ``lake`` setting).
    workers
        Worker processes; 0 or None means one per core, 1 reads in this process.
    batch_size
        Instances per transaction.
    source
        Label recorded as each instance's ``source`` (default: file, zip or dicomdir).
    progress
        True for a rich progress bar on stderr, or a callback ``(report, total_files)``.
    deid
        A de-identification profile (name or TOML path): every instance is de-identified
        before it is read, so the lake never holds identifying data; source paths are
        replaced by keyed pseudonyms.
    store
        An open store to write into (the service passes its own; any back end: DuckDB,
        PostgreSQL); a DuckDB lake at ``lake`` is opened and closed here otherwise.
    """
    settings = settings or get_settings()
    lake_dir = Path(lake if lake is not None else settings.lake)
    n_workers = workers if workers is not None else settings.ingest.workers
    if not n_workers:
        n_workers = os.cpu_count() or 1
    size = batch_size or settings.ingest.batch_size
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    tasks = expand(paths)
    if n_workers > 1 and len(tasks) > CHUNK_FILES:
        start_worker_server()  # its imports run while we open the lake (one chunk: no workers)
    report = IngestReport(run_id=uuid.uuid4().hex[:12], lake=str(lake_dir))
    own_store = store is None
    # the workers keep the cores busy: DuckDB's own threads would only contend with them
    # (measured: a batch's write costs ~25 % less CPU on one thread, in the same time)
    st: Store = store or DuckDBStore(lake_dir, threads=1 if n_workers > 1 else None)
    if deid:
        from dicomlake.deid import load_profile

        load_profile(deid)  # a bad profile name fails here, before any file is read
    cfg = _worker_config(settings, lake_dir, source, deid)
    batcher = _Batcher(st, report, size)
    from dicomlake.curate.hook import ingest_hook

    curate_hook = ingest_hook(st, settings, report.notes)  # setting curate_on_ingest
    uncurated: list[str] = []

    def curate_some(uids: list[str], last: bool = False) -> None:
        # the rules run over groups of CURATE_EVERY committed instances, not every batch:
        # a run costs about the same for 2,000 instances as for 20,000 (lake-wide parts)
        uncurated.extend(uids)
        if curate_hook is not None and uncurated and (last or len(uncurated) >= CURATE_EVERY):
            curate_hook(list(uncurated))
            uncurated.clear()

    batcher.after_commit = curate_some
    chunks = list(_chunks(tasks, CHUNK_FILES))
    n_workers = max(1, min(n_workers, len(chunks)))
    bar = _Progress(len(tasks), report, t0) if progress is True else None
    callback = progress if callable(progress) else None

    def take(res: ChunkResult) -> None:
        report.files += res.files
        report.instances += res.instances
        report.rejected += res.rejected
        report.skipped += res.skipped
        report.notes.extend(res.notes)
        batcher.add(res)
        report.seconds = time.perf_counter() - t0
        if bar:
            bar.update()
        if callback:
            callback(report, len(tasks))

    status = "failed"
    try:
        if n_workers == 1:
            for chunk in chunks:
                take(process_chunk(chunk, cfg))
        else:
            ctx = worker_context()
            with ctx.Pool(
                n_workers, initializer=init_worker, initargs=worker_initargs(cfg), maxtasksperchild=RECYCLE_AFTER_CHUNKS
            ) as pool:
                # ordered: when two files carry one SOP Instance UID, the one later in source
                # order wins, every run and on every back end (as the Spark engine does)
                for res in pool.imap(run_chunk, chunks, chunksize=1):
                    take(res)
        batcher.flush()
        curate_some([], last=True)
        status = "partial" if report.rejected else "ok"
    finally:
        report.seconds = time.perf_counter() - t0
        if bar:
            bar.close()
        try:
            st.record_run(  # type: ignore[attr-defined]
                {
                    "run_id": report.run_id,
                    "started_at": started,
                    "finished_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                    "sources": _run_sources(paths, deid),
                    "files": report.files,
                    "instances": report.instances,
                    "rejected": report.rejected,
                    "skipped": report.skipped,
                    "status": status,
                }
            )
        finally:
            if own_store:
                st.close()
    return report


def _run_sources(paths: Sequence[str | os.PathLike[str]], deid: str | None) -> str:
    """The run's sources as recorded; keyed pseudonyms under de-identification (folder names
    often carry patient names)."""
    if deid:
        from dicomlake.ingest.worker import _pseudonymous_path

        return "; ".join(_pseudonymous_path(str(p)) for p in paths)[:2000]
    return "; ".join(str(p) for p in paths)[:2000]


class _Progress:
    """A rich progress bar: files, instances, rejected, rate."""

    def __init__(self, total: int, report: IngestReport, t0: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.report = report
        self.t0 = t0
        self.progress = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "files · {task.fields[inst]:,} instances · {task.fields[rej]:,} rejected · "
                "{task.fields[skip]:,} skipped · {task.fields[rate]:,.0f} files/s"
            ),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task("ingest", total=total, inst=0, rej=0, skip=0, rate=0.0)
        self.progress.start()

    def update(self) -> None:
        r = self.report
        el = time.perf_counter() - self.t0
        self.progress.update(
            self.task,
            completed=r.files,
            inst=r.instances,
            rej=r.rejected,
            skip=r.skipped,
            rate=r.files / el if el else 0.0,
        )

    def close(self) -> None:
        self.update()
        self.progress.stop()
