"""A temporary PostgreSQL cluster on 127.0.0.1 for the tests, started with Debian's initdb/pg_ctl.

The cluster lives in a fresh folder under the system temp dir, listens on loopback only on a
free port, trusts loopback connections (it holds nothing but test data) and is stopped and
deleted on teardown. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (created by Debian's ``postgresql`` package).

    with PostgresCluster() as pg:
        url = pg.create_database("lake1")   # postgresql://postgres@127.0.0.1:PORT/lake1
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support import missing

INSTALL_HINT = "install PostgreSQL: apt-get install -y postgresql (make install does it)"


def pg_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One throw-away PostgreSQL cluster; ``url(db)`` gives a libpq URL for a database."""

    def __init__(self, *, user: str = "postgres") -> None:
        bindir = pg_bin_dir()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL binaries not found under /usr/lib/postgresql/*/bin; {INSTALL_HINT}")
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.run_user = user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.base = Path(tempfile.mkdtemp(prefix="dicomlake-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self.started = False

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", self.run_user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresCluster:
        if self.as_root:
            pw = pwd.getpwnam(self.run_user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
            "-c shared_buffers=64MB -c max_wal_size=512MB"
        )
        res = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if res.returncode != 0:
            log = (self.base / "server.log").read_text(errors="replace") if (self.base / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({res.returncode}): {res.stderr}\n{log[-2000:]}")
        self.started = True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode == 0:
                break
            time.sleep(0.2)
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"lake_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_or_skip() -> PostgresCluster:
    """A started cluster; a failure in CI (never a quiet skip), a skip elsewhere."""

    if pg_bin_dir() is None:
        msg = f"PostgreSQL is not installed; {INSTALL_HINT}"
        missing(msg)
    return PostgresCluster().start()


def running_cluster() -> Iterator[PostgresCluster]:
    """A module fixture's body: a started cluster (:func:`start_or_skip`), stopped after the module."""
    cluster = start_or_skip()
    yield cluster
    cluster.stop()
