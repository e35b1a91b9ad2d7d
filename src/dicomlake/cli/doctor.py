"""`dicomlake doctor`: check the installation, lake folder, disk, ports, peers and configuration."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from dicomlake.cli.common import LAKE_OPTION

MIN_FREE_BYTES = 1024**3
"""Less free space than this on the lake's disk is a warning. Default: 1 GiB"""


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's table."""

    name: str
    status: str
    """ok, warn (works, but something is missing or risky) or fail (essential and broken)."""
    found: str
    fix: str = ""


PEERS = (
    # (program, what needs it, how to install on Debian/Ubuntu)
    ("storescu", "sending test data to the listener; the test suite", "apt-get install dcmtk"),
    ("dcmdump", "inspecting files; the test suite", "apt-get install dcmtk"),
    ("dciodvfy", "validating the DICOM objects dicomlake writes", "apt-get install dicom3tools"),
    ("tesseract", "OCR of burned-in text (sc analyse, deid --pixels)", "apt-get install tesseract-ocr"),
    ("chromium", "the web UI tests", "apt-get install chromium"),
    ("java", "the Spark engine (ingest --engine spark)", "apt-get install default-jre-headless"),
    ("psql", "PostgreSQL lakes (the server extra)", "apt-get install postgresql-client"),
)

EXTRAS = (
    # (import name, extra, what it enables)
    ("fastapi", "web", "dicomlake serve's DICOMweb and web UI"),
    ("uvicorn", "web", "dicomlake serve's HTTP server"),
    ("highdicom", "write", "dicomlake wrap/derive"),
    ("xlsxwriter", "xlsx", "XLSX reports and --format xlsx"),
    ("psycopg", "server", "PostgreSQL lakes"),
    ("pyspark", "spark", "ingest --engine spark"),
)

CORE = ("pydicom", "pynetdicom", "duckdb", "pyarrow", "polars", "typer", "pydantic", "pydantic-settings")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> list[Check]:
    v = sys.version_info
    ok = v >= (3, 11)
    out = [
        Check(
            "python",
            "ok" if ok else "fail",
            f"{v.major}.{v.minor}.{v.micro} ({sys.executable})",
            "" if ok else "install Python 3.11 or newer and reinstall dicomlake in a new venv",
        )
    ]
    from dicomlake import __version__

    out.append(Check("dicomlake", "ok", __version__))
    missing = [d for d in CORE if _version(d) is None]
    out.append(
        Check(
            "core packages",
            "fail" if missing else "ok",
            ", ".join(f"{d} {_version(d)}" for d in CORE if d not in missing)
            if not missing
            else "missing: " + ", ".join(missing),
            "pip install --force-reinstall dicomlake" if missing else "",
        )
    )
    import importlib.util

    absent = [(mod, extra, what) for mod, extra, what in EXTRAS if importlib.util.find_spec(mod) is None]
    if absent:
        extras = sorted({e for _, e, _ in absent})
        out.append(
            Check(
                "optional extras",
                "warn",
                "not installed: " + ", ".join(sorted({m for m, _, _ in absent})),
                f"only needed for {'; '.join(w for _, _, w in absent)}: pip install 'dicomlake[{','.join(extras)}]'",
            )
        )
    else:
        out.append(Check("optional extras", "ok", "all installed"))
    return out


def check_lake_modes(lake: Path) -> Check:
    """Warn when the lake folder, its database or its spool/quarantine are open to other users."""
    import stat

    wide = []
    for p in (lake, lake / "lake.duckdb", lake / "lake.duckdb.wal", lake / "spool", lake / "quarantine"):
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            wide.append(f"{p.name if p != lake else str(lake)} {mode:04o}")
    if not wide:
        return Check("lake permissions", "ok", "owner only (folder 0700, files 0600)")
    return Check(
        "lake permissions",
        "warn",
        "open to other users: " + ", ".join(wide),
        f"the lake holds patient data: chmod -R go-rwx {lake}",
    )


def check_postgres_lake(url: str) -> list[Check]:
    """A PostgreSQL lake: can we connect, and which schema version does it hold."""
    from dicomlake.store.postgres import redact

    shown = redact(url)
    try:
        import psycopg
    except ImportError:
        return [Check("lake", "fail", f"{shown}: psycopg is not installed", "pip install 'dicomlake[server]'")]
    try:
        with psycopg.connect(url, connect_timeout=5) as con:
            row = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'instances' "
                "AND table_schema = current_schema()"
            ).fetchone()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Check("lake", "fail", f"{shown}: cannot connect ({first})", "check the URL, the server and the role")]
    state = "holds a lake" if row and row[0] else "empty database (the first ingest creates the lake)"
    return [Check("lake", "ok", f"PostgreSQL {shown}: {state}")]


