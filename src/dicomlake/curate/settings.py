"""Curation settings (``curate_on_ingest``), read until the main Settings embeds them."""

from __future__ import annotations

import os

ON_INGEST_ENV = "DICOMLAKE_CURATE_ON_INGEST"


def curate_on_ingest(settings: object | None = None) -> bool:
    """Whether ingest runs the curation rules over each committed batch.

    The setting ``curate_on_ingest`` (``DICOMLAKE_CURATE_ON_INGEST``). Default: true.
    """
    value = getattr(settings, "curate_on_ingest", None) if settings is not None else None
    if value is None:
        curate = getattr(settings, "curate", None)
        value = getattr(curate, "on_ingest", None)
    if value is None:
        env = os.environ.get(ON_INGEST_ENV)
        if env is not None:
            return env.strip().lower() not in ("0", "false", "no", "off", "")
        return True
    return bool(value)
