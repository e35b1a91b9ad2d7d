"""``dicomlake serve`` on a PostgreSQL lake: two service processes (own ports, own state
folders) on one real PostgreSQL database. dcmtk ``storescu`` sends to service A; QIDO-RS on
service B, logged in as a user made once with ``dicomlake user add --lake URL``, answers with
those studies, the counts as pydicom reads the files (issue 16, item 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.integration.netpeers import DICOMLAKE, REPO, free_port, storescu
from tests.integration.pg import PostgresCluster, start_or_skip
from tests.support import require_tool

pytestmark = pytest.mark.integration

FILES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "reportsi.dcm", "waveform_ecg.dcm", "rtdose.dcm", "SC_rgb.dcm")
SECRET = "pg-serve-secret-" + "y" * 40
ENV = {**os.environ, "DICOMLAKE_CONFIG": os.devnull, "DICOMLAKE_WEB__SECRET": SECRET}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    pg = start_or_skip()
    try:
        yield pg
    finally:
        pg.stop()


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DICOMLAKE, *args], input=stdin, capture_output=True, text=True, timeout=60, env=ENV, cwd=REPO
    )


def _in_process(*args: str) -> Any:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400", "DICOMLAKE_CONFIG": os.devnull})


class PgService:
    """``dicomlake serve --lake URL --state DIR`` as a subprocess; ``lean``: the same Service
    by ``python -m dicomlake.ingest.service`` (without the CLI's imports: a quicker start)."""

    def __init__(self, url: str, state: Path, *, lean: bool = False) -> None:
        self.url, self.state = url, state
        self.port, self.http_port = free_port(), free_port()
        self.log = state.parent / f"{state.name}.log"
        fh = self.log.open("ab")
        cmd = [sys.executable, "-m", "dicomlake.ingest.service"] if lean else [*DICOMLAKE, "serve", "-q"]
        self.proc = subprocess.Popen(
            [*cmd, "--lake", url, "--state", str(state), "--port", str(self.port), "--http-port", str(self.http_port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=REPO,
        )

    def wait_started(self, timeout: float = 30.0) -> PgService:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                # service.json is written once the listener is up; the web app follows it
                announced = json.loads((self.state / "service.json").read_text()).get("pid") == self.proc.pid
                if announced and httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=5).is_success:
                    return self
            except (OSError, ValueError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def _spooled(state: Path) -> list[Path]:
    return [p for p in (state / "spool").rglob("*") if p.is_file()] if (state / "spool").exists() else []


def test_two_services_on_one_postgres_lake(cluster: PostgresCluster, tmp_path: Path) -> None:
    require_tool("storescu")
    from pydicom.data import get_testdata_file

    url = cluster.create_database()
    files = [str(get_testdata_file(n)) for n in FILES]
    # the oracle: per study, the SOP Instance UIDs as pydicom reads the files
    expected: dict[str, set[str]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        expected.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))

    # both services and `dicomlake user add` start at once on an empty database: the lake's
    # and the accounts' tables are made once, whoever comes first
    a = PgService(url, tmp_path / "state-a")
    b = PgService(url, tmp_path / "state-b", lean=True)
    try:
        # one user, made once against the lake, logs in on either service
        made = _cli("user", "add", "ada", "--role", "admin", "--lake", url, stdin="ada-pass-12345\n")
        assert made.returncode == 0, made.stderr
        a.wait_started()
        b.wait_started()
        assert not Path(REPO, "postgresql:").exists()  # no stray folder named after the URL

        ok, bad, out = storescu(a.port, files)
        assert not bad and len(ok) == len(files), out

        studies: dict[str, int] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = httpx.get(
                f"http://127.0.0.1:{b.http_port}/dicomweb/studies",
                params={"includefield": "00201208"},
                auth=("ada", "ada-pass-12345"),
                headers={"Accept": "application/dicom+json"},
                timeout=10,
            )
            assert r.status_code in (200, 204), r.text
            body = r.json() if r.status_code == 200 else []
            studies = {s["0020000D"]["Value"][0]: int(s["00201208"]["Value"][0]) for s in body}
            if studies == {k: len(v) for k, v in expected.items()}:
                break
            time.sleep(0.2)
        assert studies == {k: len(v) for k, v in expected.items()}
        # a wrong password is refused on B as well (the accounts are shared, not open)
        r = httpx.get(f"http://127.0.0.1:{b.http_port}/dicomweb/studies", auth=("ada", "nope"), timeout=10)
        assert r.status_code == 401
        # both in the one access log, in the lake (read straight from PostgreSQL)
        import psycopg

        with psycopg.connect(url) as con:
            logged = con.execute(
                'SELECT "user", path, status FROM dicomlake_access.events WHERE path = %s', ["/dicomweb/studies"]
            ).fetchall()
        assert ("ada", "/dicomweb/studies", 200) in logged and ("ada", "/dicomweb/studies", 401) in logged
    finally:
        codes = (a.stop(), b.stop())
    assert codes == (0, 0), (a.log.read_text()[-2000:], b.log.read_text()[-2000:])
    assert _spooled(a.state) == [] and _spooled(b.state) == []
    assert not (a.state / "service.json").exists() and not (b.state / "service.json").exists()


def test_serve_on_postgres_without_a_usable_state_folder_fails_in_one_line(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "state-file"
    not_a_folder.write_text("x")
    res = _in_process("serve", "--lake", cluster.url(), "--state", str(not_a_folder), "--no-web", "--port", "0")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--state" in lines[0] and "Traceback" not in res.output, res.output


def test_serve_refuses_a_parquet_lake_in_one_line(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dicomlake.store.open import lake_kind

    lake = tmp_path / "pq"
    (lake / "instances").mkdir(parents=True)
    pq.write_table(pa.table({"SOPInstanceUID": ["1.2.3"]}), lake / "instances" / "part-0.parquet")
    assert lake_kind(lake) == "parquet"
    res = _in_process("serve", "--lake", str(lake), "--no-web", "--port", "0")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Parquet" in lines[0] and "Traceback" not in res.output, res.output
    assert sorted(p.name for p in lake.iterdir()) == ["instances"]  # nothing created in it


def test_accounts_on_postgres_answer_as_the_sqlite_file(cluster: PostgresCluster, tmp_path: Path) -> None:
    """The same calls on PostgresAccessDB (two opened at once on an empty database) and on the
    SQLite AccessDB give the same answers; the rows are where PostgreSQL says they are."""
    import threading

    import psycopg

    from dicomlake.store.accounts import AccessDB, AuditEvent, EventRecord, PostgresAccessDB, open_accounts

    url = cluster.create_database()
    opened: list[AccessDB] = []
    threads = [threading.Thread(target=lambda: opened.append(open_accounts(url))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(opened) == 2 and all(isinstance(d, PostgresAccessDB) for d in opened)

    def exercise(db: AccessDB) -> list[object]:
        db.put_user("bo", "analyst", "h1")
        db.put_user("bo", "admin", "h2")
        db.add_token("t1", "bo", "sha-1", "api", None)
        db.add_session("s1", "bo", "csrf", "2999-01-01", "127.0.0.1")
        db.extend_session("s1", "3000-01-01")
        db.remember_uids([("p1", "1.2.3", "study"), ("p1", "9.9.9", "study")])
        ids = [
            db.record(EventRecord(AuditEvent.QUERY, user="bo", path="/dicomweb/studies", status=200)),
            db.record(EventRecord(AuditEvent.SECURITY_ALERT, user="eve", path="/login", status=401)),
        ]
        out: list[object] = [
            db.user("bo"),
            db.users()[0]["role"],
            db.api_token("sha-1"),
            db.token_revoked("t1"),
            db.revoke_tokens("bo"),
            db.token_revoked("t1"),
            db.session("s1"),
            db.original_uid("p1"),
            ids[1] > ids[0],
        ]
        for where in ({"user": "bo"}, {"path": "/dicomweb*"}, {"status": "401"}):
            rows, total = db.events(where=where)
            out.append((total, [(r["user"], r["path"], r["status"], r["event"]) for r in rows]))
        db.end_session("s1")
        db.disable_user("bo")
        out += [db.session("s1"), db.user("bo")]
        return out

    sqlite = AccessDB(tmp_path / "access.db")
    try:
        assert exercise(opened[0]) == exercise(sqlite)
    finally:
        sqlite.close()
        for d in opened:
            d.close()
    with psycopg.connect(url) as con:
        assert con.execute("SELECT name, role, disabled FROM dicomlake_access.users").fetchall() == [("bo", "admin", 1)]
        assert con.execute("SELECT count(*) FROM dicomlake_access.events").fetchone() == (2,)
        # beside the lake's tables, not among them
        assert con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'users' "
            "AND table_schema <> 'dicomlake_access'"
        ).fetchone() == (0,)
