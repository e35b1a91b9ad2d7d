"""``dicomlake serve``: the listener, the spool drainer and the lake's one connection in one process.

The service owns the lake: a single DuckDB connection that the drainer writes through
(short transactions) and that readers use through their own cursors, so what has been
committed is visible at once and no reader waits for the writer. Other processes reach
it through a small HTTP endpoint on 127.0.0.1 (:mod:`dicomlake.web.internal`), announced
in ``<lake>/service.json`` with a token in ``<lake>/service.token`` (mode 0600); both
are removed on a clean exit, and a ``service.json`` whose pid is dead is ignored.

On a PostgreSQL lake (``lake`` a ``postgresql://`` URL) the spool, ``service.json``, the token
and kept files live in a local *state* folder instead, one per process: several services (each
its own ports and state folder) drain into the one database, each batch a transaction of its
own, and users, tokens and the access log live in the database
(:class:`dicomlake.store.accounts.PostgresAccessDB`), so each service accepts the same logins.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.config import Settings, get_settings
from dicomlake.errors import ConfigError, DicomlakeError
from dicomlake.ingest.listener import StoreSCP
from dicomlake.ingest.settings import DimseSettings
from dicomlake.ingest.spool import Drainer, DrainStats, Spool, StoreHolder
from dicomlake.store.postgres import redact
from dicomlake.store.remote import SERVICE_FILE, TOKEN_FILE, live_service

LOG = logging.getLogger("dicomlake.service")


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """Listener + spool + drainer + control endpoint over one lake.

    Parameters
    ----------
    lake
        The lake folder.
    settings
        Effective settings; ``settings.dimse`` configures the listener.
    dimse
        Overrides of ``settings.dimse`` (the CLI flags).
    control
        Start the internal HTTP endpoint (and announce the service in ``service.json``).
    listen
        Start the C-STORE listener (``dicomlake pull`` by C-GET or DICOMweb needs only the spool).
    state
        A PostgreSQL lake only (required there): this process's local folder for the spool,
        ``service.json``, the token and kept files.
    """

    def __init__(
        self,
        lake: str | os.PathLike[str],
        settings: Settings | None = None,
        *,
        dimse: DimseSettings | None = None,
        control: bool = True,
        listen: bool = True,
        web: bool = False,
        web_settings: Any = None,
        state: str | os.PathLike[str] | None = None,
    ) -> None:
        from dicomlake.store.postgres import is_postgres_url, normalise_url

        self.settings = settings or get_settings()
        self.dimse = dimse or self.settings.dimse
        self.pg_url: str | None = normalise_url(os.fspath(lake)) if is_postgres_url(os.fspath(lake)) else None
        if self.pg_url is not None:
            if state is None:
                raise ConfigError("a service on a PostgreSQL lake needs a local state folder (--state DIR)")
            self.state = Path(state)
        elif state is not None:
            raise ConfigError("--state is for a PostgreSQL lake; a DuckDB lake keeps its state in its own folder")
        else:
            self.state = Path(lake)
        self.lake = self.state if self.pg_url is None else Path(lake)
        self._reader: Any = None
        self.control = control
        self.listen = listen
        self.holder: StoreHolder | None = None
        self.spool: Spool | None = None
        self.drainer: Drainer | None = None
        self.scp: StoreSCP | None = None
        self.stats = DrainStats()
        self.control_url: str | None = None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._old_signals: dict[int, Any] = {}
        self.started_at = dt.datetime.now(dt.UTC)
        self.address: tuple[str, int] | None = None
        self.web = web
        self.web_settings = web_settings
        self.web_url: str | None = None
        self._web: Any = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> Service:
        """Open the lake, replay the spool, start the drainer, the listener and the endpoint."""
        import duckdb

        from dicomlake.ingest.pipeline import _worker_config
        from dicomlake.lakeschema import instance_columns
        from dicomlake.store.duckdb import DuckDBStore

        other = live_service(self.state)
        if other is not None:
            raise ConfigError(
                f"{self.state} is already served by pid {other.pid} ({other.ae_title} on port {other.port}); "
                f"stop it first or choose another {'--lake' if self.pg_url is None else '--state'}"
            )
        from dicomlake.store.duckdb import make_private_dir

        cols_file = str(self.settings.columns_file) if self.settings.columns_file else None
        columns = instance_columns(cols_file)
        if self.pg_url is not None:  # connect first: a database that cannot be reached leaves no folder
            from dicomlake.store.postgres import PostgresStore

            url = self.pg_url
            self.holder = StoreHolder(lambda: PostgresStore(url, columns=columns))
            # the web's reads on a connection of their own (never inside a drain transaction)
            self._reader = PostgresStore(url, columns=columns)
        try:
            try:
                make_private_dir(self.state)  # 0700: the lake's (or state's) files are its owner's only
            except OSError as exc:
                raise ConfigError(f"cannot use {self.state} as the service's folder: {exc.strerror or exc}") from exc
            if self.pg_url is not None and not os.access(self.state, os.W_OK | os.X_OK):
                raise ConfigError(f"the state folder {self.state} is not writable by this user")
        except ConfigError:
            self.stop()  # the connections opened above
            raise
        try:
            if self.holder is None:
                self.holder = StoreHolder(lambda: DuckDBStore(self.lake, columns=columns))
        except duckdb.Error as exc:
            hint = ""
            if "WAL" in str(exc):
                hint = (
                    " Its write-ahead log is damaged inside a committed transaction (a torn last write is "
                    "skipped by itself): keep a copy of the lake folder, then restore lake.duckdb from a "
                    "backup, or move lake.duckdb.wal aside to open the lake as of its last checkpoint "
                    "(instances drained since then must be sent again)."
                )
            raise ConfigError(
                f"cannot open the lake's database {self.lake / 'lake.duckdb'}: {exc}.{hint} Instances "
                f"acknowledged but not yet in the lake stay in {self.lake / 'spool'} and are drained once it opens."
            ) from exc
        d = self.dimse
        self.spool = Spool(
            self.state, fsync=d.fsync, min_free_bytes=d.min_free_bytes, max_instances=d.spool_max_instances
        )
        left = self.spool.count()
        if left:
            LOG.info("replaying %d instance(s) left in the spool", left)
        self.drainer = Drainer(
            self.spool,
            self.holder,
            _worker_config(self.settings, self.state, "c-store"),
            keep_files=d.keep_files,
            workers=d.drain_workers,
            batch=d.drain_batch,
            interval=d.drain_interval_s,
            stats=self.stats,
        )
        if self.web:
            from dicomlake.web.settings import web_settings

            if (self.web_settings or web_settings()).stow_keep_files:
                self.drainer.keep_sources = frozenset({"dicomweb"})  # STOW-RS files stay for WADO-RS
        self.drainer.start()
        try:
            if self.listen:
                self.scp = StoreSCP(self.spool, d)
                self.address = self.scp.start()
            if self.control:
                self._start_http()
                self._announce()
            if self.web:
                # DICOMweb, the UI and the access log on web.bind:web.http_port, sharing our connection
                from dicomlake.web.app import serve_in_thread, spool_ingest

                self._web, _, self.web_url = serve_in_thread(
                    self.state,
                    self.web_settings,
                    store=self.holder if self._reader is None else self._reader,
                    accounts=self.pg_url,
                    ingest=spool_ingest(self.spool, self.drainer),
                    status_provider=self.status,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop taking associations, drain the spool into the lake, close everything."""
        self._stop.set()
        if self._web is not None:
            self._web.should_exit = True
        if self.scp is not None:
            self.scp.stop()
        if self.drainer is not None:
            self.drainer.stop()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(10)
        if self.holder is not None:
            try:
                self.holder.close()
            except Exception:
                pass
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:
                pass
        if self.control:
            for name in (SERVICE_FILE, TOKEN_FILE):
                try:
                    p = self.state / name
                    if name != SERVICE_FILE or json.loads(p.read_text()).get("pid") == os.getpid():
                        p.unlink()
                except (OSError, ValueError):
                    pass

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- reading while serving ------------------------------------------------------------

    def query(
        self, sql: str, params: Mapping[str, object] | list[object] | None = None, max_rows: int | None = None
    ) -> pa.Table:
        """Run one read-only statement in the user-SQL sandbox (dicomlake.store.sandbox): its own
        cursor in a READ ONLY transaction on a DuckDB instance without file access."""
        assert self.holder is not None
        store = self._reader if self._reader is not None else self.holder.store  # PostgreSQL: not the writer's
        return store.query_readonly(sql, params, max_rows=max_rows)  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "lake": str(self.lake) if self.pg_url is None else redact(self.pg_url),
            "ae_title": self.dimse.ae_title,
            "port": self.address[1] if self.address else None,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "spool_pending": self.spool.count() if self.spool else 0,
            "drain": self.stats.as_dict(),
        }
        if self.scp is not None:
            out["listener"] = self.scp.stats.as_dict()
        return out

    # ---- control endpoint ---------------------------------------------------------------

    def _start_http(self) -> None:
        import uvicorn
        from fastapi import FastAPI

        from dicomlake.web import internal

        app = FastAPI(title="dicomlake service (internal)", docs_url=None, redoc_url=None, openapi_url=None)
        app.state.service_token = secrets.token_urlsafe(32)
        app.state.lake_query = self.query
        app.state.service_status = self.status
        app.include_router(internal.router)
        self._token = app.state.service_token
        port = self.dimse.control_port or _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        setattr(server, "install_signal_handlers", lambda: None)  # noqa: B010 - older uvicorn; not main thread
        self._http = server
        self._http_thread = threading.Thread(target=server.run, name="control-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the control endpoint could not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        self.control_url = f"http://127.0.0.1:{port}"

    def _announce(self) -> None:
        _write_private(self.state / TOKEN_FILE, self._token + "\n")
        info = {
            "pid": os.getpid(),
            "control_url": self.control_url,
            "ae_title": self.dimse.ae_title,
            "host": self.address[0] if self.address else None,
            "port": self.address[1] if self.address else 0,
            "started_at": self.started_at.isoformat(timespec="seconds"),
        }
        _write_private(self.state / SERVICE_FILE, json.dumps(info, indent=1) + "\n", 0o644)

    # ---- running in the foreground -----------------------------------------------------

    def catch_signals(self) -> Service:
        """From now on SIGINT/SIGTERM stop the service cleanly, also while :meth:`start` runs.

        Call before ``start()``: a supervisor's SIGTERM during start-up then leads to the same
        drain and clean-up as one while serving (without it, the default action ended the
        process half-started, leaving ``service.json`` and the token behind).
        """

        def _signal(signum: int, _frame: object) -> None:
            LOG.info("signal %d: stopping", signum)
            self._stop.set()

        if not self._old_signals and threading.current_thread() is threading.main_thread():
            self._old_signals = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def serve_forever(self, on_tick: Callable[[dict[str, Any]], None] | None = None, tick: float = 1.0) -> None:
        """Run until SIGINT/SIGTERM; then stop cleanly (the spool is drained first)."""
        self.catch_signals()
        try:
            while not self._stop.wait(tick):
                if on_tick is not None:
                    on_tick(self.status())
        finally:
            for s, h in self._old_signals.items():
                signal.signal(s, h)
            self._old_signals = {}
            self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m dicomlake.ingest.service --lake DIR --port N``: the service without the CLI's imports.

    The same :class:`Service` as ``dicomlake serve`` (settings from the environment), for
    supervisors and tests that restart it often.
    """
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--ae-title", default=None)
    ap.add_argument("--state", default=None, help="PostgreSQL lake: this process's local folder (spool, token)")
    ap.add_argument("--http-port", type=int, default=None, help="also serve DICOMweb and the web UI on this port")
    args = ap.parse_args(argv)
    settings = get_settings()
    d = settings.dimse.model_dump()
    d.update({k: v for k, v in {"port": args.port, "ae_title": args.ae_title}.items() if v is not None})
    try:
        web = None
        if args.http_port is not None:
            from dicomlake.web.settings import web_settings

            web = web_settings(http_port=args.http_port)
        svc = Service(
            args.lake,
            settings,
            dimse=DimseSettings.model_validate(d),
            state=args.state,
            web=web is not None,
            web_settings=web,
        ).catch_signals()
        svc.start()
    except DicomlakeError as exc:  # as `dicomlake serve` says it (STYLE.md §10): the message, no traceback
        print(f"dicomlake serve: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    svc.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
