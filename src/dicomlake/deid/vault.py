"""The re-identification vault: original ↔ pseudonym pairs under AES-256-GCM, apart from the lake."""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomlake.errors import DeidError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    kind TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    PRIMARY KEY (kind, pseudonym)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_CHECK = b"dicomlake-vault-v1"


@dataclass(frozen=True)
class Pair:
    """One re-identification pair."""

    kind: str
    """What the value is: a DICOM keyword (PatientID, PatientName, …) or ``UID``."""
    original: str
    pseudonym: str


class Vault:
    """Encrypted store of original ↔ pseudonym pairs; only the pseudonym is stored in clear.

    Each original is sealed with AES-256-GCM under the vault key, bound to (kind, pseudonym) as
    associated data, so a row cannot be moved to another pseudonym. Without the key the file
    reveals only pseudonyms, which the lake already holds. Re-identification is logged to
    ``<vault>.access.log`` (who, when, which pseudonyms; never the originals).

    Parameters
    ----------
    path
        The vault file; keep it apart from the lake (another disk, host or account).
    key
        32-byte AES key (``DICOMLAKE_DEID__VAULT_KEY``).
    """

    def __init__(self, path: Path, key: bytes):
        if len(key) != 32:
            raise DeidError("vault key must be 32 bytes (AES-256)")
        self.path = Path(path)
        self._aead = AESGCM(key)
        self._pending: dict[tuple[str, str], str] = {}
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)  # 0600 from the start: SQLite gives its -wal/-shm the same mode
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='check'").fetchone()
        if row is None:
            nonce = os.urandom(12)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('check', ?)",
                (nonce + self._aead.encrypt(nonce, _CHECK, b"check"),),
            )
            self._db.commit()
        else:
            blob = bytes(row[0])
            try:
                self._aead.decrypt(blob[:12], blob[12:], b"check")
            except InvalidTag:
                self._db.close()
                log_access(self.path, "refused", [], 0, "", reason="wrong key")
                raise DeidError(
                    f"vault {self.path}: the key does not open this vault; use the key it was "
                    "created with (DICOMLAKE_DEID__VAULT_KEY)"
                ) from None

    def record(self, kind: str, original: str, pseudonym: str) -> None:
        """Remember a pair (buffered; written by ``flush``)."""
        key = (kind, pseudonym)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            self._pending[key] = original
            if len(self._pending) >= 5000:
                self._flush_locked()

    def flush(self) -> None:
        """Write buffered pairs."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows = []
        for (kind, pseudonym), original in self._pending.items():
            nonce = os.urandom(12)
            aad = f"{kind}\x00{pseudonym}".encode()
            rows.append((kind, pseudonym, nonce, self._aead.encrypt(nonce, original.encode(), aad)))
        self._db.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?, ?, ?)", rows)
        self._db.commit()
        self._pending.clear()

    def reidentify(self, pseudonyms: list[str], kind: str | None = None, purpose: str = "") -> list[Pair]:
        """Originals of the given pseudonyms (all kinds unless ``kind``); the use is logged."""
        self.flush()
        out: list[Pair] = []
        for p in pseudonyms:
            q = "SELECT kind, pseudonym, nonce, ciphertext FROM pairs WHERE pseudonym = ?"
            args: tuple[str, ...] = (p,)
            if kind:
                q += " AND kind = ?"
                args = (p, kind)
            for k, ps, nonce, ct in self._db.execute(q, args):
                try:
                    original = self._aead.decrypt(bytes(nonce), bytes(ct), f"{k}\x00{ps}".encode())
                except InvalidTag as exc:
                    raise DeidError(f"vault {self.path}: entry {k} {ps} fails authentication") from exc
                out.append(Pair(k, original.decode(), ps))
        self._log("reidentify", pseudonyms, len(out), purpose)
        return out

    def count(self) -> int:
        """Number of pairs stored."""
        self.flush()
        return int(self._db.execute("SELECT count(*) FROM pairs").fetchone()[0])

    def _log(self, action: str, pseudonyms: list[str], found: int, purpose: str) -> None:
        log_access(self.path, action, pseudonyms, found, purpose)

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self.flush()
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (whatever the umask)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def log_access(vault: Path, action: str, pseudonyms: list[str], found: int, purpose: str, *, reason: str = "") -> None:
    """Append one line to ``<vault>.access.log`` (mode 0600): who, when, which pseudonyms, why.

    Refused attempts (no key, wrong key) are logged too; originals never are.
    """
    entry: dict[str, object] = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": getpass.getuser(),
        "pid": os.getpid(),
        "action": action,
        "pseudonyms": pseudonyms,
        "found": found,
        "purpose": purpose,
    }
    if reason:
        entry["reason"] = reason
    fd = os.open(f"{vault}.access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
