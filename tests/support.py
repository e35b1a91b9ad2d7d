"""Where the tests' data are, and what "in CI" means: one definition for every test.

The real sample files belong to the repository (``tests/data/corpus``, see its SOURCES.md);
nothing outside the checkout is read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
CORPUS = DATA / "corpus"
OPENREM = CORPUS / "openrem"
DEID_DATA_DIR = CORPUS / "deid-data"

#: CI sets CI=true (.ci/run); there a missing peer or data file is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    """A peer or a data file is missing: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of an external peer; a failure in CI (never a quiet skip), a skip elsewhere."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        missing(f"{name} is not installed (make install installs it)")
    return path
