"""The durable spool: received instances on disk before they are acknowledged, drained into the lake.

An instance is written to ``<lake>/spool/.tmp/``, fsynced, renamed to
``<lake>/spool/<label>/<SOPInstanceUID>.dcm`` and the folder fsynced; only then does the
listener answer Success (PS3.4 B.2.3: a Success status means the SCP has stored the
instance). A drainer thread reads spool files in batches through the same extraction as
``dicomlake ingest`` and deletes them only after the batch is committed, so a crash at any
moment loses nothing acknowledged and the upsert on SOP Instance UID duplicates nothing.
On start, whatever is left in the spool is drained again; half-written temporary files
(never acknowledged) are removed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.errors import DicomlakeError
from dicomlake.ingest.sources import Task
from dicomlake.ingest.worker import (
    ChunkResult,
    WorkerConfig,
    init_worker,
    process_chunk,
    worker_context,
    worker_initargs,
)

LOG = logging.getLogger("dicomlake.spool")

SPOOL_DIR = "spool"
FILES_DIR = "files"
TMP_DIR = ".tmp"
CHECK_SUFFIX = ".check"
"""A drained spool file set aside while its removal checks that no newer copy replaced it."""
LABELS = ("c-store", "c-get", "c-find", "dicomweb")
"""Spool sub-folders, one per way an instance arrives; the label becomes the instance's ``source``."""

# PS3.5 §9.1: a UID is dot-separated numeric components, no leading zeros, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_UID_COMPONENTS = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1428.1"
"""Implementation Class UID written into file meta (PS3.7 D.3.3.2). Default: ours."""
IMPLEMENTATION_VERSION_NAME = "DICOMLAKE_01"


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of a file: a resent copy renamed into place is a new inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def valid_uid(uid: str | None) -> bool:
    """True when ``uid`` is a syntactically valid UID (PS3.5 §9.1), safe as a file name."""
    return bool(uid) and len(uid) <= 64 and _UID.match(uid) is not None  # type: ignore[arg-type]


def instance_uid_problem(sop_instance_uid: str | None, sop_class_uid: str | None) -> str | None:
    """The one rule for an instance arriving by any transport (C-STORE, C-GET, DICOMweb); None when it passes.

    An instance is keyed by its SOP Instance UID, which must be a UID (PS3.5 §9.1: digits
    and dots, no leading zeros, at most 64 characters). A SOP Class UID, when there is one,
    must be a UID too; a missing one is no reason to refuse (C-STORE carries it in the
    command; the header is kept as it came).

    >>> instance_uid_problem("1.2.3.04.5", None)
    "SOP Instance UID '1.2.3.04.5' is not a UID (PS3.5 §9.1: digits and dots, no leading zeros, at most 64)"
    >>> instance_uid_problem("1.2.3", None) is None
    True
    """
    rule = "(PS3.5 §9.1: digits and dots, no leading zeros, at most 64)"
    if not sop_instance_uid:
        return "SOP Instance UID missing"
    # pydicom's definition (one component allowed): Orthanc's store SCU sends an instance whose UN
    # elements it misreads under Affected SOP Class and Instance UID "31"; its data set is whole
    if len(sop_instance_uid) > 64 or _UID_COMPONENTS.match(sop_instance_uid) is None:
        return f"SOP Instance UID {sop_instance_uid[:80]!r} is not a UID {rule}"
    if sop_class_uid and (len(sop_class_uid) > 64 or _UID_COMPONENTS.match(sop_class_uid) is None):
        return f"SOP Class UID {sop_class_uid[:80]!r} is not a UID {rule}"
    return None


def spool_name(sop_instance_uid: str) -> str:
    """The spool file's name: the UID itself when it is a valid UID, else a digest of it.

    Archives do hold instances with malformed UIDs; they are kept (tolerant reader), but a
    name never comes from the peer unchecked.
    """
    if valid_uid(sop_instance_uid):
        return sop_instance_uid
    if not sop_instance_uid or len(sop_instance_uid) > 256:
        raise SpoolError(
            f"Affected SOP Instance UID {sop_instance_uid[:80]!r} is missing or too long (PS3.5 §9.1)",
            CANNOT_UNDERSTAND,
        )
    return "x" + hashlib.sha256(sop_instance_uid.encode("utf-8", "replace")).hexdigest()[:40]


