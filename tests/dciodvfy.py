"""Run dicom3tools ``dciodvfy`` on a file and return what it reported, for any test to reuse.

``dciodvfy`` (Debian package ``dicom3tools``) checks a DICOM file against the IOD of its
SOP Class: missing Type 1/2 attributes, values outside enumerated terms, VR and VM
violations. It writes everything to stderr, one finding per line::

    CTImage
    Warning - Value is zero for value 1 of attribute <Patient's Weight>
    Error - Missing attribute Type 1 Required Element=<ConversionType> Module=<SCEquipment>

Usage::

    from tests.dciodvfy import dciodvfy_errors, require_dciodvfy

    assert dciodvfy_errors(path) == []

When the tool is missing, :func:`require_dciodvfy` skips the test locally and fails it
when the environment variable ``CI`` is ``true``, so a missing validator is never a
silent pass in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import missing

DCIODVFY = "dciodvfy"
"""Executable name; Debian installs it as /usr/bin/dciodvfy. Default: ``dciodvfy``."""


@dataclass(frozen=True)
class DciodvfyReport:
    """What ``dciodvfy`` said about one file."""

    path: Path
    iod: str
    """First line of the output: the IOD the file was checked against (e.g. ``SCImage``)."""
    errors: list[str] = field(default_factory=list)
    """Lines starting ``Error -`` or ``Abort -`` (an abort means the file could not be read)."""
    warnings: list[str] = field(default_factory=list)
    """Lines starting ``Warning -``."""
    output: str = ""
    """The whole output, for assertion messages."""


def find_dciodvfy() -> str | None:
    """Return the path of ``dciodvfy`` or ``None`` when it is not installed."""
    return shutil.which(DCIODVFY)


def require_dciodvfy() -> str:
    """Return the path of ``dciodvfy``; skip the test (fail when ``CI=true``) if missing."""
    exe = find_dciodvfy()
    if exe is None:
        message = "dciodvfy not found: install the Debian package dicom3tools (make deb)"
        missing(message)
    return exe


def run_dciodvfy(path: str | os.PathLike[str], *, timeout: float = 60.0) -> DciodvfyReport:
    """Validate *path* with ``dciodvfy`` and parse its report.

    Parameters
    ----------
    path
        A DICOM Part 10 file.
    timeout
        Seconds before the run is abandoned (raises ``subprocess.TimeoutExpired``).
    """
    exe = require_dciodvfy()
    proc = subprocess.run([exe, os.fspath(path)], capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stderr + proc.stdout
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    iod = lines[0] if lines and " - " not in lines[0] else ""
    errors = [line for line in lines if line.startswith(("Error", "Abort"))]
    warnings = [line for line in lines if line.startswith("Warning")]
    if proc.returncode != 0 and not errors:
        errors.append(f"Abort - dciodvfy exited with status {proc.returncode}")
    return DciodvfyReport(Path(path), iod, errors, warnings, output)


def dciodvfy_errors(path: str | os.PathLike[str]) -> list[str]:
    """Return the list of ``Error``/``Abort`` lines ``dciodvfy`` reports for *path* (empty = valid)."""
    return run_dciodvfy(path).errors


def dcmdump_top_level(path: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Top-level elements as dcmtk ``dcmdump`` reads them: ``"ggggeeee"`` → (VR, value text).

    Values are as dcmdump prints them: text between ``[...]`` for strings (UTF-8 with
    ``+U8``), numbers as printed, ``""`` for empty values. Sequences, bulk data (OB/OW/…)
    and items are left out. Skips the test when dcmtk is missing (fails when ``CI=true``).
    """
    exe = shutil.which("dcmdump")
    if exe is None:
        message = "dcmdump not found: install the Debian package dcmtk (make deb)"
        missing(message)
    proc = subprocess.run(
        [exe, "-q", "-Un", "+U8", "+L", "-M", os.fspath(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"dcmdump failed on {path}: {proc.stderr.decode(errors='replace')}")
    out: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("("):
            continue  # nested lines are indented; comments start with '#'
        tag = line[1:10].replace(",", "").lower()
        vr = line[12:14]
        if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "na"):
            continue
        rest = line[15:].rsplit("#", 1)[0].rstrip()
        if rest.startswith("(no value available)"):
            value = ""
        elif rest.startswith("["):
            value = rest[1 : rest.rindex("]")]
        else:
            value = rest.strip()
        out[tag] = (vr, value)
    return out
