"""The access log: every request and DICOM association as a structured event (PS3.15 A.5).

Events live in ``<lake>/access.db`` (SQLite, WAL: many small writes, readers never wait),
beside the users, tokens and sessions of :mod:`dicomlake.web.auth`. Each event maps to one
DICOM audit message of PS3.15 A.5.3 and can be rendered as its XML
(:func:`audit_message_xml`):

============================  ==========  ===========================================
event                          EventID     raised by
============================  ==========  ===========================================
User Authentication            110114      login, logout, token grants (EventTypeCode
                                           110122 Login / 110123 Logout)
Query                          110112      QIDO-RS, UI searches, dashboards, the access log
DICOM Instances Accessed       110103      WADO-RS metadata, instance pages
DICOM Instances Transferred    110104      WADO-RS retrieval, STOW-RS, C-STORE associations
Data Export                    110106      CSV/XLSX/Parquet exports and downloads
Security Alert                 110113      refused access (110132 Use of Restricted Function),
                                           user changes (110137), refused associations (110126)
============================  ==========  ===========================================
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr


class AuditEvent(Enum):
    """PS3.15 A.5.3 audit messages, valued by their EventID code (DCM, PS3.16 CID 400)."""

    USER_AUTHENTICATION = "110114"
    """A.5.3.19 User Authentication: login and logout, successful or not."""
    QUERY = "110112"
    """A.5.3.14 Query: a search of the lake (QIDO-RS, UI, dashboards, access log)."""
    INSTANCES_ACCESSED = "110103"
    """A.5.3.5 DICOM Instances Accessed: metadata or element values of instances read."""
    INSTANCES_TRANSFERRED = "110104"
    """A.5.3.6 DICOM Instances Transferred: instances sent (WADO-RS) or received (STOW-RS, C-STORE)."""
    DATA_EXPORT = "110106"
    """A.5.3.8 Data Export: data leaving the system in a file (CSV, XLSX, Parquet)."""
    SECURITY_ALERT = "110113"
    """A.5.3.17 Security Alert: refused access, changed security attributes."""

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    AuditEvent.USER_AUTHENTICATION: "User Authentication",
    AuditEvent.QUERY: "Query",
    AuditEvent.INSTANCES_ACCESSED: "DICOM Instances Accessed",
    AuditEvent.INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    AuditEvent.DATA_EXPORT: "Export",
    AuditEvent.SECURITY_ALERT: "Security Alert",
}

EVENT_TYPES = {
    "110122": "Login",
    "110123": "Logout",
    "110132": "Use of Restricted Function",
    "110137": "User Security Attributes Changed",
    "110126": "Node Authentication",
}
"""EventTypeCode values (DCM, PS3.16 CID 401/402) used by this service."""

EVENT_COLUMNS = (
    "id", "time", "event_id", "event", "event_type", "action", "outcome", "user", "role", "auth",
    "source", "method", "path", "query", "status", "n_instances", "instances", "studies", "detail",
)  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id TEXT PRIMARY KEY, name TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions (
    session_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL, source TEXT);
CREATE TABLE IF NOT EXISTS uid_map (pseudo TEXT PRIMARY KEY, original TEXT NOT NULL, level TEXT);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, event_id TEXT NOT NULL, event TEXT NOT NULL,
    event_type TEXT, action TEXT NOT NULL, outcome INTEGER NOT NULL, user TEXT, role TEXT, auth TEXT,
    source TEXT, method TEXT, path TEXT, query TEXT, status INTEGER, n_instances INTEGER NOT NULL DEFAULT 0,
    instances TEXT, studies TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_user ON events(user);
"""

MAX_LISTED = 1000
"""Most instance/study UIDs kept in one event; the count is always exact. Default: 1000"""


_SECRET_PARAM = re.compile(
    r"(?i)(^|[&?;])((?:access_|id_|refresh_)?token|password|passwd|pwd|secret|client_secret|api_?key|key|code|"
    r"csrf_token|login_csrf|authorization)=[^&;]*"
)


def redact(query: str | None) -> str | None:
    """A query string with credential-like parameters blanked (they never reach the log)."""
    if not query:
        return query
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}=REDACTED", query)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def outcome_of(status: int) -> int:
    """EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor failure, 8 serious failure."""
    if status < 400:
        return 0
    if status < 500:
        return 4
    return 8


