"""The web app of ``dicomlake serve``: DICOMweb, the UI, login, roles and the access log.

``create_app(lake)`` builds a FastAPI app over a lake folder (or over the store the service
hands in). Every request passes one middleware that authenticates the caller
(:mod:`dicomlake.web.auth`), enforces CSRF on browser sessions, adds security headers and
writes one access-log event (:mod:`dicomlake.web.audit_log`). Errors have one JSON shape
(STYLE.md §7): ``{"ok": false, "error": "...", "errors": [...], "status": 400}``.

Run standalone::

    DICOMLAKE_WEB__SECRET=... python -m dicomlake.web.app LAKE [--port 8000]
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicomlake.errors import ConfigError, DicomlakeError, QueryError
from dicomlake.store.accounts import AccessDB, AuditEvent, EventRecord, open_accounts, outcome_of
from dicomlake.web.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Auth, AuthError, Principal, Role, csrf_ok
from dicomlake.web.context import WebContext, WebError, audit, ctx_of
from dicomlake.web.data import IngestFn, LakeAccess
from dicomlake.web.deidview import AnalystView
from dicomlake.web.settings import WebSettings, secret_bytes, web_settings

LOG = logging.getLogger("dicomlake.web")

PUBLIC = ("/login", "/static/", "/healthz", "/oauth/token", "/favicon.ico")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def create_app(
    lake: Path | str,
    settings: WebSettings | None = None,
    *,
    store: Any = None,
    ingest: IngestFn | None = None,
    status_provider: Any = None,
    accounts: str | None = None,
) -> FastAPI:
    """The web app over ``lake``.

    Parameters
    ----------
    lake
        The lake folder; ``access.db`` (users, tokens, the access log) lives there unless
        ``settings.access_db`` says otherwise.
    settings
        Web settings; by default :func:`dicomlake.web.settings.web_settings`.
    store
        An open store to share (the service's); otherwise the lake is opened here.
    ingest
        How STOW-RS puts files into the lake (the service's spool); otherwise
        :func:`dicomlake.ingest.pipeline.ingest_paths` into ``store``.
    status_provider
        Callable returning the service's ingest status (spool depth, rates, last errors).
    accounts
        Where users, tokens and the access log live when not beside ``lake``: the service on a
        PostgreSQL lake passes the lake's URL (its state folder is ``lake``), so every service
        on that lake accepts the same users (:func:`dicomlake.store.accounts.open_accounts`).
    """
    settings = settings or web_settings()
    lake = Path(lake)
    secret = secret_bytes(settings)
    db: AccessDB = open_accounts(accounts or lake, settings.access_db)
    data = LakeAccess.open(lake, store=store, ingest=ingest)
    ctx = WebContext(
        lake=lake,
        data=data,
        db=db,
        auth=Auth(db, settings, secret),
        view=AnalystView(settings.analyst_profile, secret, db),
        settings=settings,
        status_provider=status_provider,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        from dicomlake.web import ui

        ui.shutdown_exports(ctx)
        data.close()
        db.close()

    app = FastAPI(
        title="dicomlake",
        summary="DICOMweb (QIDO-RS, WADO-RS, STOW-RS), web UI and access log over a DICOM metadata lake",
        lifespan=lifespan,
        docs_url=None,  # our own /api/docs: Swagger UI from the package, not a CDN (see ui.api_docs)
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.ctx = ctx
    # what dicomlake.web.internal (read-only SQL over Arrow IPC) expects; behind the admin check here
    app.state.lake_query = data.query_readonly
    app.state.service_status = status_provider
    _install_errors(app)
    _install_middleware(app, ctx)
    app.include_router(_auth_router())
    from dicomlake.web import dicomweb, ui

    app.include_router(dicomweb.router)
    app.include_router(ui.router)
    from dicomlake.web import capture  # the worklist capture page (admin)

    app.include_router(capture.router)
    if importlib.util.find_spec("dicomlake.web.internal") is not None:
        from fastapi import Depends

        internal = importlib.import_module("dicomlake.web.internal")
        app.include_router(internal.router, dependencies=[Depends(_admin_only)])
    return app


def _admin_only(request: Request) -> None:
    from dicomlake.web.context import require

    require(request)


# ---- errors -------------------------------------------------------------------------------


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/dicomweb", "/api", "/oauth")) or path.endswith((".json", ".csv", ".xml")):
        return False
    return "text/html" in request.headers.get("accept", "")


def client_host(request: Request) -> str | None:
    """The peer's address (the ASGI scope's client; no proxy headers are trusted)."""
    return request.client.host if request.client else None


def auth_headers(request: Request, exc: AuthError) -> dict[str, str]:
    """WWW-Authenticate on a 401 (Basic too where clients use it: DICOMweb, the API), Retry-After on a 429."""
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dicomlake"'
        if not wants_html(request):
            headers["WWW-Authenticate"] += ', Basic realm="dicomlake"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return headers


def internal_error(exc: BaseException) -> WebError:
    return WebError(500, f"internal error ({type(exc).__name__}); the service log has the details")


def error_response(request: Request, err: WebError) -> Response:
    if wants_html(request):
        from dicomlake.web import ui

        return ui.error_page(request, err)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(WebError)
    async def _web(request: Request, exc: WebError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> Response:
        headers = auth_headers(request, exc)
        request.state.auth_error = exc.message
        return error_response(request, WebError(exc.status, exc.message, headers=headers))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error_response(request, WebError(400, errors[0] if errors else "invalid request", errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"no such page: {request.method} {request.url.path} (see /api/docs for the routes)"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
        return error_response(request, WebError(exc.status_code, msg))

    @app.exception_handler(QueryError)
    async def _query(request: Request, exc: QueryError) -> Response:
        return error_response(request, WebError(400, str(exc)))

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> Response:
        return error_response(request, WebError(503, str(exc)))

    @app.exception_handler(DicomlakeError)
    async def _dl(request: Request, exc: DicomlakeError) -> Response:
        return error_response(request, WebError(400, str(exc)))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> Response:
        LOG.exception("%s %s failed", request.method, request.url.path)
        return error_response(request, internal_error(exc))


# ---- the middleware: authentication, CSRF, headers, access log ----------------------------


def _install_middleware(app: FastAPI, ctx: WebContext) -> None:
    tls = ctx.settings.tls_certificate is not None

    @app.middleware("http")
    async def _gate(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        public = path in PUBLIC or any(path.startswith(p) for p in PUBLIC if p.endswith("/"))
        principal: Principal | None = None
        response: Response
        try:
            principal = await run_in_threadpool(
                ctx.auth.authenticate, request.headers, request.cookies, client_host(request)
            )
            request.state.principal = principal
            if principal is not None and principal.auth == "session" and request.method not in SAFE_METHODS:
                supplied = request.headers.get("x-csrf-token")
                if supplied is None and "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
                    if int(request.headers.get("content-length") or 0) > 1 << 20:
                        raise WebError(413, "form body larger than 1 MiB")
                    body = await request.body()
                    supplied = next(iter(urllib.parse.parse_qs(body.decode("latin-1")).get("csrf_token") or []), None)
                if not csrf_ok(principal, supplied):
                    raise AuthError(
                        403, f"{request.method} {path}: missing or wrong CSRF token (reload the page and retry)"
                    )
            if principal is None and not public:
                raise AuthError(
                    401,
                    "authentication required: log in at /login, or send Authorization: Bearer "
                    "<token> (`dicomlake token NAME` prints one)",
                )
            response = await call_next(request)
        except WebError as exc:
            response = error_response(request, exc)
        except AuthError as exc:
            request.state.principal = principal if exc.status == 403 else None
            request.state.auth_error = exc.message
            if exc.account:
                request.state.attempted_user = exc.account
            headers = auth_headers(request, exc)
            if exc.status == 401 and wants_html(request) and request.method == "GET":
                response = RedirectResponse(
                    f"/login?next={urllib.parse.quote(str(request.url.path) + ('?' + request.url.query if request.url.query else ''))}",
                    status_code=303,
                )
                response.status_code = 303
                request.state.redirected_401 = True
            else:
                response = error_response(request, WebError(exc.status, exc.message, headers=headers))
        except Exception as exc:
            # an unexpected error: answered here (not by Starlette's outermost handler), so the
            # 500 gets the security headers and its access-log event like every other answer
            LOG.exception("%s %s failed", request.method, path)
            request.state.error_detail = f"internal error ({type(exc).__name__}); see the service log"
            response = error_response(request, internal_error(exc))
        _headers(response, tls)
        try:
            await run_in_threadpool(_log_request, ctx, request, response.status_code, time.perf_counter() - t0)
        except Exception:
            LOG.exception("access log write failed for %s %s", request.method, path)
        return response


def _headers(response: Response, tls: bool) -> None:
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Cache-Control", "no-store")
    h.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    if tls:
        h.setdefault("Strict-Transport-Security", "max-age=31536000")


def _log_request(ctx: WebContext, request: Request, status: int, seconds: float) -> None:
    rec: EventRecord | None = getattr(request.state, "audit", None)
    p: Principal | None = getattr(request.state, "principal", None)
    if status in (401, 403, 429) and not getattr(request.state, "login_event", False):
        rec = EventRecord(
            AuditEvent.SECURITY_ALERT,
            action="E",
            event_type="110132",
            detail=getattr(request.state, "auth_error", None) or f"HTTP {status}",
        )
        if getattr(request.state, "redirected_401", False):
            status = 401
    if rec is None:
        rec = EventRecord(AuditEvent.QUERY, action="R" if request.method in SAFE_METHODS else "E")
    if p is not None:
        rec.user = rec.user or p.name
        rec.role = rec.role or p.role.value
        rec.auth = rec.auth or p.auth
    else:
        rec.user = rec.user or getattr(request.state, "attempted_user", None)
    client = request.client
    rec.source = rec.source or (f"{client.host}:{client.port}" if client else None)
    rec.method = rec.method or request.method
    rec.path = rec.path or request.url.path
    rec.query = rec.query if rec.query is not None else (request.url.query or None)
    rec.status = status
    if rec.outcome == 0:
        rec.outcome = outcome_of(status)
    if rec.detail is None and status >= 500:
        rec.detail = getattr(request.state, "error_detail", None)
    if rec.detail is None and seconds > 5:
        rec.detail = f"{seconds:.1f} s"
    ctx.db.record(rec)


# ---- login, logout, OAuth2 token ------------------------------------------------------------


def _auth_router() -> Any:
    import secrets as _secrets

    from fastapi import APIRouter, Form

    r = APIRouter(tags=["authentication"])

    @r.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @r.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        from dicomlake.web import ui

        token = _secrets.token_urlsafe(24)
        resp = ui.render(request, "login.html", {"login_csrf": token, "next": _safe_next(next), "failed": None})
        resp.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=ctx_of(request).settings.tls_certificate is not None,
            path="/login",
        )
        return resp

    @r.post("/login")
    def login(
        request: Request,
        username: str = Form(...),
        password: str = Form(...),
        login_csrf: str = Form(""),
        next: str = Form("/"),
    ) -> Response:
        ctx = ctx_of(request)
        from dicomlake.web import ui

        request.state.login_event = True
        request.state.attempted_user = username
        rec = audit(
            request, AuditEvent.USER_AUTHENTICATION, action="E", event_type="110122", user=username, auth="password"
        )
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not cookie or not _secrets.compare_digest(cookie, login_csrf):
            rec.outcome, rec.detail = 4, "login form CSRF token missing or wrong"
            token = _secrets.token_urlsafe(24)
            resp = ui.render(
                request,
                "login.html",
                {"login_csrf": token, "next": _safe_next(next), "failed": "The login form expired; please try again."},
                status=403,
            )
            resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login")
            return resp
        try:
            p = ctx.auth.login(username, password, client_host(request), "login")
        except AuthError as exc:
            rec.outcome, rec.detail = 4, exc.message
            resp = ui.render(
                request,
                "login.html",
                {
                    "login_csrf": login_csrf,
                    "next": _safe_next(next),
                    "failed": f"Too many wrong passwords from this address; try again in {exc.retry_after} s.",
                },
                status=exc.status,
            )
            resp.headers["Retry-After"] = str(exc.retry_after)
            return resp
        if p is None:
            rec.outcome, rec.detail = 4, "wrong user name or password"
            return ui.render(
                request,
                "login.html",
                {"login_csrf": login_csrf, "next": _safe_next(next), "failed": "Wrong user name or password."},
                status=401,
            )
        rec.role = p.role.value
        sid, _csrf = ctx.auth.create_session(p, request.client.host if request.client else None)
        ok: Response = RedirectResponse(
            _safe_next(next) if p.role is not Role.AUDITOR or next.startswith("/access-log") else "/access-log",
            status_code=303,
        )
        ok.set_cookie(
            SESSION_COOKIE,
            sid,
            httponly=True,
            samesite="strict",
            secure=ctx.settings.tls_certificate is not None,
            max_age=int(ctx.settings.session_hours * 3600),
            path="/",
        )
        ok.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return ok

    @r.post("/logout")
    def logout(request: Request) -> Response:
        ctx = ctx_of(request)
        from dicomlake.web.context import principal as _principal

        p = _principal(request)
        audit(request, AuditEvent.USER_AUTHENTICATION, action="E", event_type="110123")
        if p.session_id:
            ctx.auth.end_session(p.session_id)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @r.post("/oauth/token", summary="OAuth2 token endpoint (password or client_credentials grant)")
    def token(
        request: Request,
        grant_type: str = Form(...),
        username: str | None = Form(None),
        password: str | None = Form(None),
        scope: str | None = Form(None),
    ) -> Response:
        ctx = ctx_of(request)
        request.state.login_event = True
        rec = audit(request, AuditEvent.USER_AUTHENTICATION, action="E", event_type="110122", auth="oauth2")
        p: Principal | None = None
        try:
            if grant_type == "password" and username and password:
                rec.user = username
                p = ctx.auth.login(username, password, client_host(request), "OAuth2 password grant")
            elif grant_type == "client_credentials":
                header = request.headers.get("authorization", "")
                if header.lower().startswith("basic "):
                    try:
                        p = ctx.auth.verify_basic(header[6:].strip(), client_host(request))
                    except AuthError as exc:
                        if exc.status == 429:
                            raise
                        p = None
            elif grant_type not in ("password", "client_credentials"):
                raise _Unsupported
        except AuthError as exc:
            rec.outcome, rec.detail = 4, exc.message
            return JSONResponse(
                {"error": "invalid_grant", "error_description": exc.message},
                status_code=exc.status,
                headers={"Retry-After": str(exc.retry_after), "Cache-Control": "no-store"},
            )
        except _Unsupported:
            rec.outcome = 4
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "use grant_type=password or client_credentials",
                },
                status_code=400,
            )
        if p is None:
            rec.outcome, rec.detail = 4, "invalid_grant"
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "wrong user name or password"}, status_code=400
            )
        rec.user, rec.role = p.name, p.role.value
        tok = ctx.auth.issue_jwt(p.name, days=1)
        return JSONResponse(
            {"access_token": tok, "token_type": "Bearer", "expires_in": 86400, "scope": f"dicomlake/{p.role.value}"},
            headers={"Cache-Control": "no-store"},
        )

    @r.get("/api/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        from dicomlake.web.context import principal as _principal

        p = _principal(request)
        return {"ok": True, "name": p.name, "role": p.role.value, "auth": p.auth}

    return r


class _Unsupported(Exception):
    pass


def _safe_next(target: str) -> str:
    """Only local paths (no open redirects)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# ---- running it ---------------------------------------------------------------------------


def uvicorn_options(settings: WebSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: host, port and TLS from the settings."""
    import ssl

    opts: dict[str, Any] = {"host": settings.bind, "port": settings.http_port, "proxy_headers": False}
    if settings.tls_certificate is not None:
        if settings.tls_private_key is None:
            raise ConfigError("web.tls_certificate is set without web.tls_private_key; set both (PEM files)")
        opts["ssl_certfile"] = str(settings.tls_certificate)
        opts["ssl_keyfile"] = str(settings.tls_private_key)
        if settings.tls_ca_file is not None:
            opts["ssl_ca_certs"] = str(settings.tls_ca_file)
            opts["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    elif settings.bind not in ("127.0.0.1", "::1", "localhost"):
        LOG.warning(
            "web.bind=%s without TLS: passwords and tokens would cross the network in clear; "
            "set web.tls_certificate and web.tls_private_key",
            settings.bind,
        )
    return opts


def spool_ingest(spool: Any, drainer: Any, timeout: float = 120.0) -> IngestFn:
    """STOW-RS through the service's spool: put each file, wait until the drainer has committed it."""

    def ingest(files: list[Path]) -> None:
        import pydicom

        for f in files:
            uid = str(
                pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True).get(
                    "SOPInstanceUID", ""
                )
            )
            spool.put(uid, f.read_bytes(), label="dicomweb")
            f.unlink(missing_ok=True)
        spool.notify()
        if not drainer.wait_idle(timeout):
            raise ConfigError(f"the spool did not drain within {timeout:.0f} s; STOW-RS results are unknown")

    return ingest


def serve_in_thread(
    lake: Path | str,
    settings: WebSettings | None = None,
    *,
    store: Any = None,
    ingest: IngestFn | None = None,
    status_provider: Any = None,
    accounts: str | None = None,
) -> tuple[Any, Any, str]:
    """Start the web app in a background thread (``dicomlake serve``); (server, thread, base URL)."""
    import threading

    import uvicorn

    settings = settings or web_settings()
    app = create_app(lake, settings, store=store, ingest=ingest, status_provider=status_provider, accounts=accounts)
    opts = uvicorn_options(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.run, name="web-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(
                f"the web app could not start on {opts['host']}:{opts['port']} (port in use? set web.http_port)"
            )
        time.sleep(0.02)
    scheme = "https" if "ssl_certfile" in opts else "http"
    return server, thread, f"{scheme}://{opts['host']}:{opts['port']}"


def uvicorn_config(app: Any, settings: WebSettings) -> Any:
    """A loaded ``uvicorn.Config``; with TLS, its context refuses anything below TLS 1.2."""
    import ssl

    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, **uvicorn_options(settings))
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return config


def main(argv: list[str] | None = None) -> None:
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(description="Serve DICOMweb and the web UI over a lake (without the listener).")
    ap.add_argument("lake")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--bind", default=None)
    args = ap.parse_args(argv)
    settings = web_settings(http_port=args.port, bind=args.bind)
    uvicorn.Server(uvicorn_config(create_app(args.lake, settings), settings)).run()


if __name__ == "__main__":
    main()
