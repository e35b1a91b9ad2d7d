"""Helpers for network tests: a `dicomlake serve` subprocess, free ports, dcmtk output parsing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DICOMLAKE = [sys.executable, "-m", "dicomlake.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``dicomlake serve`` as a subprocess (the way users start it)."""

    def __init__(
        self, lake: Path, port: int, *args: str, env: dict[str, str] | None = None, lean: bool = False
    ) -> None:
        self.lake, self.port, self.args = lake, port, list(args)
        self.lean = lean
        self.env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = lake.parent / f"serve-{lake.name}.log"

    def start(self, timeout: float = 30.0) -> Served:
        self.lake.mkdir(parents=True, exist_ok=True)
        info = self.lake / "service.json"
        fh = self.log.open("ab")
        # lean: the same Service without the CLI's imports of every verb (restarts 20 times)
        cmd = [sys.executable, "-m", "dicomlake.ingest.service"] if self.lean else [*DICOMLAKE, "serve", "-q"]
        self.proc = subprocess.Popen(
            [*cmd, "--lake", str(self.lake), "--port", str(self.port), *self.args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dicomlake serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if json.loads(info.read_text()).get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"dicomlake serve did not start:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dicomlake(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    return subprocess.run([*DICOMLAKE, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response(?: \(([^)]*)\))?")


def acknowledged(storescu_output: str) -> tuple[list[str], list[str]]:
    """Files storescu saw acknowledged with Success, and files answered otherwise (``-v`` output)."""
    ok, bad, current = [], [], None
    for line in storescu_output.splitlines():
        m = _SENDING.search(line)
        if m:
            current = m.group(1).strip()
            continue
        m = _RESPONSE.search(line)
        if m and current is not None:
            (ok if (m.group(1) or "").startswith("Success") else bad).append(current)
            current = None
    return ok, bad


def associate_rq(sop_class: str, transfer_syntax: str, calling: str = "RAWSCU") -> bytes:
    """A whole A-ASSOCIATE-RQ PDU (to DICOMLAKE) with one presentation context, id 1, for a
    raw-socket peer: tests that must send bytes no well-behaved SCU would."""

    def item(t: int, v: bytes) -> bytes:
        return struct.pack(">BBH", t, 0, len(v)) + v

    pc = item(0x20, bytes((1, 0, 0, 0)) + item(0x30, sop_class.encode()) + item(0x40, transfer_syntax.encode()))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + b"DICOMLAKE".ljust(16)
        + calling.encode().ljust(16)
        + b"\0" * 32
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + pc
        + user
    )
    return struct.pack(">BBI", 1, 0, len(body)) + body


def storescu(
    port: int, files: list[str], aec: str = "DICOMLAKE", timeout: float = 120
) -> tuple[list[str], list[str], str]:
    """Send ``files`` with dcmtk ``storescu -v`` on one association to 127.0.0.1:``port``:
    the files acknowledged with Success, those answered otherwise, and storescu's output."""
    proc = subprocess.run(
        ["storescu", "-v", "-nh", "-aec", aec, "127.0.0.1", str(port), *files],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    ok, bad = acknowledged(out)
    return ok, bad, out


def make_instances(folder: Path, n: int, template: str = "CT_small.dcm") -> list[Path]:
    """``n`` distinct instances cloned from a pydicom test file (new UIDs), written to ``folder``."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file(template))
    study = generate_uid()
    out = []
    for i in range(n):
        if i % 100 == 0:
            series = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        p = folder / f"i{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def lake_uids(lake: Path) -> list[str]:
    """Every SOP Instance UID in a lake (not served), duplicates kept."""
    import duckdb

    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT SOPInstanceUID FROM instances").fetchall()]
    finally:
        con.close()
