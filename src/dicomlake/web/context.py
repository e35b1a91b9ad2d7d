"""What every route of the web app shares: the lake, the access database, auth, the analyst view."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from dicomlake.store.accounts import AccessDB, AuditEvent, EventRecord
from dicomlake.web.auth import AuthError, Principal, Role
from dicomlake.web.data import LakeAccess
from dicomlake.web.deidview import AnalystView
from dicomlake.web.settings import WebSettings


class WebError(Exception):
    """An HTTP error in the one JSON shape of STYLE.md §7 (or an HTML page for browsers)."""

    def __init__(
        self, status: int, error: str, errors: list[str] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.errors = errors if errors is not None else [error]
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"ok": False, "error": self.error, "errors": self.errors, "status": self.status}


@dataclass
class WebContext:
    """The app's state (``app.state.ctx``)."""

    lake: Path
    data: LakeAccess
    db: AccessDB
    auth: Any  # dicomlake.web.auth.Auth
    view: AnalystView
    settings: WebSettings
    status_provider: Any = None
    """Callable returning the service's ingest status (spool depth, rates, errors), if any."""
    extra: dict[str, Any] = field(default_factory=dict)


def ctx_of(request: Request) -> WebContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


def principal(request: Request) -> Principal:
    """The authenticated caller, or a 401 (the middleware has authenticated already)."""
    p: Principal | None = getattr(request.state, "principal", None)
    if p is None:
        raise AuthError(
            401,
            "authentication required: log in at /login, or send Authorization: Bearer <token> "
            "(`dicomlake token NAME` prints one)",
        )
    return p


def require(request: Request, *roles: Role) -> Principal:
    """The caller when their role is one of ``roles`` (admin always passes); 403 otherwise."""
    p = principal(request)
    if p.role is Role.ADMIN or p.role in roles:
        return p
    allowed = ", ".join(r.value for r in (Role.ADMIN, *roles))
    raise AuthError(
        403, f"{request.method} {request.url.path} needs role {allowed}; user {p.name!r} has role {p.role.value}"
    )


def audit(request: Request, event: AuditEvent, *, action: str = "E", **kw: Any) -> EventRecord:
    """Describe what this request does for the access log (the middleware completes and writes it)."""
    rec = EventRecord(event, action=action, **kw)
    request.state.audit = rec
    return rec
