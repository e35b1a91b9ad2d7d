"""Where the real sample files are: pydicom's test files, pydicom-data, and the repository's tests/data/corpus."""

from __future__ import annotations

import os
from pathlib import Path


def pydicom_test_files() -> Path:
    """pydicom's own test files (shipped in the wheel)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_data_files() -> Path | None:
    """The files of the ``pydicom-data`` package (module ``data_store``), if installed.

    Read from the package folder directly: pydicom's ``get_testdata_files`` would try to
    download what is missing, and dicomlake never reaches beyond loopback in tests.
    """
    try:
        import data_store
    except ImportError:
        return None
    p = Path(data_store.__file__).parent / "data"
    return p if p.is_dir() else None


def repo_corpus() -> Path | None:
    """The real files the project keeps for its tests and demo: ``tests/data/corpus``.

    Present in a checkout (not in the wheel: the OpenREM files are GPLv3 test data, see
    ``tests/data/corpus/SOURCES.md``); ``DICOMLAKE_CORPUS`` names another folder.
    """
    env = os.environ.get("DICOMLAKE_CORPUS")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            cand = parent / "tests" / "data" / "corpus"
            return cand if cand.is_dir() else None
    return None


def sample_sources() -> list[Path]:
    """Every sample folder present on this machine."""
    out = [pydicom_test_files()]
    for p in (pydicom_data_files(), repo_corpus()):
        if p is not None:
            out.append(p)
    return out