class SpoolError(DicomlakeError):
    """An instance could not be made durable; ``status`` is the DIMSE status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


OUT_OF_RESOURCES = 0xA700
"""PS3.4 Table B.2-1: Refused: Out of Resources."""
CANNOT_UNDERSTAND = 0xC210
"""PS3.4 Table B.2-1 (pynetdicom's reference handler): Error: Cannot understand (decode) the data set."""


def _even(b: bytes, pad: bytes) -> bytes:
    return b + pad if len(b) % 2 else b


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str | None = None
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 §7.1), explicit VR LE."""

    def el(elem: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value

    body = b"".join(
        (
            el(0x0001, b"OB", b"\x00\x01"),
            el(0x0002, b"UI", _even(sop_class_uid.encode("ascii"), b"\x00")),
            el(0x0003, b"UI", _even(sop_instance_uid.encode("ascii"), b"\x00")),
            el(0x0010, b"UI", _even(transfer_syntax_uid.encode("ascii"), b"\x00")),
            el(0x0012, b"UI", _even(IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00")),
            el(0x0013, b"SH", _even(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
            el(0x0016, b"AE", _even(source_aet.encode("ascii", "replace"), b" ")) if source_aet else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def read_source_aet(path: str | os.PathLike[str]) -> str | None:
    """Source Application Entity Title (0002,0016) of a spool file: the peer that sent it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head):
        group, elem, vr = struct.unpack_from("<HH2s", head, pos)
        if group != 0x0002:
            return None
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if elem == 0x0016:
            return head[start : start + length].decode("ascii", "replace").strip(" \x00") or None
        pos = start + length
    return None


