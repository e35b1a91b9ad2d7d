"""What to read: folders walked recursively, single files, zip archives and DICOMDIRs.

Sources are expanded into tasks before any is read, so the progress bar knows the total
and each file is read once even when a DICOMDIR and a folder walk both reach it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dicomlake.errors import ConfigError

# PS3.10 §8: a DICOMDIR is the Media Storage Directory; it indexes files, it is not an instance.
DICOMDIR_NAMES = frozenset({"DICOMDIR", "dicomdir"})


@dataclass(frozen=True, slots=True)
class Task:
    """One thing to read: a file, a zip member, or a reference that could not be resolved."""

    kind: str  # "file" | "zip" | "missing"
    path: str  # file path, or the zip archive's path
    member: str | None = None  # zip member name
    note: str | None = None  # for "missing": why
    origin: str = "file"  # "file" | "zip" | "dicomdir": recorded as the instance's source

    @property
    def source_path(self) -> str:
        return f"{self.path}!/{self.member}" if self.kind == "zip" else self.path


def unsafe_member_name(name: str) -> str | None:
    """Why a zip member name must not be trusted (absolute, drive, ``..``), else None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return "'..' component (path traversal)"
    return None


def _dicomdir_tasks(path: Path, seen: set[str]) -> Iterator[Task]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        records = ds.get("DirectoryRecordSequence", [])
    except Exception as exc:
        yield Task("missing", str(path), note=f"DICOMDIR cannot be read: {exc}", origin="dicomdir")
        return
    root = path.parent
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = list(ref) if not isinstance(ref, str) else ref.split("\\")
        # PS3.10 §8.2: file IDs are relative to the DICOMDIR's folder; refuse escapes.
        if any(p in ("..", "") for p in parts):
            yield Task(
                "missing",
                str(root.joinpath(*[p for p in parts if p])),
                note="unsafe ReferencedFileID",
                origin="dicomdir",
            )
            continue
        target = root.joinpath(*parts)
        if not target.exists():
            # media written on case-insensitive systems: try a case-insensitive match
            alt = _case_insensitive(root, parts)
            if alt is None:
                yield Task(
                    "missing",
                    str(target),
                    note=f"referenced by DICOMDIR {path} but not found",
                    origin="dicomdir",
                )
                continue
            target = alt
        key = os.path.realpath(target)
        if key in seen:
            continue
        seen.add(key)
        yield Task("file", str(target), origin="dicomdir")


def _case_insensitive(root: Path, parts: list[str]) -> Path | None:
    cur = root
    for p in parts:
        try:
            names = {n.lower(): n for n in os.listdir(cur)}
        except OSError:
            return None
        hit = names.get(p.lower())
        if hit is None:
            return None
        cur = cur / hit
    return cur if cur.is_file() else None


def _zip_tasks(path: Path) -> Iterator[Task]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        yield Task("file", str(path), note=f"zip archive cannot be opened: {exc}", origin="zip")
        return
    for info in infos:
        if info.is_dir():
            continue
        yield Task("zip", str(path), member=info.filename, origin="zip")


def is_zip(path: Path) -> bool:
    if path.suffix.lower() != ".zip":
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return False


def expand(paths: Iterable[str | os.PathLike[str]]) -> list[Task]:
    """Expand command-line sources into tasks; raises ConfigError for a missing source."""
    tasks: list[Task] = []
    seen: set[str] = set()
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise ConfigError(
            "no such file or folder: " + ", ".join(missing) + " (check the path; folders are walked recursively)"
        )

    def one(p: Path) -> None:
        key = os.path.realpath(p)
        if key in seen:
            return
        if p.name in DICOMDIR_NAMES:
            seen.add(key)
            tasks.extend(_dicomdir_tasks(p, seen))
            return
        seen.add(key)
        if is_zip(p):
            tasks.extend(_zip_tasks(p))
        else:
            tasks.append(Task("file", str(p)))

    for src in paths:
        p = Path(src)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                names = sorted(filenames)
                # a DICOMDIR first, so its references are read with origin "dicomdir"
                names.sort(key=lambda n: n not in DICOMDIR_NAMES)
                for name in names:
                    one(Path(dirpath) / name)
        else:
            one(p)
    return tasks
