"""The access database: users, API tokens, browser sessions, analyst UID pseudonyms and the
access log, in one SQLite file (``<lake>/access.db`` by default; WAL: many small writes,
readers never wait).

This is a store of its own beside the lake (the web app's HTTP logic is in
:mod:`dicomlake.web.auth` and :mod:`dicomlake.web.audit_log`): every statement on the file is
here, behind typed methods, and the web layer holds no connection. Each event maps to one DICOM
audit message of PS3.15 A.5.3 (:func:`dicomlake.web.audit_log.audit_message_xml` renders it).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


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

EVENT_COLUMNS = (
    "id", "time", "event_id", "event", "event_type", "action", "outcome", "user", "role", "auth",
    "source", "method", "path", "query", "status", "n_instances", "instances", "studies", "detail",
)  # fmt: skip

_QUOTED_COLUMNS = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)  # "user" is a keyword on PostgreSQL

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

PG_SCHEMA_NAME = "dicomlake_access"
"""The PostgreSQL schema of the accounts tables, beside the lake's own tables (not exported with them)."""

PG_SCHEMA = [
    f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA_NAME}",
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, "
    "created_at TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS api_tokens (token_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
    "token_sha256 TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT, "
    "revoked INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS sessions (session_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL, "
    "created_at TEXT NOT NULL, expires_at TEXT NOT NULL, source TEXT)",
    "CREATE TABLE IF NOT EXISTS uid_map (pseudo TEXT PRIMARY KEY, original TEXT NOT NULL, level TEXT)",
    "CREATE TABLE IF NOT EXISTS events (id BIGSERIAL PRIMARY KEY, time TEXT NOT NULL, event_id TEXT NOT NULL, "
    'event TEXT NOT NULL, event_type TEXT, action TEXT NOT NULL, outcome INTEGER NOT NULL, "user" TEXT, role TEXT, '
    "auth TEXT, source TEXT, method TEXT, path TEXT, query TEXT, status INTEGER, "
    "n_instances INTEGER NOT NULL DEFAULT 0, instances TEXT, studies TEXT, detail TEXT)",
    "CREATE INDEX IF NOT EXISTS events_time ON events(time)",
    'CREATE INDEX IF NOT EXISTS events_user ON events("user")',
]
"""The accounts tables on PostgreSQL: created once under :data:`ACCOUNTS_LOCK` (two services
starting at once: the second waits, then finds them)."""