class SpoolWriter:
    """One instance being written; :meth:`commit` makes it durable, :meth:`abort` drops it."""

    __slots__ = ("fd", "final", "hole_at_end", "size", "skipped", "spool", "tmp")

    def __init__(self, spool: Spool, final: Path, tmp: Path) -> None:
        self.spool = spool
        self.final = final
        self.tmp = tmp
        self.size = 0
        self.skipped = 0
        self.hole_at_end = False
        try:
            self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise self.spool.error(exc) from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.size += n
            self.hole_at_end = False
        except OSError as exc:
            self.abort()
            raise self.spool.error(exc) from exc

    def skip(self, n: int) -> None:
        """Leave ``n`` bytes as a sparse hole: the file keeps its layout, the disk gets no blocks.

        Used for pixel data in metadata-only mode: the value reads back as zeros.
        """
        if n <= 0:
            return
        os.lseek(self.fd, n, os.SEEK_CUR)
        self.size += n
        self.skipped += n
        self.hole_at_end = True

    def commit(self) -> Path:
        """fsync the file, rename it into place, fsync the folder; return the final path."""
        try:
            if self.hole_at_end:
                os.ftruncate(self.fd, self.size)
            if self.spool.fsync:
                os.fdatasync(self.fd)
            os.close(self.fd)
            self.fd = -1
            replaces = self.final.exists()  # a resent instance takes its earlier copy's place
            os.replace(self.tmp, self.final)
            if not replaces:
                self.spool.added(1)
            if self.spool.fsync:
                self.spool.sync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise self.spool.error(exc) from exc
        self.spool.notify()
        return self.final

    def abort(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class Spool:
    """``<lake>/spool``: where received instances wait, durable, for the drainer.

    Parameters
    ----------
    lake
        The lake folder.
    fsync
        fsync each file and its folder before :meth:`SpoolWriter.commit` returns.
    min_free_bytes
        Refuse new instances (``0xA700``) while the disk has less free space than this.
    max_instances
        Refuse new instances (``0xA700``) while this many wait to be drained; 0 = no limit.
    """

    def __init__(
        self,
        lake: str | os.PathLike[str],
        *,
        fsync: bool = True,
        min_free_bytes: int = 0,
        max_instances: int = 0,
    ) -> None:
        self.lake = Path(lake)
        self.root = self.lake / SPOOL_DIR
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.max_instances = max_instances
        self.tmp_dir = self.root / TMP_DIR
        self._event = threading.Event()
        self._dir_fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        for d in (self.root, self.tmp_dir, *(self.root / label for label in LABELS)):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)  # received instances: the owner's only
        for d in (self.lake, self.root):
            self.sync_dir(d)
        # Half-written files were never acknowledged: the sender still has them.
        for leftover in self.tmp_dir.iterdir():
            try:
                leftover.unlink()
            except OSError:
                pass
        # Set aside by a drain that a crash cut short (see release): drained again, unless superseded.
        for aside in self.root.glob(f"*/*.dcm{CHECK_SUFFIX}"):
            try:
                os.link(aside, aside.with_name(aside.name.removesuffix(CHECK_SUFFIX)))
            except FileExistsError:
                pass
            except OSError:
                continue
            try:
                aside.unlink()
            except OSError:
                pass
        self._pending = 0
        self.count()  # the files left by an earlier run count against max_instances

    # ---- writing ----------------------------------------------------------------------

    def error(self, exc: OSError) -> SpoolError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return SpoolError(f"the spool's disk is full ({self.root}): {exc.strerror}", OUT_OF_RESOURCES)
        return SpoolError(f"cannot write into the spool {self.root}: {exc.strerror or exc}", OUT_OF_RESOURCES)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, expected: int = 0) -> None:
        """Raise :class:`SpoolError` (0xA700) when the disk holds less than the reserve."""
        if self.min_free_bytes <= 0 and expected <= 0:
            return
        free = self.free_bytes()
        if free < self.min_free_bytes + expected:
            raise SpoolError(
                f"only {free:,} bytes free on the lake's disk ({self.lake}); dimse.min_free_bytes is "
                f"{self.min_free_bytes:,}. Free some space; the listener accepts instances again by itself",
                OUT_OF_RESOURCES,
            )

    def check_depth(self) -> None:
        """Raise :class:`SpoolError` (0xA700) while ``max_instances`` instances wait for the lake."""
        # the running count can only be off by files in flight; at the limit, count for real
        if self.max_instances > 0 and self._pending >= self.max_instances and self.count() >= self.max_instances:
            raise SpoolError(
                f"{self._pending:,} instances wait in the spool ({self.root}) for the lake; "
                f"dimse.spool_max_instances is {self.max_instances:,}. The listener accepts instances "
                "again by itself as the spool drains; if it does not drain, look at the service's drain errors",
                OUT_OF_RESOURCES,
            )

    def added(self, n: int) -> None:
        with self._lock:
            self._pending += n

    def removed(self, n: int) -> None:
        with self._lock:
            self._pending = max(0, self._pending - n)

    def begin(self, sop_instance_uid: str, label: str = "c-store") -> SpoolWriter:
        """Start writing an instance; the name comes from its UID, never from a peer's path."""
        name = spool_name(sop_instance_uid)
        if label not in LABELS:
            raise ValueError(f"spool label {label!r}: choose one of {', '.join(LABELS)}")
        self.check_space()
        self.check_depth()
        final = self.root / label / f"{name}.dcm"
        tmp = self.tmp_dir / f"{name}.{uuid.uuid4().hex[:12]}.part"
        return SpoolWriter(self, final, tmp)

    def put(self, sop_instance_uid: str, data: bytes, label: str = "c-store") -> Path:
        """Write a whole Part-10 object durably; return its spool path."""
        w = self.begin(sop_instance_uid, label)
        w.write(data)
        return w.commit()

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def notify(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        got = self._event.wait(timeout)
        self._event.clear()
        return got

    def release(self, path: Path, identity: tuple[int, int] | None, keep_as: Path | None = None) -> bool:
        """Delete a drained spool file (or move it to ``keep_as``) unless a newer copy took its place.

        A sender may resend an instance (same SOP Instance UID, corrected) while its first copy
        is being committed; the new copy, acknowledged, replaced the file. The file is first
        renamed aside (atomic: whatever is there now), and only the copy that was drained goes;
        a newer one is put back to be drained next. Left aside by a crash, it is put back on start.
        """
        if identity is None:
            return False
        aside = path.with_name(path.name + CHECK_SUFFIX)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if file_identity(aside) != identity:
            try:
                os.link(aside, path)  # back in the spool, unless a newer copy still arrived meanwhile
            except FileExistsError:
                pass
            os.unlink(aside)
            self.notify()
            return False
        if keep_as is not None:
            try:
                keep_as.parent.mkdir(parents=True, exist_ok=True)
                os.replace(aside, keep_as)
                return True
            except OSError as exc:
                LOG.error("cannot keep %s as %s: %s", path, keep_as, exc)
        os.unlink(aside)
        return True

    # ---- reading ----------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[tuple[str, Path]]:
        """Spool files waiting to be drained, as ``(label, path)``, oldest first."""
        out: list[tuple[float, str, Path]] = []
        for label in LABELS:
            try:
                with os.scandir(self.root / label) as it:
                    for entry in it:
                        if entry.name.endswith(".dcm"):
                            try:
                                out.append((entry.stat().st_mtime, label, Path(entry.path)))
                            except OSError:
                                continue
            except FileNotFoundError:
                continue
        out.sort(key=lambda t: t[0])
        if limit is not None:
            out = out[:limit]
        return [(label, p) for _, label, p in out]

    def count(self) -> int:
        """Files waiting to be drained (a scan, which also corrects the running count)."""
        n = 0
        for label in LABELS:
            try:
                n += sum(1 for e in os.scandir(self.root / label) if e.name.endswith(".dcm"))
            except FileNotFoundError:
                pass
        with self._lock:
            self._pending = n
        return n


# ---------------------------------------------------------------------------------------------
# Draining
# ---------------------------------------------------------------------------------------------


def _drain_chunk(args: tuple[list[Task], WorkerConfig]) -> ChunkResult:
    """Pool entry point: extract one chunk of spool files (module-level so it pickles)."""
    tasks, cfg = args
    return process_chunk(tasks, cfg)


@dataclass
class DrainStats:
    """Counters of the drainer, shown by ``dicomlake serve`` and its status endpoint."""

    drained: int = 0
    stored: int = 0
    rejected: int = 0
    batches: int = 0
    failures: int = 0
    last_commit: float | None = None
    last_error: str | None = None
    received: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "drained": self.drained,
            "stored": self.stored,
            "rejected": self.rejected,
            "batches": self.batches,
            "failures": self.failures,
            "last_commit": self.last_commit,
            "last_error": self.last_error,
            "refused": dict(self.refused),
        }


