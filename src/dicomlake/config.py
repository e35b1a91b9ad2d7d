"""One Settings object: dicomlake.toml, then DICOMLAKE_* environment variables, then CLI flags."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicomlake.deid.settings import DeidSettings
from dicomlake.ingest.settings import DimseSettings
from dicomlake.web.settings import WebSettings


class IngestSettings(BaseModel):
    """How files are read into the lake."""

    workers: int = Field(0, description="Worker processes; 0 means one per core. Default: 0")
    batch_size: int = Field(2000, description="Instances committed to the lake per transaction. Default: 2000")
    max_header_bytes: int = Field(
        64 * 1024 * 1024,
        description="Largest header (everything before Pixel Data) read from one file. Default: 64 MiB",
    )
    max_zip_member_bytes: int = Field(2 * 1024**3, description="Largest zip member read into memory. Default: 2 GiB")
    max_zip_ratio: float = Field(
        200.0, description="Largest compression ratio accepted for a zip member (zip bombs). Default: 200"
    )
    inline_binary_max: int = Field(
        1024,
        description="Binary values up to this many bytes go into DICOM JSON as InlineBinary; "
        "longer ones are bulk data and left out. Default: 1024",
    )
    max_sequence_depth: int = Field(
        16, description="Deepest sequence nesting read; a file nested deeper is rejected with the reason. Default: 16"
    )
    allow_executable_preamble: bool = Field(
        False,
        description="Accept Part-10 files whose 128-byte preamble starts like an executable (PE 'MZ', "
        "ELF, Mach-O, '#!'; CVE-2019-11687). Off: such files are rejected and quarantined. Default: false",
    )


class QuerySettings(BaseModel):
    """Safety limits for queries."""

    max_rows: int = Field(1_000_000, description="Most rows a query returns. Default: 1000000")
    time_limit_s: float = Field(300.0, description="Longest a query may run, in seconds. Default: 300")


class Settings(BaseSettings):
    """Every setting of dicomlake, with its default and where it can be set."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMLAKE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    lake: Path = Field(
        Path("dicomlake-data"),
        description="The lake folder (DuckDB file, quarantine, spool). Default: ./dicomlake-data",
    )
    columns_file: Path | None = Field(
        None,
        description="Extra typed instance columns (TOML, same shape as the shipped "
        "instance_columns.toml). Default: none",
    )
    curate_on_ingest: bool = Field(
        True, description="Run the curation rules (curate/rules.toml) over each committed ingest batch. Default: true"
    )
    ingest: IngestSettings = Field(default_factory=IngestSettings)  # type: ignore[arg-type]
    query: QuerySettings = Field(default_factory=QuerySettings)  # type: ignore[arg-type]
    dimse: DimseSettings = Field(default_factory=DimseSettings)  # type: ignore[arg-type]
    deid: DeidSettings = Field(default_factory=DeidSettings)  # type: ignore[arg-type]
    web: WebSettings = Field(default_factory=WebSettings)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("DICOMLAKE_CONFIG", "dicomlake.toml")
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )


@cache
def _cached_settings() -> Settings:
    return Settings()


def get_settings(**overrides: Any) -> Settings:
    """Return the effective settings, with explicit overrides (CLI flags) applied last."""
    base = _cached_settings()
    if not overrides:
        return base
    clean = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=clean)


def reset_settings_cache() -> None:
    """Forget cached settings (tests change the environment)."""
    _cached_settings.cache_clear()
