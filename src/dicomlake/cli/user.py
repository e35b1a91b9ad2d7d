"""`dicomlake user` and `dicomlake token`: web users, roles and bearer tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dicomlake.cli.common import LAKE_OPTION, fail, handle_errors, lake_path

user_app = typer.Typer(
    help="Users of the web service (DICOMweb and the UI): add, list, disable.\n\n"
    "Example: echo 's3cret-pass' | dicomlake user add alice --role analyst",
    no_args_is_help=True,
)


def _auth(lake: Path | None):  # type: ignore[no-untyped-def]
    from dicomlake.store.accounts import open_accounts
    from dicomlake.web.auth import Auth
    from dicomlake.web.settings import secret_bytes, web_settings

    settings = web_settings()
    folder = lake_path(lake)
    db = open_accounts(folder, settings.access_db)  # a PostgreSQL lake keeps its users in the lake
    secret = secret_bytes(settings) if settings.secret is not None else b""
    return Auth(db, settings, secret), db, settings


def _alert(db, name: str, detail: str) -> None:  # type: ignore[no-untyped-def]
    import getpass

    from dicomlake.store.accounts import AuditEvent, EventRecord

    db.record(
        EventRecord(
            AuditEvent.SECURITY_ALERT,
            action="U",
            event_type="110137",
            user=getpass.getuser(),
            auth="cli",
            source="cli",
            method="CLI",
            path=f"user {name}",
            detail=detail,
        )
    )


def add(
    name: str = typer.Argument(..., help="User name (letters, digits, - _ . @)."),
    role: str = typer.Option(..., "--role", "-r", help="admin, analyst or auditor."),
    lake: Path | None = LAKE_OPTION,
) -> None:
    """Add a user, or replace the role and password of an existing one; the password is read from stdin.

    Example: printf '%s\\n' "$PASSWORD" | dicomlake user add alice --role analyst
    """
    from dicomlake.web.auth import Role

    try:
        role_v = Role(role)
    except ValueError:
        fail(f"--role {role!r}: choose admin, analyst or auditor", 2)
        return
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            fail("the two passwords differ", 2)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    auth, db, _ = _auth(lake)
    try:
        auth.add_user(name, role_v, password)
        _alert(db, name, f"user {name} set to role {role_v.value}")
    finally:
        db.close()
    typer.echo(f"user {name}: role {role_v.value}")


def list_users(lake: Path | None = LAKE_OPTION) -> None:
    """List users and roles."""
    auth, db, _ = _auth(lake)
    try:
        for u in auth.users():
            typer.echo(f"{u['name']}\t{u['role']}\t{'disabled' if u['disabled'] else 'active'}\t{u['created_at']}")
    finally:
        db.close()


def disable(name: str = typer.Argument(...), lake: Path | None = LAKE_OPTION) -> None:
    """Disable a user and revoke every token they hold."""
    auth, db, _ = _auth(lake)
    try:
        if auth.user(name) is None:
            fail(f"no user {name!r}", 2)
        db.disable_user(name)
        n = auth.revoke_tokens(name)
        _alert(db, name, f"user {name} disabled, {n} token(s) revoked")
    finally:
        db.close()
    typer.echo(f"user {name}: disabled, {n} token(s) revoked")


def token(
    name: str = typer.Argument(..., help="The user the token speaks for."),
    days: float | None = typer.Option(None, "--days", help="Lifetime in days (default: web.token_days)."),
    opaque: bool = typer.Option(False, "--opaque", help="An opaque API token (dlk_…) instead of a JWT."),
    lake: Path | None = LAKE_OPTION,
) -> None:
    """Print a bearer token for NAME (a signed JWT, IHE IUA style) for scripts.

    Example: curl -H "Authorization: Bearer $(dicomlake token alice)" http://127.0.0.1:8000/dicomweb/studies
    """
    auth, db, settings = _auth(lake)
    try:
        if not opaque and settings.secret is None:
            fail(
                "no web secret: set DICOMLAKE_WEB__SECRET (or [web] secret in dicomlake.toml) to the value "
                "`dicomlake serve` uses, so the token it signs is accepted; or pass --opaque",
                2,
            )
        try:
            tok = auth.issue_api_token(name, days=days) if opaque else auth.issue_jwt(name, days=days)
        except KeyError as exc:
            fail(str(exc.args[0]), 2)
            return
    finally:
        db.close()
    typer.echo(tok)


def register(app: typer.Typer) -> None:
    user_app.command("add")(handle_errors(add))
    user_app.command("list")(handle_errors(list_users))
    user_app.command("disable")(handle_errors(disable))
    app.add_typer(user_app, name="user")
    app.command("token")(handle_errors(token))
