"""Curation check ``worklist-identity``: does the header agree with the order it answers?

For each instance with an Accession Number, the Modality Worklist provider is asked (C-FIND,
PS3.4 K.6) for the scheduled procedure steps of that accession; the header's Patient ID,
Patient's Name, Patient's Birth Date, Modality and Station Name are compared with the
item's. A mismatch (or an accession the worklist does not know) becomes a
``quality_flags`` row with the worklist's value as the proposal — the identity errors
that manual entry at the modality makes.

Off unless the rules file enables it::

    [checks.worklist-identity]
    enabled = true
    severity = "error"
    provider = "RIS@10.0.0.7:104"   # default: the dimse.worklist setting
    calling_ae = "DICOMLAKE"         # default: the dimse.ae_title setting
    attributes = ["PatientID", "PatientName", "PatientBirthDate", "Modality", "StationName"]

A provider that cannot be reached flags nothing (a note says so); ``dicomlake curate
run`` checks again later. A run asks for all its accessions over one association (at
most ``max_queries``, default 5000; about 0.1 s per accession against wlmscpfs or Orthanc
on a loaded 2-core machine) and answers are cached per accession for ``cache_seconds``
(default 300), so a study's instances cost one query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dicomlake.curate.lake import CurationLake
from dicomlake.curate.rules import Check, Rules

log = logging.getLogger(__name__)

RULE = "worklist-identity"
DEFAULT_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "Modality", "StationName")
_ITEM_FIELD = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "Modality": "modality",
    "StationName": "station_name",
}
_LABEL = {
    "PatientID": "Patient ID",
    "PatientName": "Patient's Name",
    "PatientBirthDate": "Patient's Birth Date",
    "Modality": "Modality",
    "StationName": "Station Name",
}
_cache: dict[tuple[str, str], tuple[float, list[Any]]] = {}


def _norm(keyword: str, value: object) -> str:
    """Comparable form: dates as YYYYMMDD, names without case, padding and empty components."""
    text = "" if value is None else str(value).strip()
    if keyword == "PatientBirthDate":
        return text.replace("-", "")[:8]
    if keyword == "PatientName":
        return "^".join(part.strip() for part in text.upper().split("=")[0].split("^")).rstrip("^")
    if keyword == "Modality":
        return text.upper()
    return text


def _provider(check: Check) -> tuple[str | None, str]:
    from dicomlake.config import get_settings

    settings = get_settings()
    provider = check.options.get("provider") or settings.dimse.worklist
    calling = check.options.get("calling_ae") or settings.dimse.ae_title
    return (str(provider) if provider else None), str(calling)


def _lookup_many(provider: str, calling: str, accessions: Sequence[str], ttl: float) -> dict[str, list[Any]]:
    """Worklist items per accession: from the cache, the rest asked over one association."""
    from dicomlake.write.send import Peer
    from dicomlake.write.worklist import WorklistQuery, find_worklist_many

    now = time.monotonic()
    out: dict[str, list[Any]] = {}
    missing = []
    for accession in accessions:
        hit = _cache.get((provider, accession))
        if hit is not None and now - hit[0] < ttl:
            out[accession] = hit[1]
        else:
            missing.append(accession)
    if missing:
        answers = find_worklist_many(
            Peer.parse(provider, "worklist-identity provider"),
            [WorklistQuery(accession_number=a) for a in missing],
            calling_ae=calling,
            timeout=15.0,
        )
        for accession, items in zip(missing, answers, strict=True):
            _cache[(provider, accession)] = (time.monotonic(), items)
            out[accession] = items
    return out


def find_mismatches(
    rows: Sequence[dict[str, Any]], check: Check, notes: list[str]
) -> list[tuple[str, str, str, str | None, str | None, str, str | None]]:
    """Flag rows (FLAG_COLUMNS order) for instance *rows* (keyword → header value, with
    SOPInstanceUID and AccessionNumber); problems reaching the provider go to *notes*."""
    from dicomlake.errors import DicomlakeError

    provider, calling = _provider(check)
    if provider is None:
        notes.append(f"{RULE}: no provider; set provider in the rules file or the dimse.worklist setting")
        return []
    attributes = [a for a in check.options.get("attributes", DEFAULT_ATTRIBUTES) if a in _ITEM_FIELD]
    ttl = float(check.options.get("cache_seconds", 300))
    severity = check.severity.value
    flags: list[tuple[str, str, str, str | None, str | None, str, str | None]] = []
    accessions = sorted({str(row.get("AccessionNumber") or "").strip() for row in rows} - {""})
    most = int(check.options.get("max_queries", 5000))
    if len(accessions) > most:
        notes.append(
            f"{RULE}: {len(accessions)} accessions, more than max_queries = {most}; the first {most} "
            "were checked (run again, or raise max_queries)"
        )
        accessions = accessions[:most]
    try:
        answers = _lookup_many(provider, calling, accessions, ttl)
    except DicomlakeError as exc:
        notes.append(f"{RULE}: {exc}; nothing flagged")
        log.warning("%s: %s", RULE, exc)
        return []
    for row in rows:
        accession = str(row.get("AccessionNumber") or "").strip()
        if accession not in answers:
            continue
        items = answers[accession]
        uid = str(row["SOPInstanceUID"])
        if not items:
            flags.append(
                (uid, RULE, severity, "AccessionNumber", accession,
                 f"Accession Number {accession!r} is not on the worklist of {provider}: no order answers this "
                 "instance (a mistyped accession, or the order was cancelled)", None)
            )  # fmt: skip
            continue
        for keyword in attributes:
            header = row.get(keyword)
            mine = _norm(keyword, header)
            theirs = {_norm(keyword, getattr(item, _ITEM_FIELD[keyword])) for item in items}
            theirs.discard("")
            if not theirs or (not mine and keyword in ("Modality", "StationName")):
                continue  # the worklist does not say, or the header does not (station, modality)
            if mine not in theirs:
                expected = sorted(getattr(item, _ITEM_FIELD[keyword]) for item in items)[0]
                flags.append(
                    (uid, RULE, severity, keyword, None if header is None else str(header),
                     f"{_LABEL[keyword]} {str(header or '')!r} differs from the worklist item of accession "
                     f"{accession!r} ({expected!r}, from {provider})", expected)
                )  # fmt: skip
    return flags


def run_check(run: Any) -> None:
    """The engine's step: flag the instances of the current scope."""
    check = run.rules.check(RULE)
    if check is None or "AccessionNumber" not in run.inst_cols:
        return
    rows = run.lake.identity_rows(DEFAULT_ATTRIBUTES)
    run.rows.extend(find_mismatches(rows, check, run.notes))


