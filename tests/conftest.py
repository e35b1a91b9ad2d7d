"""Shared fixtures: the sample corpus ingested once, peers required in CI, strict pydicom."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of an external peer; a failure in CI (never a quiet skip), a skip elsewhere."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        msg = f"{name} is not installed (make install installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_settings() -> Iterator[None]:
    """Tests never read a developer's dicomlake.toml or DICOMLAKE_* variables."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("DICOMLAKE_")}
    for k in saved:
        del os.environ[k]
    os.environ["DICOMLAKE_CONFIG"] = os.devnull
    from dicomlake.config import reset_settings_cache

    reset_settings_cache()
    yield
    os.environ.update(saved)
    reset_settings_cache()


@pytest.fixture(scope="session")
def sample_sources() -> list[Path]:
    from dicomlake.samples import sample_sources as ss
    from dicomlake.samples import shared_corpus

    if shared_corpus() is None and IN_CI:
        pytest.fail("../shared/corpus is missing beside the repository")
    return ss()


@pytest.fixture(scope="session")
def sample_lake(tmp_path_factory: pytest.TempPathFactory, sample_sources: list[Path]) -> Path:
    """Every sample file ingested once into a lake shared by read-only tests."""
    from dicomlake.ingest.pipeline import ingest_paths

    lake = tmp_path_factory.mktemp("sample-lake")
    ingest_paths(sample_sources, lake, workers=2)
    return lake