ACCOUNTS_LOCK = 0x44_4C_41_43  # "DLAC": pg_advisory_xact_lock key of creating the accounts tables

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

    # ---- users -------------------------------------------------------------------------

    def put_user(self, name: str, role: str, password_hash: str) -> None:
        """Create a user or replace its role and password (and enable it again)."""
        self.execute(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES (?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET role = excluded.role, password_hash = excluded.password_hash, "
            "disabled = 0",
            [name, role, password_hash, now_iso()],
        )

    def user(self, name: str) -> tuple[str, str, bool] | None:
        """(role, password hash, disabled) of a user, None when there is none."""
        rows = self.execute("SELECT role, password_hash, disabled FROM users WHERE name = ?", [name])
        if not rows:
            return None
        return str(rows[0][0]), str(rows[0][1]), bool(rows[0][2])

    def users(self) -> list[dict[str, Any]]:
        """Every user by name: name, role, created_at, disabled."""
        rows = self.execute("SELECT name, role, created_at, disabled FROM users ORDER BY name")
        return [{"name": r[0], "role": r[1], "created_at": r[2], "disabled": bool(r[3])} for r in rows]

    def disable_user(self, name: str) -> None:
        """Disable a user and end its browser sessions (its tokens: :meth:`revoke_tokens`)."""
        with self._lock:
            self.execute("UPDATE users SET disabled = 1 WHERE name = ?", [name])
            self.execute("DELETE FROM sessions WHERE name = ?", [name])

    # ---- tokens ------------------------------------------------------------------------

    def add_token(self, token_id: str, name: str, token_sha256: str, kind: str, expires_at: str | None) -> None:
        """Remember an issued token (``kind`` ``jwt`` or ``api``) by its SHA-256 only."""
        self.execute(
            "INSERT INTO api_tokens (token_id, name, token_sha256, kind, created_at, expires_at) VALUES (?,?,?,?,?,?)",
            [token_id, name, token_sha256, kind, now_iso(), expires_at],
        )

    def revoke_tokens(self, name: str) -> int:
        """Revoke every token of a user; how many were live."""
        with self._lock:
            rows = self.execute("SELECT count(*) FROM api_tokens WHERE name = ? AND revoked = 0", [name])
            self.execute("UPDATE api_tokens SET revoked = 1 WHERE name = ?", [name])
        return int(rows[0][0])

    def api_token(self, token_sha256: str) -> tuple[str, str | None, bool] | None:
        """(user, expires_at, revoked) of an opaque API token by its SHA-256, None when unknown."""
        rows = self.execute(
            "SELECT name, expires_at, revoked FROM api_tokens WHERE token_sha256 = ? AND kind = 'api'",
            [token_sha256],
        )
        if not rows:
            return None
        return str(rows[0][0]), rows[0][1], bool(rows[0][2])

    def token_revoked(self, token_id: str) -> bool | None:
        """Whether the token with this id (a JWT's ``jti``) is revoked; None when never issued."""
        rows = self.execute("SELECT revoked FROM api_tokens WHERE token_id = ?", [token_id])
        return bool(rows[0][0]) if rows else None

    # ---- sessions ----------------------------------------------------------------------

    def add_session(self, session_sha256: str, name: str, csrf: str, expires_at: str, source: str | None) -> None:
        self.execute(
            "INSERT INTO sessions (session_sha256, name, csrf, created_at, expires_at, source) VALUES (?,?,?,?,?,?)",
            [session_sha256, name, csrf, now_iso(), expires_at, source],
        )

    def session(self, session_sha256: str) -> tuple[str, str, str] | None:
        """(user, CSRF token, expires_at) of a session, None when unknown."""
        rows = self.execute("SELECT name, csrf, expires_at FROM sessions WHERE session_sha256 = ?", [session_sha256])
        return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    def extend_session(self, session_sha256: str, expires_at: str) -> None:
        self.execute("UPDATE sessions SET expires_at = ? WHERE session_sha256 = ?", [expires_at, session_sha256])

    def end_session(self, session_sha256: str) -> None:
        self.execute("DELETE FROM sessions WHERE session_sha256 = ?", [session_sha256])

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
        return self._insert_event(row)

    def _insert_event(self, row: Sequence[Any]) -> int:
        with self._lock:
            cur = self.con.execute(
                'INSERT INTO events (time, event_id, event, event_type, action, outcome, "user", role, auth, '
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
                conds.append(f'CAST("{col}" AS TEXT) LIKE ?')
                params.append(value[:-1].replace("%", r"\%") + "%")
            else:
                conds.append(f'CAST("{col}" AS TEXT) = ?')
                params.append(value)
        if since:
            conds.append('"time" >= ?')
            params.append(since)
        if until:
            conds.append('"time" <= ?')
            params.append(until)
        cond = " AND ".join(conds)
        total = self.execute(f"SELECT count(*) FROM events WHERE {cond}", params)[0][0]
        rows = self.execute(
            f"SELECT {_QUOTED_COLUMNS} FROM events WHERE {cond} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows], int(total)

    # ---- analyst UID pseudonyms ---------------------------------------------------------

    def remember_uids(self, pairs: Iterable[tuple[str, str, str]]) -> None:
        """Store (pseudonym, original, level) so an analyst can come back with a pseudonym."""
        rows = list(pairs)
        if rows:
            self.executemany(
                "INSERT INTO uid_map (pseudo, original, level) VALUES (?,?,?) ON CONFLICT (pseudo) DO NOTHING", rows
            )

    def original_uid(self, pseudo: str) -> str | None:
        rows = self.execute("SELECT original FROM uid_map WHERE pseudo = ?", [pseudo])
        return str(rows[0][0]) if rows else None


class PostgresAccessDB(AccessDB):
    """The same accounts in the PostgreSQL lake (schema :data:`PG_SCHEMA_NAME`): every service
    process on one PostgreSQL lake, and ``dicomlake user``, see the same users, tokens, sessions
    and one access log. Same typed methods as the SQLite file; one connection, autocommit."""

    def __init__(self, url: str) -> None:  # no super().__init__(): no SQLite file
        import psycopg

        from dicomlake.errors import ConfigError
        from dicomlake.store.postgres import normalise_url
        from dicomlake.store.postgres import redact as redact_url

        self.url = normalise_url(str(url))
        self.path = Path(".")  # no file; kept for callers that show it
        self._lock = threading.RLock()
        try:
            self.con = psycopg.connect(  # type: ignore[assignment]
                self.url, autocommit=True, options=f"-c search_path={PG_SCHEMA_NAME}"
            )
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to {redact_url(self.url)} (accounts): {str(exc).strip()}") from exc
        con: Any = self.con
        with self._lock, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", [ACCOUNTS_LOCK])
            for stmt in PG_SCHEMA:
                con.execute(stmt)

    @staticmethod
    def _pg(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        con: Any = self.con
        with self._lock, con.cursor() as cur:
            cur.execute(self._pg(sql), list(params))
            return list(cur.fetchall()) if cur.description is not None else []

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        con: Any = self.con
        with self._lock, con.transaction(), con.cursor() as cur:
            cur.executemany(self._pg(sql), [list(r) for r in rows])

    def _insert_event(self, row: Sequence[Any]) -> int:
        rows = self.execute(
            'INSERT INTO events (time, event_id, event, event_type, action, outcome, "user", role, auth, '
            "source, method, path, query, status, n_instances, instances, studies, detail) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            row,
        )
        return int(rows[0][0])


def open_accounts(lake: str | Path, access_db: str | Path | None = None) -> AccessDB:
    """The accounts of a lake: ``access_db`` (a SQLite file) when given; on a PostgreSQL lake its
    :class:`PostgresAccessDB` (shared by every service on it); else ``<lake>/access.db``."""
    if access_db is not None:
        return AccessDB(access_db)
    from dicomlake.store.postgres import is_postgres_url

    text = str(lake)
    if is_postgres_url(text):
        return PostgresAccessDB(text)
    return AccessDB(Path(lake) / "access.db")