def check_received(lake: CurationLake, uids: Sequence[str], rules: Rules | None = None) -> int:
    """Run only this check over just-received instances and replace their ``worklist-identity`` flags.

    For a receiver that does not run the full rules per batch; a no-op (0) when the check
    is not enabled. ``lake`` is the lake's curation door (``store.curation()``). Returns the
    number of flags written.
    """
    import datetime as dt

    import pyarrow as pa

    from dicomlake.curate.engine import FLAG_COLUMNS
    from dicomlake.curate.rules import load_rules

    rules = rules or load_rules()
    check = rules.check(RULE)
    if check is None or not uids:
        return 0
    if "AccessionNumber" not in lake.columns("instances"):
        return 0
    rows = lake.identity_rows(DEFAULT_ATTRIBUTES, [str(u) for u in uids])
    notes: list[str] = []
    flags = find_mismatches(rows, check, notes)
    for note in notes:
        log.warning("%s", note)
    now = dt.datetime.now()
    table = pa.table({
        **{name: pa.array([r[i] for r in flags], pa.string()) for i, name in enumerate(FLAG_COLUMNS)},
        "rules_version": pa.array([rules.version] * len(flags), pa.string()),
        "flagged_at": pa.array([now] * len(flags), pa.timestamp("us")),
    })  # fmt: skip
    lake.replace_rule_flags(RULE, [str(u) for u in uids], table)
    return len(flags)


_rules_cache: dict[str, tuple[float, Rules | None]] = {}


def _enabled_rules() -> Rules | None:
    """The rules when they enable this check (re-read at most every 30 s), else None."""
    import os

    from dicomlake.curate.rules import RULES_ENV, load_rules

    key = os.environ.get(RULES_ENV, "")
    hit = _rules_cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < 30:
        return hit[1]
    try:
        rules: Rules | None = load_rules()
    except Exception as exc:  # a broken rules file must not stop a receiver
        log.warning("%s: rules not loaded (%s)", RULE, exc)
        rules = None
    if rules is not None and rules.check(RULE) is None:
        rules = None
    _rules_cache[key] = (time.monotonic(), rules)
    return rules


def receiver_hook(store: object) -> Callable[[list[str]], None] | None:
    """An ``after_commit`` callback for ``serve``'s spool drain, or None when the check is off.

    Only this check runs on the way in (the full rules stay with ``dicomlake curate`` and
    file ingest); it never fails a commit: an error is logged.
    """
    door = getattr(store, "curation", None)
    rules = _enabled_rules()
    if door is None or rules is None:
        return None
    lake: CurationLake = door()

    def after_commit(uids: list[str]) -> None:
        try:
            check_received(lake, uids, rules)
        except Exception as exc:
            log.warning("%s over %d received instances failed: %s", RULE, len(uids), exc)

    return after_commit


__all__ = ["RULE", "check_received", "find_mismatches", "receiver_hook", "run_check"]
