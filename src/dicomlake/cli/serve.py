"""`dicomlake serve`: the DICOM listener a PACS pushes to, writing into the lake."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer

from dicomlake.cli.common import LAKE_OPTION, handle_errors, lake_path


def serve(
    lake: Path | None = LAKE_OPTION,
    port: int | None = typer.Option(None, "--port", "-p", help="TCP port to listen on (default 11112)."),
    ae_title: str | None = typer.Option(None, "-aet", "--ae-title", help="Our AE title (default DICOMLAKE)."),
    bind: str | None = typer.Option(None, "--bind", help="Address to bind; 0.0.0.0 for all (default 127.0.0.1)."),
    allow_aet: list[str] = typer.Option([], "--allow-aet", help="Accept only these calling AE titles (repeatable)."),
    allow_host: list[str] = typer.Option(
        [], "--allow-host", help="Accept only these hosts/CIDR networks (repeatable)."
    ),
    modality: list[str] = typer.Option([], "--modality", "-m", help="Store only these modalities (repeatable)."),
    sop_class: list[str] = typer.Option([], "--sop-class", help="Accept only these SOP Class UIDs (repeatable)."),
    keep_files: bool | None = typer.Option(
        None, "--keep-files/--metadata-only", help="Keep received files under <lake>/files (default: metadata only)."
    ),
    max_associations: int | None = typer.Option(
        None, "--max-associations", help="Concurrent associations (default 16)."
    ),
    max_pdu: int | None = typer.Option(None, "--max-pdu", help="Largest PDU received, bytes; 0 = unlimited."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: enables DICOM TLS."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA bundle that client certificates chain to."),
    require_client_cert: bool = typer.Option(
        False, "--require-client-cert", help="Refuse TLS clients without a certificate."
    ),
    no_fsync: bool = typer.Option(False, "--no-fsync", help="Do not fsync before acknowledging (measurements only)."),
    http_port: int | None = typer.Option(
        None, "--http-port", help="DICOMweb and web UI port on web.bind (default 8000, 127.0.0.1)."
    ),
    no_web: bool = typer.Option(False, "--no-web", help="Only the DICOM listener: no DICOMweb, no web UI."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No status line."),
    status_every: float = typer.Option(
        60.0,
        "--status-every",
        help="Output not a terminal (a log file): a status line when the counts changed, at most every N seconds.",
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log every association."),
    state: Path | None = typer.Option(
        None,
        "--state",
        help="PostgreSQL lake only: this service's local folder for its spool, service.json and token "
        "(default ./dicomlake-state; one per service process).",
    ),
) -> None:
    """Receive instances over DICOM (C-STORE, C-ECHO) into the lake; runs until Ctrl-C.

    Each instance is acknowledged only after it is fsynced into <lake>/spool; a drainer puts
    headers into the lake within a second. While it runs, `dicomlake query/sql/export` on the
    same lake are answered by this process.

    Example: dicomlake serve --lake ./dicomlake-data --port 11112 -aet DICOMLAKE --allow-aet PACS

    Then, from the PACS or dcmtk: storescu -aec DICOMLAKE 127.0.0.1 11112 study/*.dcm

    On a PostgreSQL lake, run several services (each its own ports and --state folder); all
    write into the one database and accept the same users (dicomlake user add … --lake URL):

    dicomlake serve --lake postgresql://dicomlake@db/lake --state ./state-a --port 11112 --http-port 8000
    """
    from dicomlake.config import get_settings
    from dicomlake.ingest.service import Service

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = get_settings()
    overrides: dict[str, Any] = {
        "port": port,
        "ae_title": ae_title,
        "bind": bind,
        "allowed_calling_aets": allow_aet or None,
        "allowed_hosts": allow_host or None,
        "modalities": modality or None,
        "sop_classes": sop_class or None,
        "keep_files": keep_files,
        "max_associations": max_associations,
        "max_pdu": max_pdu,
        "fsync": False if no_fsync else None,
    }
    data = settings.dimse.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ValueError("--tls-cert and --tls-key go together (certificate and its private key)")
        data["tls"] = {
            **data["tls"],
            "certificate": str(tls_cert),
            "private_key": str(tls_key),
            "ca_file": str(tls_ca) if tls_ca else None,
            "require_client_certificate": require_client_cert,
        }
    dimse = type(settings.dimse).model_validate(data)
    folder = lake_path(lake)
    from dicomlake.errors import ConfigError
    from dicomlake.store.open import lake_kind
    from dicomlake.store.postgres import normalise_url, redact

    kind = lake_kind(folder)  # before anything is created: no stray './postgresql:/…' folder
    target: str | Path = folder
    shown = str(folder)
    if kind == "parquet":
        raise ConfigError(
            f"dicomlake serve --lake {folder}: a Parquet lake is read-only; serve a DuckDB folder "
            f"(--lake ./dicomlake-data) or a postgresql:// URL, and copy it with `dicomlake import`"
        )
    if kind == "postgres":
        target = normalise_url(str(folder))
        shown = redact(target)
        state = state if state is not None else Path("dicomlake-state")
        if state.exists() and not state.is_dir():
            raise ConfigError(f"--state {state}: is a file; give a folder for this service's spool and token")
    elif state is not None:
        raise ConfigError(
            f"--state {state}: only for a PostgreSQL lake; a DuckDB lake keeps the service's state in {folder}"
        )
    web = None
    if not no_web:
        from dicomlake.web.settings import web_settings

        web = web_settings(http_port=http_port)
    svc = Service(target, settings, dimse=dimse, web=not no_web, web_settings=web, state=state).catch_signals().start()
    assert svc.address is not None
    typer.secho(
        f"dicomlake serve: {dimse.ae_title} on {svc.address[0]}:{svc.address[1]}"
        f"{' (TLS)' if dimse.tls.enabled else ''} → {shown}{f' (state {state})' if kind == 'postgres' else ''}  "
        f"[{'keep files' if dimse.keep_files else 'metadata only'}; control {svc.control_url}]"
        + (
            f"\n  DICOMweb and web UI: {svc.web_url} (create a user: dicomlake user add NAME --role admin"
            f"{f' --lake {shown}' if kind == 'postgres' else ''})"
            if svc.web_url
            else ""
        ),
        err=True,
        bold=True,
    )

    status = StatusLine(live=sys.stderr.isatty(), every=status_every)

    def tick(st: dict[str, Any]) -> None:
        if not quiet:
            status.show(status_text(st))

    svc.serve_forever(tick)
    if not quiet:
        status.close(status_text(svc.status()))


def status_text(st: dict[str, Any]) -> str:
    """The service's counts in one line."""
    li, dr = st.get("listener", {}), st["drain"]
    return (
        f"associations {li.get('associations', 0):,} · received {li.get('stored', 0):,} · "
        f"in lake {dr['stored']:,} · spool {st['spool_pending']:,} · failed {li.get('failed', 0):,} · "
        f"refused {li.get('rejected', 0):,} · filtered {li.get('filtered', 0):,}"
        + (f" · drain error: {dr['last_error'][:60]}" if dr["last_error"] and dr["failures"] else "")
    )


class StatusLine:
    """The status on stderr: rewritten in place on a terminal; in a log, a line when it changed, at most every N s."""

    def __init__(self, *, live: bool, every: float = 60.0, clock: Any = time.monotonic) -> None:
        self.live, self.every, self.clock = live, every, clock
        self.last_text: str | None = None
        self.last_at = -float("inf")

    def show(self, text: str) -> None:
        if self.live:
            typer.echo(f"\r{text}\x1b[K", err=True, nl=False)
            self.last_text = text
        elif text != self.last_text and self.clock() - self.last_at >= self.every:
            typer.echo(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {text}", err=True)
            self.last_text, self.last_at = text, self.clock()

    def close(self, text: str) -> None:
        if self.live:
            typer.echo("", err=True)
        elif text != self.last_text:
            typer.echo(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {text}", err=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(handle_errors(serve))
