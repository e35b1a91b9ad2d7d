"""Settings of de-identification: keys, vault location, external maps (``DICOMLAKE_DEID__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


class DeidSettings(BaseModel):
    """Keys and places for de-identification; secrets come from config or environment, never code.

    Hooked into the main settings as ``deid`` so that ``DICOMLAKE_DEID__SECRET`` and friends apply.
    """

    secret: SecretStr | None = Field(
        None,
        description="Project secret keying pseudonyms, UID remapping and date offsets "
        "(DICOMLAKE_DEID__SECRET). Without it a random per-run key is used and pseudonyms "
        "differ between runs. Default: none",
    )
    vault_key: SecretStr | None = Field(
        None,
        description="AES-256-GCM key of the re-identification vault, 32 bytes as 64 hex digits "
        "or base64 (DICOMLAKE_DEID__VAULT_KEY). Default: none (no vault written)",
    )
    vault_path: Path | None = Field(
        None,
        description="Re-identification vault file (SQLite), kept apart from the lake. Default: none (no vault written)",
    )
    map_file: Path | None = Field(
        None,
        description="External map (CSV: kind,original,replacement) of UIDs and IDs supplied by a "
        "challenge organiser or TRE, used instead of derived values. Default: none",
    )
    map_strict: bool = Field(
        False,
        description="With map_file: fail on a value the map lacks instead of deriving one. Default: false",
    )
    profile: str = Field(
        "basic",
        description="Profile used by ingest/serve --deid and exports when none is named "
        "(built-in name or path of a TOML file). Default: basic",
    )
