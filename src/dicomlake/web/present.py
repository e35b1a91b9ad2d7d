"""How values look on the web pages (never in the ``.json`` / ``.csv`` twins, which keep the data).

Person names as people write them (``Doe^Peter`` → ``Doe, Peter``), DICOM dates and times
readable, timestamps (ISO text, datetimes, epoch seconds) as local-free UTC times with how long
ago, SOP Class UIDs by name, and the ingest status as labelled sections.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


@lru_cache(maxsize=4096)
def vr_of(column: str) -> str | None:
    """The VR of a column named by keyword (the last part of a path), None when unknown."""
    from dicomlake.dicom.dictionary import keyword_to_tag, lookup

    tag = keyword_to_tag().get(column.split(".")[-1])
    entry = lookup(tag) if tag is not None else None
    return str(entry[0]) if entry else None


def person_name(value: str) -> str:
    """A PN value as hospitals' lists write it: ``Doe^Peter`` → ``Doe, Peter``.

    ``Family^Given^Middle^Prefix^Suffix`` → ``Family, Prefix Given Middle Suffix``; several values
    are joined by ``; ``, ideographic and phonetic groups follow in parentheses."""

    def one(group: str) -> str:
        parts = (group.split("^") + [""] * 5)[:5]
        family, given, middle, prefix, suffix = (p.strip() for p in parts)
        first = " ".join(x for x in (prefix, given, middle) if x)
        out = family if not first else (f"{family}, {first}" if family else first)
        return f"{out} {suffix}".strip() if suffix else out

    def value_(v: str) -> str:
        groups = [one(g) for g in v.split("=")]
        head = groups[0]
        rest = [g for g in groups[1:] if g]
        return f"{head} ({'; '.join(rest)})" if rest and head else (head or "; ".join(rest))

    return "; ".join(value_(v) for v in value.split("\\"))


def dicom_date(value: str) -> str:
    m = _DA.match(value)
    return f"{m[1]}-{m[2]}-{m[3]}" if m else value


def dicom_time(value: str) -> str:
    m = _TM.match(value)
    if not m:
        return value
    return ":".join(x for x in (m[1], m[2], m[3]) if x)


def as_datetime(value: Any) -> dt.datetime | None:
    """A timestamp from a datetime, ISO text or epoch seconds (None when it is none of these)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1e9 < value < 1e10:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str) and _ISO.match(value):
        try:
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return d if d.tzinfo else d.replace(tzinfo=dt.UTC)
    return None


def ago(d: dt.datetime, now: dt.datetime | None = None) -> str:
    secs = ((now or dt.datetime.now(dt.UTC)) - d).total_seconds()
    if secs < -60:
        return "in the future"
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h"), (86400 * 60, 86400, "days")):
        if secs < limit:
            return f"{max(0, int(secs // div))} {unit} ago"
    return ""


def human_time(value: Any) -> str:
    """``2026-12-06 09:27 UTC (5 min ago)``; the value as it is when it is not a timestamp."""
    d = as_datetime(value)
    if d is None:
        return "" if value is None else str(value)
    text = d.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rel = ago(d)
    return f"{text} ({rel})" if rel else text


@lru_cache(maxsize=1024)
def uid_name(uid: str) -> str:
    """A UID's name from the DICOM dictionary (``CT Image Storage``), else the UID."""
    from pydicom.uid import UID

    try:
        name = UID(uid).name
    except Exception:
        return uid
    return name if name and name != uid else uid


def show(column: str, value: Any) -> str:
    """A cell of a table as shown on a page."""
    if value is None:
        return ""
    if isinstance(value, (dt.datetime,)):
        return human_time(value)
    text = str(value)
    vr = vr_of(column)
    if vr == "PN":
        return person_name(text)
    if vr == "DA":
        return dicom_date(text)
    if vr == "TM":
        return dicom_time(text)
    if column.endswith("ClassUID"):
        return uid_name(text)
    if is_time(column):
        d = as_datetime(value)
        return d.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if d is not None else text
    return text


def is_time(column: str) -> bool:
    """A time-stamp column of the lake's own tables (shown short, in full in the tooltip)."""
    return column.endswith(("_at", "time")) or column in ("created", "finished", "last_received")


