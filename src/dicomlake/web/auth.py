"""Who is asking: users (argon2 passwords), bearer JWTs (IHE IUA style), API tokens, sessions, CSRF.

Three roles (:class:`Role`); a request is authenticated by, in this order:

1. ``Authorization: Bearer <jwt>`` — HS256, ``iss``/``aud``/``exp``/``sub``/``jti`` checked,
   ``jti`` not revoked (what ``dicomlake token NAME`` prints and ``POST /oauth/token`` grants);
2. ``Authorization: Bearer dlk_…`` — an opaque API token, stored as its SHA-256;
3. ``Authorization: Basic`` — name and password (for DICOMweb clients that know nothing else);
4. the ``dl_session`` cookie of a browser login; unsafe methods then need the session's CSRF
   token in ``X-CSRF-Token`` or a ``csrf_token`` form field.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dicomlake.store.accounts import AccessDB, now_iso
from dicomlake.web.settings import WebSettings

SESSION_COOKIE = "dl_session"
LOGIN_CSRF_COOKIE = "dl_login_csrf"
API_TOKEN_PREFIX = "dlk_"
_HASHER = PasswordHasher()


class Role(Enum):
    """What a user may see and do."""

    ADMIN = "admin"
    """Everything: identified data, STOW-RS, rejects, ingest status, the access log, raw SQL."""
    ANALYST = "analyst"
    """De-identified data only (the analyst profile applied on the fly); no identifiable instance."""
    AUDITOR = "auditor"
    """The access log, nothing of the lake."""


class AuthError(Exception):
    """Authentication failed (401), the role may not do this (403), or too many failures (429)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        alert: bool = True,
        retry_after: int | None = None,
        account: str | None = None,
    ) -> None:
        super().__init__(message)
        self.account = account
        """The user name that was tried, if any (for the access log)."""
        self.status = status
        self.message = message
        self.alert = alert
        self.retry_after = retry_after