class StoreHolder:
    """The service's one writable store, its write lock, and a way to reopen it after a fault."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self.lock = threading.RLock()
        self.store = opener()

    def reopen(self) -> None:
        with self.lock:
            try:
                self.store.close()
            except Exception:
                pass
            self.store = self._opener()

    def close(self) -> None:
        with self.lock:
            self.store.close()


class Drainer(threading.Thread):
    """Moves spool files into the lake in batches; deletes them only after the commit.

    Parameters
    ----------
    spool
        The spool to drain.
    holder
        The store (and its lock) to write into.
    config
        Extraction settings, as for ``dicomlake ingest``.
    keep_files
        Move drained files to ``<lake>/files/<StudyInstanceUID>/`` instead of deleting them.
    workers
        Extraction processes; 0 extracts in this thread.
    batch
        Most files per transaction.
    interval
        Longest wait before a partial batch is committed.
    """

    CHUNK = 48

    def __init__(
        self,
        spool: Spool,
        holder: StoreHolder,
        config: WorkerConfig,
        *,
        keep_files: bool = False,
        workers: int = 1,
        batch: int = 500,
        interval: float = 0.5,
        stats: DrainStats | None = None,
    ) -> None:
        super().__init__(name="spool-drainer", daemon=True)
        self.spool = spool
        self.holder = holder
        self.config = config
        self.keep_files = keep_files
        self.keep_sources: frozenset[str] = frozenset()
        """Labels whose files are kept even when ``keep_files`` is off (``dicomweb``: STOW-RS, for WADO-RS)."""
        self.workers = workers
        self.batch = max(1, batch)
        self.interval = interval
        self.stats = stats or DrainStats()
        self._halt = threading.Event()
        self._idle = threading.Event()
        self._pool: Any = None
        self._backoff = 0.0

    # ---- control ----------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the batch in hand, drain what is left if it can, and stop."""
        self._halt.set()
        self.spool.notify()
        self.join(timeout)
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the spool is empty and committed (tests, clean shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.is_set() and self.spool.count() == 0:
                return True
            self.spool.notify()
            time.sleep(0.05)
        return False

    def run(self) -> None:
        if self.workers > 0:
            try:
                # forked from the preloaded fork server, as ingest's workers (see ingest.preload)
                ctx = worker_context()
                self._pool = ctx.Pool(
                    self.workers,
                    initializer=init_worker,
                    initargs=worker_initargs(WorkerConfig(**_cfg_dict(self.config))),
                    maxtasksperchild=200,
                )
            except Exception as exc:
                LOG.warning("no extraction processes (%s); extracting in the service process", exc)
                self._pool = None
        while True:
            items = self.spool.pending(self.batch)
            if not items:
                self._idle.set()
                if self._halt.is_set():
                    break
                self.spool.wait(self.interval)
                continue
            self._idle.clear()
            try:
                self.drain(items)
                self._backoff = 0.0
            except Exception as exc:
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                LOG.error(
                    "spool drain failed (%s); %d file(s) stay in the spool and are retried",
                    self.stats.last_error,
                    len(items),
                )
                self._backoff = min(5.0, max(0.5, self._backoff * 2))
                if self._halt.wait(self._backoff) and self.spool.count() and self.stats.failures > 3:
                    break
                try:
                    self.holder.reopen()
                except Exception as exc2:
                    LOG.error("cannot reopen the lake: %s", exc2)
            if len(items) < self.batch and not self._halt.is_set():
                # short batch: let more arrive (bounded by the interval)
                self.spool.wait(min(self.interval, 0.05))

    # ---- one batch --------------------------------------------------------------------

    def _extract(self, items: list[tuple[str, Path]]) -> list[ChunkResult]:
        by_label: dict[str, list[Task]] = {}
        for label, path in items:
            by_label.setdefault(label, []).append(Task("file", str(path), origin=label))
        jobs: list[tuple[list[Task], WorkerConfig]] = []
        for label, tasks in by_label.items():
            cfg = WorkerConfig(**{**_cfg_dict(self.config), "received_source": label})
            jobs.extend((tasks[i : i + self.CHUNK], cfg) for i in range(0, len(tasks), self.CHUNK))
        if self._pool is not None and len(items) > 8:
            return list(self._pool.imap(_drain_chunk, jobs))
        return [_drain_chunk(j) for j in jobs]

    def drain(self, items: list[tuple[str, Path]]) -> None:
        # which file each item is: a copy of the instance resent meanwhile replaces it, and must stay
        taken = {path: identity for _, path in items if (identity := file_identity(path)) is not None}
        results = self._extract(items)
        from dicomlake.ingest.pipeline import IngestReport, _Batcher

        moves: list[tuple[Path, Path]] = []
        with self.holder.lock:
            report = IngestReport(run_id="serve", lake=str(self.spool.lake))
            batcher = _Batcher(self.holder.store, report, self.batch * 2)
            from dicomlake.curate.worklist import receiver_hook  # worklist-identity: off unless enabled

            batcher.after_commit = receiver_hook(self.holder.store)
            for res in results:
                for seg in res.segments:
                    inst = seg.tables.get("instances")
                    if inst is not None and inst.num_rows:
                        seg.tables["instances"], seg_moves = self._relocate(inst)
                        moves.extend(seg_moves)
                batcher.add(res)
                self.stats.rejected += res.rejected
            batcher.flush()
        # committed: the spool copies can go (or move to files/)
        keep = dict(moves)
        gone = 0
        for _, path in items:
            try:
                gone += self.spool.release(path, taken.get(path), keep.get(path))
            except OSError as exc:
                LOG.error("cannot take %s out of the spool after its commit: %s", path, exc)
        self.spool.removed(gone)
        self.stats.drained += len(items)
        self.stats.stored += report.inserted + report.replaced
        self.stats.batches += 1
        self.stats.last_commit = time.time()

    def _relocate(self, inst: pa.Table) -> tuple[pa.Table, list[tuple[Path, Path]]]:
        """Point ``source_path`` at the kept file, or at ``label:AET/UID`` when files are not kept."""
        if "source_path" not in inst.column_names:
            return inst, []
        paths = inst.column("source_path").to_pylist()
        uids = (
            inst.column("SOPInstanceUID").to_pylist() if "SOPInstanceUID" in inst.column_names else [None] * len(paths)
        )
        studies = (
            inst.column("StudyInstanceUID").to_pylist()
            if "StudyInstanceUID" in inst.column_names
            else [None] * len(paths)
        )
        sources = inst.column("source").to_pylist() if "source" in inst.column_names else [None] * len(paths)
        new: list[str | None] = []
        moves: list[tuple[Path, Path]] = []
        files = self.spool.lake / FILES_DIR
        for p, uid, study, src in zip(paths, uids, studies, sources, strict=True):
            if p is None:
                new.append(p)
                continue
            sp = Path(p)
            if self.keep_files or src in self.keep_sources:
                folder = study if valid_uid(study) else "unknown-study"
                name = f"{uid}.dcm" if valid_uid(uid) else sp.name
                dst = files / folder / name
                moves.append((sp, dst))
                new.append(str(dst))
            else:
                aet = read_source_aet(sp) or "?"
                new.append(f"{src or 'c-store'}:{aet}/{uid or sp.stem}")
        idx = inst.column_names.index("source_path")
        return inst.set_column(idx, "source_path", pa.array(new, pa.string())), moves


def _cfg_dict(cfg: WorkerConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in WorkerConfig.__dataclass_fields__}
