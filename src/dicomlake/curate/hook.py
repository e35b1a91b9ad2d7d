"""Curation on ingest: the rules run over each batch right after it is committed."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def ingest_hook(store: object, settings: object, notes: list[str]) -> Callable[[list[str]], None] | None:
    """A callback for the ingest batcher, or None when ``curate_on_ingest`` is off or the store
    cannot be curated (a read-only lake). Curation never fails an ingest: an error becomes a note, and
    ``dicomlake curate`` re-runs the rules over the whole lake."""
    from dicomlake.curate.settings import curate_on_ingest

    if not curate_on_ingest(settings):
        return None
    door = getattr(store, "curation", None)  # DuckDB and PostgreSQL stores (store/curation.py)
    if door is None:
        return None
    try:
        from dicomlake.curate.engine import curate
        from dicomlake.curate.rules import load_rules

        rules = load_rules()
        lake = door()
    except Exception as exc:
        notes.append(f"curation on ingest is off: {exc}")
        return None

    def after_commit(uids: list[str]) -> None:
        if not uids:
            return
        try:
            curate(lake, uids, rules)
        except Exception as exc:
            log.warning("curation of %d instances failed: %s", len(uids), exc)
            notes.append(
                f"curation of {len(uids)} instances failed ({type(exc).__name__}: {exc}); "
                "run `dicomlake curate` to re-check the lake"
            )

    return after_commit