class Throttle:
    """Exponential back-off of wrong passwords by (source address, account), never a lock-out.

    Each pair gets ``free`` wrong passwords; then each further attempt must wait 1 s, 2 s, 4 s, …
    (at most ``cap`` seconds) after the last failure, and an attempt inside that wait is refused
    with 429 before the password is even checked. A right password clears the pair. A source
    also gets ``free_per_source`` failures over all accounts (password spraying) before its own
    back-off. Keyed by the source, an attacker elsewhere cannot lock a user out: the user's own
    address keeps its own count. In memory (one service process); a pair idle for ``forget``
    seconds is forgotten.
    """

    def __init__(self, free: int = 10, *, free_per_source: int = 100, cap: float = 900.0, forget: float = 3600.0):
        self.free = max(1, free)
        self.free_per_source = max(self.free, free_per_source)
        self.cap = cap
        self.forget = forget
        self._fails: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _delay(self, n: int, free: int) -> float:
        return 0.0 if n < free else min(self.cap, 2.0 ** (n - free))

    def wait(self, source: str | None, account: str) -> float:
        """Seconds this source must still wait before trying ``account`` again (0: go ahead)."""
        now = time.monotonic()
        src = source or "?"
        with self._lock:
            out = 0.0
            for key, free in (((src, account), self.free), ((src, "\x00*"), self.free_per_source)):
                n, last = self._fails.get(key, (0, 0.0))
                out = max(out, last + self._delay(n, free) - now)
            return max(0.0, out)

    def failed(self, source: str | None, account: str) -> None:
        now = time.monotonic()
        src = source or "?"
        with self._lock:
            if len(self._fails) > 100_000:
                self._fails = {k: v for k, v in self._fails.items() if now - v[1] < self.forget}
            for key in ((src, account), (src, "\x00*")):
                n, last = self._fails.get(key, (0, 0.0))
                if n and now - last > self.forget:
                    n = 0
                self._fails[key] = (n + 1, now)

    def succeeded(self, source: str | None, account: str) -> None:
        with self._lock:
            self._fails.pop((source or "?", account), None)

    def check(self, source: str | None, account: str, how: str) -> None:
        """Raise 429 (with Retry-After) when this source must wait before trying ``account`` again."""
        wait = self.wait(source, account)
        if wait > 0:
            secs = max(1, int(wait + 0.999))
            raise AuthError(
                429,
                f"{how}: too many wrong passwords for {account!r} from {source or 'this address'}; "
                f"retry in {secs} s (the wait doubles with each further failure)",
                retry_after=secs,
                account=account,
            )


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    auth: str
    """session, jwt, api-token or basic."""
    csrf: str | None = None
    session_id: str | None = None


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _iso_in(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


class Auth:
    """Users, tokens and sessions over the access database."""

    def __init__(self, db: AccessDB, settings: WebSettings, secret: bytes) -> None:
        self.db = db
        self.settings = settings
        self.secret = secret
        self._basic_cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self.throttle = Throttle(settings.login_attempts)

    # ---- users -------------------------------------------------------------------------

    def add_user(self, name: str, role: str | Role, password: str) -> None:
        """Create or replace a user; the password is stored as an argon2id hash only."""
        role = Role(role) if not isinstance(role, Role) else role
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").replace("@", "").isalnum():
            raise ValueError(f"user name {name!r}: use letters, digits, '-', '_', '.', '@'")
        if len(password) < 8:
            raise ValueError(f"password for {name!r} is {len(password)} characters; use at least 8")
        self.db.put_user(name, role.value, _HASHER.hash(password))

    def user(self, name: str) -> tuple[Role, str, bool] | None:
        found = self.db.user(name)
        if found is None:
            return None
        return Role(found[0]), found[1], found[2]

    def users(self) -> list[dict[str, Any]]:
        return self.db.users()

    def login(self, name: str, password: str, source: str | None, how: str) -> Principal | None:
        """:meth:`check_password` behind the :class:`Throttle` (429 :class:`AuthError` while backing off)."""
        self.throttle.check(source, name, how)
        p = self.check_password(name, password)
        if p is None:
            self.throttle.failed(source, name)
        else:
            self.throttle.succeeded(source, name)
        return p

    def check_password(self, name: str, password: str) -> Principal | None:
        """The user when the password matches (constant work whether or not the user exists)."""
        found = self.user(name)
        stored = found[1] if found else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
            ok = found is not None and not found[2]
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or found is None:
            return None
        return Principal(name, found[0], "password")

    # ---- bearer tokens -----------------------------------------------------------------

    def _issuable(self, name: str) -> tuple[Role, str, bool]:
        """The user a token may be issued for: it exists and is not disabled (KeyError otherwise)."""
        found = self.user(name)
        if found is None:
            raise KeyError(f"no user {name!r}; add one with `dicomlake user add {name} --role ROLE`")
        if found[2]:
            raise KeyError(
                f"user {name!r} is disabled: no token is issued "
                f"(enable it again with `dicomlake user add {name} --role {found[0].value}`)"
            )
        return found

    def issue_jwt(self, name: str, *, days: float | None = None) -> str:
        """A signed bearer JWT for a user (IHE IUA style claims); its ``jti`` can be revoked."""
        found = self._issuable(name)
        life = (days if days is not None else self.settings.token_days) * 86400
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": name,
            "iat": now,
            "nbf": now,
            "exp": now + int(life),
            "jti": jti,
            "role": found[0].value,
            "scope": f"dicomlake/{found[0].value}",
        }
        token = jwt.encode(claims, self.secret, algorithm="HS256")
        self.db.add_token(jti, name, _sha(token), "jwt", _iso_in(life))
        return token

    def issue_api_token(self, name: str, *, days: float | None = None) -> str:
        """An opaque API token (``dlk_…``); only its SHA-256 is stored."""
        self._issuable(name)
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        life = (days if days is not None else self.settings.token_days) * 86400
        self.db.add_token(uuid.uuid4().hex, name, _sha(token), "api", _iso_in(life))
        return token

    def revoke_tokens(self, name: str) -> int:
        return self.db.revoke_tokens(name)

    def _active_user(self, name: str, how: str) -> Principal:
        found = self.user(name)
        if found is None or found[2]:
            raise AuthError(401, f"{how}: user {name!r} is unknown or disabled")
        return Principal(name, found[0], how)

    def verify_bearer(self, token: str) -> Principal:
        if token.startswith(API_TOKEN_PREFIX):
            found = self.db.api_token(_sha(token))
            if found is None or found[2] or (found[1] and found[1] < now_iso()):
                raise AuthError(
                    401,
                    "bearer API token is unknown, expired or revoked; get a new one with `dicomlake token NAME --opaque`",
                )
            return self._active_user(found[0], "api-token")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "sub", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "bearer JWT expired; get a new one with `dicomlake token NAME`") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"bearer JWT rejected: {exc}") from exc
        if self.db.token_revoked(str(claims["jti"])) is not False:
            raise AuthError(401, "bearer JWT was revoked or not issued by this service")
        return self._active_user(str(claims["sub"]), "jwt")

    def verify_basic(self, header_value: str, source: str | None = None) -> Principal:
        try:
            name, _, password = base64.b64decode(header_value).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthError(401, "Authorization: Basic value is not base64 of name:password") from exc
        self.throttle.check(source, name, "Basic authentication")
        key = _sha(f"{name}\x00{password}")
        with self._lock:
            hit = self._basic_cache.get(key)
        if hit and hit[0] > time.monotonic():
            return self._active_user(hit[1].name, "basic")
        p = self.login(name, password, source, "Basic authentication")
        if p is None:
            raise AuthError(401, f"Basic authentication failed for user {name!r}", account=name)
        principal = Principal(p.name, p.role, "basic")
        with self._lock:
            if len(self._basic_cache) > 1000:
                self._basic_cache.clear()
            self._basic_cache[key] = (time.monotonic() + 300, principal)
        return principal

    # ---- sessions ----------------------------------------------------------------------

    def create_session(self, p: Principal, source: str | None) -> tuple[str, str]:
        """A new browser session: (cookie value, CSRF token)."""
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        self.db.add_session(_sha(sid), p.name, csrf, _iso_in(self.settings.session_hours * 3600), source)
        return sid, csrf

    def session(self, sid: str) -> Principal:
        found = self.db.session(_sha(sid))
        if found is None or found[2] < now_iso():
            raise AuthError(401, "session expired or logged out; log in again at /login", alert=False)
        p = self._active_user(found[0], "session")
        # sliding expiry
        self.db.extend_session(_sha(sid), _iso_in(self.settings.session_hours * 3600))
        return Principal(p.name, p.role, "session", csrf=found[1], session_id=sid)

    def end_session(self, sid: str) -> None:
        self.db.end_session(_sha(sid))

    # ---- per request ---------------------------------------------------------------------

    def authenticate(self, headers: Any, cookies: Any, source: str | None = None) -> Principal | None:
        """The caller of a request, None when anonymous; AuthError when credentials are bad."""
        header = headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer" and value.strip():
                return self.verify_bearer(value.strip())
            if scheme == "basic" and value.strip():
                return self.verify_basic(value.strip(), source)
            raise AuthError(401, f"Authorization scheme {scheme!r} not supported; use Bearer or Basic")
        sid = cookies.get(SESSION_COOKIE)
        if sid:
            return self.session(sid)
        return None


def csrf_ok(p: Principal, supplied: str | None) -> bool:
    """Double-check a session's CSRF token (constant time)."""
    return bool(p.csrf and supplied and hmac.compare_digest(p.csrf, supplied))


_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
