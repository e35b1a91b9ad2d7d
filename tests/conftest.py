"""Shared fixtures: the sample corpus ingested once, peers required in CI, strict pydicom."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IN_CI, require_tool

__all__ = ["IN_CI", "require_tool"]


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
    from dicomlake.samples import repo_corpus
    from dicomlake.samples import sample_sources as ss

    if repo_corpus() is None:
        pytest.fail("tests/data/corpus is missing from the checkout")
    return ss()


@pytest.fixture(scope="session")
def sample_lake(tmp_path_factory: pytest.TempPathFactory, sample_sources: list[Path]) -> Path:
    """Every sample file ingested once into a lake shared by read-only tests."""
    from dicomlake.ingest.pipeline import ingest_paths

    lake = tmp_path_factory.mktemp("sample-lake")
    ingest_paths(sample_sources, lake, workers=2)
    return lake


@pytest.fixture
def strict_pydicom() -> Iterator[None]:
    """pydicom raises on invalid values while the test runs, reading and writing alike.

    For tests of what dicomlake writes: an object pydicom would only warn about is a failure.
    """
    from pydicom import config

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved
