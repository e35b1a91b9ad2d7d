"""Receive throughput over C-STORE on loopback: ``dicomlake serve`` against storescp and Orthanc.

On the same cached corpus (the first ``BENCH_RECEIVE_N`` instances, default 1,000, of the
``BENCH_N``/``BENCH_SEED`` benchmark corpus; ~0.6 MB each) and in one run, for 1, 4 and 16
concurrent ``storescu`` senders (``TCP_NODELAY=1``, the files split evenly between them):

- ``dicomlake serve`` (metadata only, fsync before every acknowledgement — the default):
  time until every header is *in the lake* (``count(*)`` through the service) and time
  until the last acknowledgement;
- the same with ``dimse.fsync=false`` (what the protocol costs without the disk's flushes);
- dcmtk ``storescp -od DIR`` (files to disk, no fsync) — the yardstick;
- Orthanc (Debian package, SQLite index, own network namespace).

Figures: instances/s, MB/s, receiver CPU per instance (psutil, process and children),
and ratios to storescp. Run alone with ``python -m bench.bench_receive``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.corpus import REPO_ROOT, ensure_corpus
from bench.report import BenchResult, fmt, table

NAME = "receive"
SENDERS = (1, 4, 16)


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    import psutil

    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                total += ct.user + ct.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


def _send(files: Sequence[str], port: int, aec: str, senders: int, wrap: Callable[[list[str]], list[str]]) -> float:
    """Run ``senders`` storescu processes over slices of ``files``; seconds until all exit."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    slices = [list(files[i::senders]) for i in range(senders)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            wrap(["storescu", "-nh", "-aec", aec, "127.0.0.1", str(port), *chunk]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for chunk in slices
        if chunk
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    bad = [e.decode(errors="replace")[-300:] for p, e in zip(procs, errors, strict=True) if p.returncode]
    if bad:
        raise RuntimeError(f"storescu failed: {bad[0]}")
    return elapsed


def _ours(files: Sequence[str], senders: int, *, fsync: bool) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-recv-"))
    port = _free_port()
    env = {
        **os.environ,
        "DICOMLAKE_CONFIG": os.devnull,
        "DICOMLAKE_DIMSE__FSYNC": "true" if fsync else "false",
        "DICOMLAKE_DIMSE__MAX_ASSOCIATIONS": "32",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomlake.ingest.service", "--lake", str(work / "lake"), "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        info_path = work / "lake" / "service.json"
        deadline = time.monotonic() + 60
        while not info_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dicomlake service did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        from dicomlake.store.remote import RemoteStore, live_service

        time.sleep(1.0)  # let the drainer's extraction process start
        info = live_service(work / "lake")
        assert info is not None
        store = RemoteStore(work / "lake", info)
        cpu0 = _cpu(proc.pid)
        t0 = time.perf_counter()
        acked = _send(files, port, "DICOMLAKE", senders, lambda a: a)
        while True:
            n = store.query("SELECT count(*) AS n FROM instances").column("n")[0].as_py()
            if n >= len(files):
                break
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError(f"only {n} of {len(files)} instances reached the lake")
            time.sleep(0.05)
        in_lake = time.perf_counter() - t0
        cpu = _cpu(proc.pid) - cpu0
        store.close()
        return {"seconds": in_lake, "acked_seconds": acked, "cpu": cpu}
    finally:
        _stop(proc, 60)
        shutil.rmtree(work, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate a receiver; kill it if it has not ended after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def storescp(prefix: str = "bench-storescp-") -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """dcmtk ``storescp -od`` (files to a temporary folder, no fsync, ``TCP_NODELAY=1``) on a
    free loopback port, AE title STORESCP: yields the process and the port; stopped after."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    port = _free_port()
    proc = subprocess.Popen(
        ["storescp", "-od", str(work), "-aet", "STORESCP", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        yield proc, port
    finally:
        _stop(proc, 30)
        shutil.rmtree(work, ignore_errors=True)


def _storescp(files: Sequence[str], senders: int) -> dict[str, float]:
    with storescp() as (proc, port):
        cpu0 = _cpu(proc.pid)
        secs = _send(files, port, "STORESCP", senders, lambda a: a)
        return {"seconds": secs, "acked_seconds": secs, "cpu": _cpu(proc.pid) - cpu0}


def _orthanc(files: Sequence[str], senders: int) -> dict[str, float]:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.integration.orthanc import Orthanc

    work = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
    # dcmtk inside Orthanc leaves Nagle on unless its environment says otherwise (PERF-BASELINE.md)
    saved = os.environ.get("TCP_NODELAY")
    os.environ["TCP_NODELAY"] = "1"
    try:
        with Orthanc(
            work, aet="ORTHANC", extra_config={"DicomAssociationCloseDelay": 0, "MaximumPatientCount": 0}
        ) as o:
            cpu0 = _cpu(o.pid)
            secs = _send(files, o.dicom_port, "ORTHANC", senders, o.command)
            return {"seconds": secs, "acked_seconds": secs, "cpu": _cpu(o.pid) - cpu0}
    finally:
        if saved is None:
            os.environ.pop("TCP_NODELAY", None)
        else:
            os.environ["TCP_NODELAY"] = saved
        shutil.rmtree(work, ignore_errors=True)


def main() -> BenchResult:
    res = BenchResult(NAME)
    n = _env_int("BENCH_RECEIVE_N", 1000)
    corpus, _stats = ensure_corpus(_env_int("BENCH_N", 20000), _env_int("BENCH_SEED", 0))
    files = sorted(str(p) for p in corpus.rglob("*.dcm"))[:n]
    size = sum(os.path.getsize(f) for f in files)
    mb = size / 1e6
    print(f"{len(files):,} instances, {mb:,.0f} MB ({size / len(files) / 1024:,.0f} KiB each)")
    for f in files:  # warm the page cache (the senders read every byte)
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    receivers: list[tuple[str, Callable[[Sequence[str], int], dict[str, float]]]] = [
        ("dicomlake serve (headers in the lake, fsync)", lambda fs, k: _ours(fs, k, fsync=True)),
        ("dicomlake serve (headers in the lake, no fsync)", lambda fs, k: _ours(fs, k, fsync=False)),
        ("storescp -od (files, no fsync)", _storescp),
        ("Orthanc (SQLite index)", _orthanc),
    ]
    raw: dict[str, Any] = {"instances": len(files), "bytes": size}
    rows = []
    for senders in SENDERS:
        measured: dict[str, dict[str, float]] = {}
        for label, fn in receivers:
            try:
                r = fn(files, senders)
            except Exception as exc:
                print(f"{label}, {senders} sender(s): FAILED {exc}")
                res.error = f"{label}: {exc}"
                continue
            measured[label] = r
            print(
                f"  {senders:2d} sender(s) {label}: {len(files) / r['seconds']:,.0f} inst/s "
                f"(acknowledged {len(files) / r['acked_seconds']:,.0f}/s), CPU {r['cpu']:.1f} s",
                flush=True,
            )
        raw[f"senders_{senders}"] = measured
        base = measured.get("storescp -od (files, no fsync)")
        for label, r in measured.items():
            rate = len(files) / r["seconds"]
            ratio = rate / (len(files) / base["seconds"]) if base else None
            cpu_ms = 1000 * r["cpu"] / len(files)
            rows.append(
                [
                    str(senders),
                    label,
                    fmt(rate, "inst/s"),
                    fmt(len(files) / r["acked_seconds"], "inst/s"),
                    fmt(mb / r["seconds"], "MB/s"),
                    fmt(cpu_ms, "ms"),
                    f"{ratio:.2f}×" if ratio is not None else "n/a",
                ]
            )
            res.add(
                f"{label}, {senders} sender(s)",
                rate,
                "inst/s",
                peer="storescp -od",
                note=f"{ratio:.2f}× storescp; {cpu_ms:.2f} ms CPU/inst" if ratio is not None else "",
            )
    print(
        table(rows, ["senders", "receiver", "in lake / stored", "acknowledged", "MB/s", "CPU/inst", "rate vs storescp"])
    )
    out = REPO_ROOT / "bench" / "out" / "receive.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1))
    res.raw.update(raw)
    return res


if __name__ == "__main__":
    main()