@dataclass
class EventRecord:
    """One access-log event before it is written."""

    event: AuditEvent
    action: str = "E"
    """EventActionCode: C create, R read, U update, D delete, E execute."""
    outcome: int = 0
    event_type: str | None = None
    user: str | None = None
    role: str | None = None
    auth: str | None = None
    source: str | None = None
    method: str | None = None
    path: str | None = None
    query: str | None = None
    status: int | None = None
    instances: list[str] = field(default_factory=list)
    n_instances: int | None = None
    studies: list[str] = field(default_factory=list)
    detail: str | None = None


class AccessDB:
    """The SQLite file of users, tokens, sessions, analyst UID pseudonyms and access events."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.con = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self.con.executescript(SCHEMA)
        try:
            self.path.chmod(0o600)
        except OSError:
            pass

    # ---- plumbing ----------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.con.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self.con.execute("BEGIN")
            try:
                self.con.executemany(sql, rows)
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self.con.close()

    # ---- events ------------------------------------------------------------------------

    def record(self, ev: EventRecord) -> int:
        """Write one event; returns its id."""
        n = ev.n_instances if ev.n_instances is not None else len(ev.instances)
        row = (
            now_iso(),
            ev.event.value,
            ev.event.meaning,
            ev.event_type,
            ev.action,
            ev.outcome,
            ev.user,
            ev.role,
            ev.auth,
            ev.source,
            ev.method,
            ev.path,
            (redact(ev.query) or None) and (redact(ev.query) or "")[:4000],
            ev.status,
            n,
            json.dumps([u for u in ev.instances if u][:MAX_LISTED]) if any(ev.instances or ()) else None,
            json.dumps([u for u in ev.studies if u][:MAX_LISTED]) if any(ev.studies or ()) else None,
            ev.detail and ev.detail[:2000],
        )
        with self._lock:
            cur = self.con.execute(
                "INSERT INTO events (time, event_id, event, event_type, action, outcome, user, role, auth, "
                "source, method, path, query, status, n_instances, instances, studies, detail) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            return int(cur.lastrowid or 0)

    def association(
        self,
        *,
        calling_aet: str,
        called_aet: str,
        peer: str,
        accepted: bool,
        instances: Sequence[str] = (),
        studies: Sequence[str] = (),
        reason: str | None = None,
    ) -> int:
        """Record one DICOM association: instances received (110104), or a refusal (110113/110126).

        The C-STORE listener of ``dicomlake serve`` calls this when an association ends.
        """
        if accepted:
            ev = EventRecord(
                AuditEvent.INSTANCES_TRANSFERRED,
                action="C",
                outcome=0,
                user=calling_aet,
                auth="dicom-aet",
                source=peer,
                method="C-STORE",
                path=f"{calling_aet}->{called_aet}",
                instances=list(instances),
                studies=list(studies),
                detail=reason,
            )
        else:
            ev = EventRecord(
                AuditEvent.SECURITY_ALERT,
                action="E",
                outcome=4,
                event_type="110126",
                user=calling_aet,
                auth="dicom-aet",
                source=peer,
                method="A-ASSOCIATE-RJ",
                path=f"{calling_aet}->{called_aet}",
                detail=reason,
            )
        return self.record(ev)

    def events(
        self,
        *,
        where: Mapping[str, str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Events newest first, filtered by exact column values and a time window; and the total."""
        conds, params = ["1=1"], []
        for col, value in (where or {}).items():
            if col not in EVENT_COLUMNS:
                raise ValueError(f"access log: no column {col!r}; choose from {', '.join(EVENT_COLUMNS)}")
            if value.endswith("*"):
                conds.append(f'"{col}" LIKE ?')
                params.append(value[:-1].replace("%", r"\%") + "%")
            else:
                conds.append(f'CAST("{col}" AS TEXT) = ?')
                params.append(value)
        if since:
            conds.append("time >= ?")
            params.append(since)
        if until:
            conds.append("time <= ?")
            params.append(until)
        cond = " AND ".join(conds)
        total = self.execute(f"SELECT count(*) FROM events WHERE {cond}", params)[0][0]
        rows = self.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {cond} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows], int(total)

    # ---- analyst UID pseudonyms ---------------------------------------------------------

    def remember_uids(self, pairs: Iterable[tuple[str, str, str]]) -> None:
        """Store (pseudonym, original, level) so an analyst can come back with a pseudonym."""
        rows = list(pairs)
        if rows:
            self.executemany("INSERT OR IGNORE INTO uid_map (pseudo, original, level) VALUES (?,?,?)", rows)

    def original_uid(self, pseudo: str) -> str | None:
        rows = self.execute("SELECT original FROM uid_map WHERE pseudo = ?", [pseudo])
        return str(rows[0][0]) if rows else None