def duration(start: Any, end: Any) -> str:
    """``4.2 s``, ``3 min 5 s``; empty while running or unknown."""
    a, b = as_datetime(start), as_datetime(end)
    if a is None or b is None:
        return ""
    secs = (b - a).total_seconds()
    if secs < 60:
        return f"{secs:.1f} s"
    return f"{int(secs // 60)} min {int(secs % 60)} s" if secs < 3600 else f"{secs / 3600:.1f} h"


def num(value: Any) -> str:
    """An integer with thousands separators; empty for none."""
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


HEADERS = {
    "StudyInstanceUID": "Study UID",
    "SeriesInstanceUID": "Series UID",
    "SOPInstanceUID": "Instance UID",
    "SOPClassUID": "SOP class",
    "PatientName": "Patient",
    "PatientID": "Patient ID",
    "AccessionNumber": "Accession",
    "StudyDescription": "Study",
    "SeriesDescription": "Series",
    "ModalitiesInStudy": "Modalities",
    "n_instances": "Instances",
    "n_series": "Series",
    "n_studies": "Studies",
    "StudyDate": "Date",
    "InstanceNumber": "#",
    "SeriesNumber": "Series #",
}


def header(column: str) -> str:
    """A column's heading: a short name for the common ones, else the keyword split into words."""
    if column in HEADERS:
        return HEADERS[column]
    leaf = column.split(".")[-1]
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", leaf).replace("_", " ")
    return words[:1].upper() + words[1:]


WIDE = ("Description", "description", "message", "reason", "Name", "what", "sentence")


def wide_column(column: str) -> bool:
    """Columns of prose (descriptions, messages, names) get twice the width of the others."""
    return column.endswith(WIDE) or "description" in column.lower()


def col_width(n_columns: int) -> float:
    """The widest a cell of a table of ``n_columns`` may be, in em, so the table fits 1,280 px."""
    return round(max(5.0, min(16.0, 64.0 / max(1, n_columns))), 1)


LABELS = {
    "pid": "Process",
    "lake": "Lake folder",
    "ae_title": "AE title",
    "port": "DICOM port",
    "started_at": "Running since",
    "spool_pending": "Waiting in the spool",
    "spool_depth": "Files in the spool",
    "instances": "Instances in the lake",
    "last_minute": "Received in the last minute",
    "last_hour": "Received in the last hour",
    "last_received": "Last received",
    "rejects": "Rejected inputs",
    "drain": "Spool to lake",
    "listener": "DICOM listener (C-STORE)",
    "received": "Received",
    "drained": "Taken from the spool",
    "stored": "Stored",
    "rejected": "Rejected",
    "batches": "Batches committed",
    "failures": "Failed commits",
    "last_commit": "Last commit",
    "last_error": "Last error",
    "refused": "Refused",
    "associations": "Associations",
    "failed": "Failed",
    "filtered": "Filtered out",
    "echoes": "C-ECHO",
    "bytes": "Bytes received",
    "last_reject": "Last rejection",
    "statuses": "Answers by status",
    "status_error": "Status unavailable",
}


def _value(key: str, value: Any) -> str:
    if value is None or value == {}:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in value.items())
    if key in ("last_commit", "started_at", "last_received") or key.endswith("_at"):
        return human_time(value)
    if key == "bytes" and isinstance(value, int):
        return f"{value / 1e6:,.1f} MB" if value >= 1e6 else f"{value:,} bytes"
    if isinstance(value, int) and not isinstance(value, bool) and key not in ("pid", "port"):
        return f"{value:,}"
    return str(value)


def status_sections(status: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The ingest status as (heading, [(label, text)]) sections: the service, then each nested part."""
    top = [
        (LABELS.get(k, k.replace("_", " ").capitalize()), _value(k, v)) for k, v in status.items() if not _nested(k, v)
    ]
    out = [("Service and lake", top)]
    for k, v in status.items():
        if _nested(k, v):
            rows = [(LABELS.get(kk, kk.replace("_", " ").capitalize()), _value(kk, vv)) for kk, vv in v.items()]
            out.append((LABELS.get(k, k), rows))
    return out


def _nested(key: str, v: Any) -> bool:
    return isinstance(v, dict) and key not in ("refused", "statuses")


__all__ = ["human_time", "person_name", "show", "status_sections", "uid_name"]