def check_lake(lake: Path) -> list[Check]:
    out: list[Check] = []
    from dicomlake.store.postgres import is_postgres_url, normalise_url

    if is_postgres_url(str(lake)):  # a URL passed through Path has lost one '/' of '//'
        return check_postgres_lake(normalise_url(str(lake)))
    lake = lake.expanduser()
    probe = lake if lake.exists() else next((p for p in lake.absolute().parents if p.exists()), Path("/"))
    if lake.exists() and not lake.is_dir():
        out.append(Check("lake folder", "fail", f"{lake} is a file", "choose a folder with --lake or DICOMLAKE_LAKE"))
        return out
    writable = os.access(probe, os.W_OK | os.X_OK)
    state = "exists" if lake.exists() else f"will be created (in {probe})"
    db = lake / "lake.duckdb"
    if db.exists():
        state += f", lake.duckdb {db.stat().st_size / 1e6:,.1f} MB"
        if not os.access(db, os.R_OK | os.W_OK):
            writable = False
    out.append(
        Check(
            "lake folder",
            "ok" if writable else "fail",
            f"{lake.absolute()} {state}",
            "" if writable else f"give the service user write access: chown -R $USER {probe}",
        )
    )
    if lake.is_dir():
        out.append(check_lake_modes(lake))
    free = shutil.disk_usage(probe).free
    out.append(
        Check(
            "free disk",
            "ok" if free >= MIN_FREE_BYTES else "warn",
            f"{free / 1024**3:,.1f} GiB at {probe}",
            ""
            if free >= MIN_FREE_BYTES
            else "free space or move the lake: the listener answers A700 (out of resources) below dimse.min_free_bytes",
        )
    )
    return out


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (we try to bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except PermissionError:
            return False
        except OSError:
            return True
    return False


def check_ports(dimse_bind: str, dimse_port: int, http_bind: str, http_port: int) -> list[Check]:
    out = []
    for label, host, port, setting in (
        ("DICOM port", dimse_bind, dimse_port, "dimse.port"),
        ("HTTP port", http_bind, http_port, "web.http_port"),
    ):
        if port < 1024 and os.geteuid() != 0:
            out.append(
                Check(
                    label,
                    "warn",
                    f"{host}:{port} is below 1024 and we are not root",
                    f"choose a port ≥ 1024 ({setting}) or grant CAP_NET_BIND_SERVICE",
                )
            )
        elif port_in_use(host, port):
            out.append(
                Check(
                    label,
                    "warn",
                    f"{host}:{port} in use",
                    f"stop what listens there (ss -ltnp 'sport = :{port}') or a running "
                    f"`dicomlake serve`, or set {setting}",
                )
            )
        else:
            out.append(Check(label, "ok", f"{host}:{port} free"))
    return out


def check_peers() -> list[Check]:
    out = []
    for prog, why, install in PEERS:
        path = shutil.which(prog) or (f"/usr/sbin/{prog}" if os.path.exists(f"/usr/sbin/{prog}") else None)
        if prog == "chromium" and path is None:
            path = shutil.which("chromium-browser") or shutil.which("google-chrome")
        out.append(
            Check(
                f"peer {prog}",
                "ok" if path else "warn",
                path or "not on PATH",
                "" if path else f"only for {why}: {install}",
            )
        )
    return out


def doctor(
    lake: Path | None = LAKE_OPTION,
    no_ports: bool = typer.Option(False, "--no-ports", help="Skip the port checks."),
) -> None:
    """Check the installation and say what to fix: Python and packages, the lake folder and its
    permissions, free disk, the DICOM and HTTP ports, peer programs and the configuration.

    Exit status: 0 when everything essential works (warnings are fine), 1 when something
    essential is broken.

    Example: dicomlake doctor --lake /var/lib/dicomlake
    """
    from rich.console import Console
    from rich.table import Table

    checks: list[Check] = []
    checks += check_python()
    settings = None
    try:
        from dicomlake.config import get_settings, reset_settings_cache

        reset_settings_cache()
        settings = get_settings()
        checks.append(
            Check(
                "configuration",
                "ok",
                os.environ.get("DICOMLAKE_CONFIG", "dicomlake.toml")
                + (
                    " (found)"
                    if Path(os.environ.get("DICOMLAKE_CONFIG", "dicomlake.toml")).is_file()
                    else " (absent: defaults)"
                ),
            )
        )
    except Exception as exc:
        text = " ".join(str(exc).split())
        checks.append(
            Check(
                "configuration",
                "fail",
                text[:400],
                "fix the keys named above in dicomlake.toml or the DICOMLAKE_* variables; "
                "docs/reference/config.md lists every key",
            )
        )
    web_bind, web_port = "127.0.0.1", 8000
    try:
        from dicomlake.web.settings import web_settings

        ws = web_settings()
        web_bind, web_port = ws.bind, ws.http_port
    except Exception as exc:
        checks.append(
            Check(
                "web configuration",
                "fail",
                " ".join(str(exc).split())[:300],
                "fix [web] in dicomlake.toml or DICOMLAKE_WEB__* variables",
            )
        )
    folder = Path(lake) if lake is not None else (settings.lake if settings is not None else Path("dicomlake-data"))
    checks += check_lake(folder)
    if not no_ports:
        dimse_bind = settings.dimse.bind if settings is not None else "127.0.0.1"
        dimse_port = settings.dimse.port if settings is not None else 11112
        checks += check_ports(dimse_bind, dimse_port, web_bind, web_port)
    checks += check_peers()

    table = Table(title="dicomlake doctor")
    for col in ("check", "status", "found", "what to do"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.found, c.fix)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    console.print(
        f"{len(checks) - len(failed) - len(warned)} ok, {len(warned)} warning(s), {len(failed)} failed"
        + (": " + ", ".join(c.name for c in failed) if failed else "")
    )
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