def audit_message_xml(event: Mapping[str, Any], *, source_id: str | None = None) -> str:
    """The event as a DICOM audit message (PS3.15 A.5.1 schema)."""
    code = str(event["event_id"])
    meaning = AuditEvent(code).meaning
    a = quoteattr
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<AuditMessage>"]
    out.append(
        f"  <EventIdentification EventActionCode={a(str(event['action']))} "
        f"EventDateTime={a(str(event['time']))} EventOutcomeIndicator={a(str(event['outcome']))}>"
    )
    out.append(f'    <EventID csd-code={a(code)} codeSystemName="DCM" originalText={a(meaning)}/>')
    et = event.get("event_type")
    if et:
        out.append(
            f'    <EventTypeCode csd-code={a(str(et))} codeSystemName="DCM" originalText={a(EVENT_TYPES.get(et, et))}/>'
        )
    if event.get("detail") and int(event.get("outcome") or 0):
        out.append(f"    <EventOutcomeDescription>{_text(str(event['detail']))}</EventOutcomeDescription>")
    out.append("  </EventIdentification>")
    user = str(event.get("user") or "anonymous")
    src = str(event.get("source") or "")
    host = src.rsplit(":", 1)[0] if src else ""
    out.append(
        f'  <ActiveParticipant UserID={a(user)} UserIsRequestor="true"'
        + (f' NetworkAccessPointID={a(host)} NetworkAccessPointTypeCode="2"' if host else "")
        + ">"
    )
    if event.get("role"):
        out.append(
            f'    <RoleIDCode csd-code={a(str(event["role"]))} codeSystemName="dicomlake" originalText={a(str(event["role"]))}/>'
        )
    out.append('    <RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>')
    out.append("  </ActiveParticipant>")
    sid = source_id or f"dicomlake@{socket.gethostname()}"
    out.append(f'  <ActiveParticipant UserID={a(sid)} UserIsRequestor="false">')
    out.append('    <RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/>')
    out.append("  </ActiveParticipant>")
    out.append(f"  <AuditSourceIdentification AuditSourceID={a(sid)}/>")
    for uid in json.loads(event.get("studies") or "[]"):
        if not uid:  # an instance without a Study Instance UID (hostile or broken input)
            continue
        out.append(
            f'  <ParticipantObjectIdentification ParticipantObjectID={a(uid)} ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3">'
        )
        out.append(
            '    <ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>'
        )
        out.append("  </ParticipantObjectIdentification>")
    instances = json.loads(event.get("instances") or "[]")
    if instances:
        out.append(
            '  <ParticipantObjectIdentification ParticipantObjectID="instances" ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3">'
        )
        out.append(
            '    <ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>'
        )
        out.append("    <ParticipantObjectDescription>")
        for uid in instances:
            out.append(f"      <SOPClass><Instance UID={a(str(uid or ''))}/></SOPClass>")
        out.append("    </ParticipantObjectDescription>")
        out.append("  </ParticipantObjectIdentification>")
    if code == AuditEvent.QUERY.value and event.get("query") is not None:
        import base64

        q = base64.b64encode(str(event.get("query") or "").encode()).decode()
        out.append(
            f"  <ParticipantObjectIdentification ParticipantObjectID={a(str(event.get('path') or ''))} "
            'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24">'
        )
        out.append(
            '    <ParticipantObjectIDTypeCode csd-code="ITI-18" codeSystemName="IHE Transactions" originalText="Query"/>'
        )
        out.append(f"    <ParticipantObjectQuery>{q}</ParticipantObjectQuery>")
        out.append("  </ParticipantObjectIdentification>")
    out.append("</AuditMessage>")
    return "\n".join(out) + "\n"


def _text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
