"""Reading a chunk of tasks into Arrow tables; runs in worker processes.

Nothing here decides what a column means (that is :mod:`dicomlake.extract`), and nothing
is written outside the lake folder: the only files a worker writes are quarantine copies
of unreadable input, named by the SHA-256 of their bytes.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.dicom.reader import Header, parse_all, read_header, read_header_at, sniff
from dicomlake.errors import ExtractionError
from dicomlake.extract.rows import BatchBuilder
from dicomlake.ingest.sources import Task, unsafe_member_name
from dicomlake.lakeschema import REJECT_SCHEMA, instance_columns
from dicomlake.security.preamble import executable_preamble
from dicomlake.store.fs import filesystem, is_remote, join, write_bytes

# Files that are plainly something else are counted and skipped, not rejected: the
# companions found beside DICOM on media and in exports.
NON_DICOM_SUFFIXES = frozenset(
    {
        ".txt", ".md", ".json", ".xml", ".html", ".htm", ".csv", ".tsv", ".pdf", ".jpg", ".jpeg",
        ".png", ".gif", ".bmp", ".tif", ".tiff", ".exe", ".dll", ".ini", ".inf", ".log", ".py",
        ".sh", ".bat", ".db", ".ds_store", ".lnk", ".url", ".css", ".js", ".toml", ".yaml", ".yml",
    }
)  # fmt: skip
NON_DICOM_NAMES = frozenset({"thumbs.db", ".ds_store", "license", "readme", "autorun.inf", "index.htm"})
NON_DICOM_MAGIC = (b"%PDF", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"PK\x03\x04", b"\x1f\x8b", b"<?xml", b"<html")

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
RADIOPHARMACEUTICAL_SR = "1.2.840.10008.5.1.4.1.1.88.68"
DOSE_IMAGE_MODALITIES = frozenset({"MG", "DX", "CR", "RF", "XA", "PX", "IO"})
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# CT, NM and PET images carry per-slice values (CTDIvol, administered dose) that are not
# irradiation events; their dose comes from the RDSR or, for CT, a dose-information screen.


@dataclass(slots=True)
class Segment:
    """Rows of instances with distinct SOP Instance UIDs (a chunk holding two copies of one
    instance gives two segments, committed in order so the later copy wins)."""

    tables: dict[str, pa.Table]
    uids: list[str]
    accepted_paths: list[str]


@dataclass(slots=True)
class ChunkResult:
    """What a worker hands back for one chunk."""

    segments: list[Segment]
    rejects: pa.Table
    files: int = 0
    instances: int = 0
    rejected: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    lake: str
    columns_file: str | None
    inline_max: int
    max_header_bytes: int
    max_zip_member_bytes: int
    max_zip_ratio: float
    received_source: str | None = None  # override of the source label (e.g. "c-store")
    deid_profile: str | None = None  # de-identify every instance before extraction
    allow_executable_preamble: bool = False  # CVE-2019-11687 polyglots are rejected unless set
    max_sequence_depth: int = 16  # ingest.max_sequence_depth: deeper nesting rejects the file


_CONFIG: WorkerConfig | None = None
_DEID: dict[str, Any] = {}


def _deidentifier(profile: str) -> Any:
    """One Deidentifier per worker process and profile (keys from DICOMLAKE_DEID__*)."""
    hit = _DEID.get(profile)
    if hit is None:
        from dicomlake.deid import Deidentifier, settings_from_env

        hit = _DEID[profile] = Deidentifier(profile, settings_from_env())
    return hit


def _pseudonymous_path(path: str) -> str:
    """A stable stand-in for a source path under de-identification (folder names often
    carry patient names): keyed BLAKE2 of the path with the de-identification secret."""
    import hashlib
    import os as _os

    key = (_os.environ.get("DICOMLAKE_DEID__SECRET") or "").encode()[:64]
    return "deid:" + hashlib.blake2b(path.encode("utf-8", "surrogateescape"), key=key, digest_size=16).hexdigest()


def _deid_reason(reason: str, path: str, pseudonym: str) -> str:
    """A reject reason without the source path, its folder and file names or quoted values."""
    import re

    out = reason.replace(path, pseudonym)
    for part in sorted(set(re.split(r"[/\\!]", path)), key=len, reverse=True):
        stem = part.rsplit(".", 1)[0]
        for word in (part, stem):
            if len(word) >= 3:
                out = out.replace(word, "…")
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", out)


def init_worker(config: WorkerConfig, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
    """Pool initializer: remember the configuration once per process.

    ``env`` (the parent's ``DICOMLAKE_*`` variables) and ``cwd`` are the parent's *now*: a
    worker forked from the long-lived fork server would otherwise see them as they were
    when the server started (a de-identification secret set since, a changed folder).
    """
    global _CONFIG
    _CONFIG = config
    if env is not None:
        for key in [k for k in os.environ if k.startswith("DICOMLAKE_") and k not in env]:
            del os.environ[key]
        os.environ.update(env)
        _DEID.clear()
    if cwd is not None:
        os.chdir(cwd)


def worker_context() -> Any:
    """The multiprocessing context for ingest workers: ``forkserver`` with the worker's
    modules preloaded (:mod:`dicomlake.ingest.preload`), ``spawn`` where there is none.

    Pass :func:`worker_initargs` to the pool's initializer with it.
    """
    import atexit
    import multiprocessing as mp

    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # platforms without fork
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(["__main__", "dicomlake.ingest.preload"])  # __main__: imported once, not per worker
    global _SERVER_STOP_REGISTERED
    if not _SERVER_STOP_REGISTERED:
        atexit.register(_stop_worker_server)
        _SERVER_STOP_REGISTERED = True
    return ctx


_SERVER_STOP_REGISTERED = False


def start_worker_server() -> None:
    """Start the fork server now (it imports the worker's modules in the background), so
    that the first pool does not wait for it; a no-op where workers are spawned."""
    ctx = worker_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _stop_worker_server() -> None:
    """At exit, end the fork server and wait for it, so that it does not outlive us and its
    workers' CPU time is accounted to this process's children (``time``, benchmarks)."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        try:
            stop()
        except OSError:
            pass


def worker_initargs(config: WorkerConfig) -> tuple[WorkerConfig, dict[str, str], str]:
    """``initargs`` for :func:`init_worker`: the config, the ``DICOMLAKE_*`` environment and
    the working folder of the parent at the time the pool starts."""
    env = {k: v for k, v in os.environ.items() if k.startswith("DICOMLAKE_")}
    return config, env, os.getcwd()


DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima", ".img", ".raw", ".sr", ".ko", ".pr"})


def _looks_non_dicom(name: str, head: bytes) -> bool:
    """True for a file that is plainly something else (skipped, not rejected).

    A file that does not start like DICOM is *rejected* (kept in quarantine, listed with
    the reason) when its name says DICOM: a DICOM suffix, no suffix, or a numeric one as
    in UID-named files (``1.2.840.113619.2.55.1``); that catches empty, truncated and
    corrupted transfers. Anything else that does not start like DICOM is skipped.
    """
    base = os.path.basename(name).lower()
    suffix = os.path.splitext(base)[1]
    if base in NON_DICOM_NAMES or suffix in NON_DICOM_SUFFIXES:
        return True
    if suffix in DICOM_SUFFIXES:
        return False
    if head.startswith(NON_DICOM_MAGIC):  # a PDF, PNG, JPEG, zip… without a telling name
        return True
    return bool(suffix) and not suffix[1:].isdigit()


def _preamble_reason(what: str) -> str:
    return (
        f"suspicious preamble: the 128-byte Part-10 preamble starts like a {what}, a DICOM/executable "
        "polyglot (CVE-2019-11687; PS3.10 §7.1 leaves the preamble free); quarantined, not run. "
        "Set ingest.allow_executable_preamble = true only for a trusted source"
    )


def _quarantine(lake: Path | str, data: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(lake, str):  # a lake on an object store (the Spark engine's s3://… output)
        write_bytes(join(lake, "quarantine", digest[:2], digest), data)
        return digest, f"quarantine/{digest[:2]}/{digest}"
    rel = Path("quarantine") / digest[:2] / digest
    dest = lake / rel
    if not dest.exists():
        (lake / "quarantine").mkdir(parents=True, exist_ok=True, mode=0o700)  # the owner's only
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(f".{digest}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    return digest, str(rel)


def _dose_rows(header: Header, sop_class: str | None, modality: str | None) -> list[dict[str, Any]]:
    """Dose events for the few instances that carry dose (SRs, projection X-ray images).

    The dose code reads a pydicom Dataset; it is built from the elements already parsed
    (:func:`dicomlake.dicom.dataset.to_pydicom`), not by reading the file again.
    """
    is_sr = bool(sop_class and sop_class.startswith(SR_PREFIX))
    from dicomlake.dicom.dataset import to_pydicom
    from dicomlake.extract import dose, sr

    if is_sr:
        # the content tree straight from the parsed elements (3× faster than through pydicom
        # Datasets); pydicom only for the few top-level attributes, or for the whole tree
        # when its text needs a character set
        try:
            root = sr.content_tree_from_elements(header.elements, header.little_endian)
        except sr.NeedsPydicom:
            return dose.dose_events(to_pydicom(header))
        if root is None:
            return []
        return dose.dose_events(to_pydicom(header, omit=_CONTENT_SEQUENCE), root)
    return dose.dose_events_from_image(to_pydicom(header))


_CONTENT_SEQUENCE = frozenset({0x0040A730})


def _top_text(header: Header, tag: int) -> str | None:
    for t, _vr, value, _len in header.elements:
        if t == tag and isinstance(value, bytes):
            return value.decode("ascii", "replace").strip(" \x00") or None
        if t > tag:
            break
    return None


def _meta_text(header: Header, tag: int) -> str | None:
    for t, _vr, value, _len in header.meta:
        if t == tag and isinstance(value, bytes):
            return value.decode("ascii", "replace").strip(" \x00") or None
    return None


def process_chunk(tasks: list[Task], config: WorkerConfig | None = None) -> ChunkResult:
    """Read every task of a chunk; return the rows, the rejects and the counts."""
    cfg = config or _CONFIG
    if cfg is None:
        raise RuntimeError("worker not initialised: call init_worker(config) first")
    lake: Path | str = cfg.lake if is_remote(cfg.lake) else Path(cfg.lake)
    columns = instance_columns(cfg.columns_file)
    rejects: list[dict[str, Any]] = []
    notes: list[str] = []
    res = ChunkResult(segments=[], rejects=REJECT_SCHEMA.empty_table(), notes=notes)
    segments: list[tuple[BatchBuilder, list[dict[str, Any]], list[str]]] = []

    def segment_for(uid: str | None) -> tuple[BatchBuilder, list[dict[str, Any]], list[str]]:
        if not segments or (uid is not None and uid in seen_in[-1]):
            segments.append((BatchBuilder(columns, inline_max=cfg.inline_max), [], []))
            seen_in.append(set())
        return segments[-1]

    seen_in: list[set[str]] = []
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    zips: dict[str, zipfile.ZipFile] = {}

    def reject(task: Task, reason: str, data: bytes | None, size: int | None) -> None:
        digest = qpath = None
        source_path = task.source_path
        if cfg.deid_profile:
            # nothing of the original reaches a de-identified lake: no quarantine copy (it holds
            # the identifiers), a keyed pseudonym for the path, the path out of the reason
            digest = hashlib.sha256(data).hexdigest() if data is not None else None
            source_path = _pseudonymous_path(task.source_path)
            reason = _deid_reason(reason, task.source_path, source_path)
        elif data is not None:
            digest, qpath = _quarantine(lake, data)
        rejects.append(
            {
                "source_path": source_path,
                "source": cfg.received_source or task.origin,
                "reason": reason,
                "size_bytes": size,
                "sha256": digest,
                "quarantine_path": qpath,
                "rejected_at": now,
            }
        )
        res.rejected += 1

    try:
        for task in tasks:
            res.files += 1
            if task.kind == "missing":
                reject(task, task.note or "missing", None, None)
                continue
            data: bytes | None
            if task.note:  # e.g. a zip that cannot be opened
                data = _read_all(task.path)
                reject(task, task.note, data, len(data) if data is not None else None)
                continue
            data = None
            try:
                if task.kind == "zip":
                    why = unsafe_member_name(task.member or "")
                    zf = zips.get(task.path) or zips.setdefault(task.path, zipfile.ZipFile(task.path))
                    info = zf.getinfo(task.member or "")
                    if info.file_size > cfg.max_zip_member_bytes or (
                        info.compress_size
                        and info.file_size / info.compress_size > cfg.max_zip_ratio
                        and info.file_size > 1 << 20
                    ):
                        reject(
                            task,
                            f"zip member of {info.file_size} bytes (compressed {info.compress_size}) exceeds "
                            "the size or ratio limit (ingest.max_zip_member_bytes / max_zip_ratio); "
                            "the member stays in the original archive",
                            None,
                            info.file_size,
                        )
                        continue
                    data = zf.read(info)
                    size = len(data)
                    if why:
                        reject(task, f"unsafe zip member name ({why}); read in memory, nothing extracted", data, size)
                        continue
                    if _looks_non_dicom(task.member or "", data[:512]) and sniff(data[:512]) is None:
                        res.skipped += 1
                        continue
                    why = None if cfg.allow_executable_preamble else executable_preamble(data[:512])
                    if why:
                        reject(task, _preamble_reason(why), data, size)
                        continue
                    header = parse_all(data, inline_max=cfg.inline_max, max_depth=cfg.max_sequence_depth)
                else:
                    remote = _open_remote(task.path) if is_remote(task.path) else None
                    try:
                        if remote is not None:
                            head = bytes(remote.read_at(min(512, remote.size()), 0))
                        elif is_remote(task.path):
                            raise OSError(f"cannot open {task.path}")
                        else:
                            with open(task.path, "rb") as fh:
                                head = fh.read(512)
                    except OSError as exc:
                        reject(task, f"cannot be read: {exc.strerror or exc}", None, None)
                        continue
                    if head and sniff(head) is None and _looks_non_dicom(task.path, head):
                        res.skipped += 1
                        continue
                    why = None if cfg.allow_executable_preamble else executable_preamble(head)
                    if why:
                        data = _read_all(task.path)
                        reject(task, _preamble_reason(why), data, len(data) if data is not None else None)
                        continue
                    if remote is not None:  # ranged reads of the header only, as from a local file
                        header, _, size = read_header_at(
                            _pread(remote),
                            remote.size(),
                            max_header_bytes=cfg.max_header_bytes,
                            inline_max=cfg.inline_max,
                            max_depth=cfg.max_sequence_depth,
                        )
                    else:
                        header, _, size = read_header(
                            task.path,
                            max_header_bytes=cfg.max_header_bytes,
                            inline_max=cfg.inline_max,
                            max_depth=cfg.max_sequence_depth,
                        )
                if _meta_text(header, 0x00020002) == MEDIA_STORAGE_DIRECTORY:
                    res.skipped += 1  # a DICOMDIR reached as a plain file
                    continue
                if cfg.deid_profile:
                    # the lake never sees identifying data: the whole object is de-identified
                    # by the profile, then read again; an excluded instance is counted, not kept
                    if data is None:
                        data = _read_all(task.path) or b""
                    clean = _deidentifier(cfg.deid_profile).deidentify_bytes(data, source=task.source_path)
                    if clean is None:
                        res.skipped += 1
                        notes.append(f"{_pseudonymous_path(task.source_path)}: excluded by profile {cfg.deid_profile}")
                        continue
                    header = parse_all(clean, inline_max=cfg.inline_max, max_depth=cfg.max_sequence_depth)
                    size = len(clean)
                builder, dose_rows, accepted = segment_for(
                    _top_text(header, 0x00080018) or _meta_text(header, 0x00020003)
                )
                uid = builder.add(
                    header,
                    source=cfg.received_source or task.origin,
                    source_path=_pseudonymous_path(task.source_path) if cfg.deid_profile else task.source_path,
                    size_bytes=size,
                    received_at=now,
                )
            except ExtractionError as exc:
                if data is None and task.kind == "file":
                    data = _read_all(task.path)
                reject(task, str(exc), data, len(data) if data is not None else None)
                continue
            except Exception as exc:  # never lose a file to an unexpected error: reject it
                if data is None and task.kind == "file":
                    data = _read_all(task.path)
                reject(task, f"unexpected {type(exc).__name__}: {exc}", data, len(data) if data is not None else None)
                continue
            res.instances += 1
            seen_in[-1].add(uid)
            accepted.append(_pseudonymous_path(task.source_path) if cfg.deid_profile else task.source_path)
            try:
                sop_class = _top_text(header, 0x00080016)
                modality = _top_text(header, 0x00080060)
                if (
                    (sop_class and sop_class.startswith(SR_PREFIX))
                    or modality in DOSE_IMAGE_MODALITIES
                    or (sop_class == SECONDARY_CAPTURE and modality == "CT")  # dose-info screens
                ):
                    dose_rows.extend(_dose_rows(header, sop_class, modality))
            except Exception as exc:
                if cfg.deid_profile:  # the message may quote a value: only its kind
                    notes.append(
                        f"{_pseudonymous_path(task.source_path)}: dose events not extracted ({type(exc).__name__})"
                    )
                else:
                    notes.append(f"{task.source_path}: dose events not extracted ({type(exc).__name__}: {exc})")
    finally:
        for zf in zips.values():
            zf.close()
    for builder, dose_rows, accepted in segments:
        tables = builder.tables()
        if dose_rows:
            from dicomlake.lakeschema import dose_schema

            schema = dose_schema()
            tables["dose_events"] = pa.Table.from_pylist(
                [{k: r.get(k) for k in schema.names} for r in dose_rows], schema=schema
            )
        res.segments.append(Segment(tables=tables, uids=builder.uids, accepted_paths=accepted))
    res.rejects = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    return res


def _read_all(path: str, limit: int = 1 << 31) -> bytes | None:
    try:
        if is_remote(path):
            f = _open_remote(path)
            if f is None:
                return None
            with f:
                return bytes(f.read(limit))
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def _pread(f: Any) -> Callable[[int, int], bytes]:
    """``pread(n, offset)`` over a ``pyarrow`` random-access file."""

    def pread(n: int, at: int) -> bytes:
        return bytes(f.read_at(n, at))

    return pread


def _open_remote(path: str) -> Any:
    """A random-access ``pyarrow`` file on an object store or HDFS (``s3://…``), or None when
    it cannot be opened (the caller then rejects the file as unreadable)."""
    try:
        fs, p = filesystem(path)
        return fs.open_input_file(p)
    except (OSError, ValueError):
        return None


def run_chunk(tasks: list[Task]) -> ChunkResult:
    """Pool entry point (module-level so it pickles).

    The cyclic garbage collector is paused while a chunk is read: the rows are hundreds of
    thousands of small tuples with no cycles, and collections over them cost ~20 % here.
    """
    gc.disable()
    try:
        return process_chunk(tasks)
    finally:
        gc.enable()
