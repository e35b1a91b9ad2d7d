"""Keyed, deterministic replacements: HMAC pseudonyms, 2.25 UIDs, per-patient date offsets."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dicomlake.errors import DeidError

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U


@dataclass
class ExternalMap:
    """An externally supplied map (challenge organisers, TREs) used instead of derived values.

    CSV with a header ``kind,original,replacement``; kind is ``UID``, a DICOM keyword such as
    ``PatientID``/``PatientName``/``AccessionNumber``, or ``DateOffset`` (original = Patient ID,
    replacement = days).
    """

    entries: dict[tuple[str, str], str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def read_csv(cls, path: Path) -> ExternalMap:
        """Read a map file; every malformed row is reported at once."""
        entries: dict[tuple[str, str], str] = {}
        problems: list[str] = []
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"kind", "original", "replacement"} <= set(reader.fieldnames):
                raise DeidError(f"map file {path}: header must be kind,original,replacement, found {reader.fieldnames}")
            for n, row in enumerate(reader, start=2):
                kind, orig, repl = (row["kind"] or "").strip(), row["original"] or "", row["replacement"] or ""
                if not kind or not orig.strip():
                    problems.append(f"line {n}: empty kind or original")
                    continue
                entries[(kind, orig.strip())] = repl.strip()
        if problems:
            raise DeidError(f"map file {path}: " + "; ".join(problems[:20]))
        return cls(entries, str(path))

    def get(self, kind: str, original: str) -> str | None:
        """The replacement, or None."""
        return self.entries.get((kind, original.strip()))


class Keyring:
    """Derive every replacement from one secret, so runs and processes agree without shared state.

    Parameters
    ----------
    secret
        The project secret (config/env, never in code or in the lake). Two keyrings with
        different secrets give unlinkable outputs (double pseudonymisation).
    external
        Map that takes precedence over derivation.
    strict
        With ``external``: a value missing from the map is an error rather than derived.
    """

    def __init__(self, secret: bytes, external: ExternalMap | None = None, strict: bool = False):
        if len(secret) < 16:
            raise DeidError(
                "the de-identification secret is shorter than 16 bytes; set DICOMLAKE_DEID__SECRET "
                "to a long random value (e.g. python -c 'import secrets;print(secrets.token_hex(32))')"
            )
        self._secret = secret
        self.external = external
        self.strict = strict
        self._uid_cache: dict[str, str] = {}

    def mac(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 of a value under the secret, domain-separated by purpose."""
        return hmac.new(self._secret, purpose.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def _mapped(self, kind: str, value: str) -> str | None:
        if self.external is None:
            return None
        hit = self.external.get(kind, value)
        if hit is None and self.strict:
            raise DeidError(
                f"map file {self.external.source} has no {kind} for a value in this instance; "
                "add it or set deid.map_strict=false to derive missing values"
            )
        return hit

    def uid(self, value: str) -> str:
        """``2.25.<integer>`` derived from the UID by HMAC (a version-4 UUID, PS3.5 B.2)."""
        value = value.strip("\x00 ")
        cached = self._uid_cache.get(value)
        if cached is not None:
            return cached
        mapped = self._mapped("UID", value)
        out = mapped if mapped else f"2.25.{uuid.UUID(bytes=self.mac('uid', value)[:16], version=4).int}"
        if len(self._uid_cache) > 200_000:
            self._uid_cache.clear()
        self._uid_cache[value] = out
        return out

    def code(self, kind: str, value: str, prefix: str = "", length: int = 12) -> str:
        """A keyed pseudonym: prefix + Crockford base32 of the HMAC (``length`` characters)."""
        mapped = self._mapped(kind, value)
        if mapped:
            return mapped
        n = int.from_bytes(self.mac(kind, value)[:10], "big")
        chars = []
        for _ in range(length):
            n, r = divmod(n, 32)
            chars.append(_B32[r])
        return prefix + "".join(chars)

    def date_offset(self, patient_key: str, low: int, high: int, whole_weeks: bool) -> int:
        """Per-patient offset in days within [low, high]; a multiple of 7 when ``whole_weeks``."""
        mapped = self._mapped("DateOffset", patient_key)
        if mapped:
            return int(mapped)
        n = int.from_bytes(self.mac("date-offset", patient_key)[:8], "big")
        if whole_weeks:
            lo_w, hi_w = -(-low // 7), high // 7
            if hi_w < lo_w:
                return low
            return 7 * (lo_w + n % (hi_w - lo_w + 1))
        return low + n % (high - low + 1)


def parse_key(text: str, what: str) -> bytes:
    """A 32-byte key from 64 hex digits or base64 (the vault key)."""
    t = text.strip()
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        try:
            raw = base64.b64decode(t, validate=True)
        except ValueError:
            raw = b""
    if len(raw) != 32:
        raise DeidError(
            f"{what} must be 32 bytes as 64 hex digits or base64 (got {len(raw)} bytes); generate "
            "one with python -c 'import secrets;print(secrets.token_hex(32))'"
        )
    return raw
