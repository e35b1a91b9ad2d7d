"""QIDO-RS over 1,000,000 synthetic instances: latency (p50, p95) for filters on attributes that
are not QIDO's required keys, and throughput with 8 concurrent clients.

The lake is the one :mod:`bench.bench_query` builds (typed columns plus element rows for a
non-typed, a nested and a private attribute), with a DICOM JSON row per instance so QIDO-RS
answers come from the lake as in production. The web app runs as its own process
(``python -m dicomlake.web.app``, uvicorn on 127.0.0.1) and is asked over HTTP with a bearer
JWT, so every figure includes authentication, the access-log write and JSON encoding.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.report import BenchResult, fmt, table

N = int(os.environ.get("BENCH_QIDO_N", os.environ.get("BENCH_QUERY_N", "1000000")))
ROUNDS = int(os.environ.get("BENCH_QIDO_ROUNDS", "15"))
CLIENTS = int(os.environ.get("BENCH_QIDO_CLIENTS", "8"))
SECONDS = float(os.environ.get("BENCH_QIDO_SECONDS", "10"))
SECRET = "bench-only-secret-" + "q" * 32

QUERIES = [
    ("studies, typed non-required (StationName)", "/dicomweb/studies?StationName=MAMMO2"),
    ("instances, non-typed attribute (elements)", "/dicomweb/instances?DistanceSourceToEntrance=465"),
    (
        "instances, nested sequence attribute",
        "/dicomweb/instances?CTDIPhantomTypeCodeSequence.CodeMeaning=*Head*&limit=50",
    ),
    ("series, private element by creator", '/dicomweb/series?(0019,"ACME_LAKE_TEST",10)=990'),
    ("studies, date range + non-required", "/dicomweb/studies?StudyDate=20230101-20230331&StationName=CT_A"),
]
THROUGHPUT_QUERY = "/dicomweb/studies?StationName=MAMMO2"


def add_json(lake: Path) -> float:
    """One DICOM JSON document per instance, made from its typed columns."""
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect(str(lake / "lake.duckdb"))
    con.execute(
        """
        INSERT INTO dicom_json
        SELECT SOPInstanceUID,
          '{"00080016":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.1.2"]},'
          || '"00080018":{"vr":"UI","Value":["' || SOPInstanceUID || '"]},'
          || '"00080020":{"vr":"DA","Value":["' || strftime(StudyDate, '%Y%m%d') || '"]},'
          || '"00080060":{"vr":"CS","Value":["' || Modality || '"]},'
          || '"00081010":{"vr":"SH","Value":["' || StationName || '"]},'
          || '"00100020":{"vr":"LO","Value":["' || PatientID || '"]},'
          || '"0020000D":{"vr":"UI","Value":["' || StudyInstanceUID || '"]},'
          || '"0020000E":{"vr":"UI","Value":["' || SeriesInstanceUID || '"]}}'
        FROM instances
        """
    )
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> BenchResult:
    import httpx

    from bench.bench_query import build
    from dicomlake.web.audit_log import AccessDB
    from dicomlake.web.auth import Auth
    from dicomlake.web.settings import WebSettings

    res = BenchResult("qido")
    with tempfile.TemporaryDirectory(prefix="dicomlake-qido-") as tmp:
        lake = Path(tmp)
        secs = build(lake, N) + add_json(lake)
        print(f"built {N:,} instances with DICOM JSON in {secs:.1f} s")
        db = AccessDB(lake / "access.db")
        auth = Auth(db, WebSettings(secret=SECRET), SECRET.encode())
        auth.add_user("bench", "admin", "bench-password")
        token = auth.issue_jwt("bench")
        db.close()
        port = _port()
        env = dict(os.environ, DICOMLAKE_WEB__SECRET=SECRET)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomlake.web.app", str(lake), "--port", str(port), "--bind", "127.0.0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"web app did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
                    )
                time.sleep(0.2)
            rows = []
            with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
                for label, url in QUERIES:
                    c.get(url).raise_for_status()  # warm-up
                    times, n = [], 0
                    for _ in range(ROUNDS):
                        t0 = time.perf_counter()
                        r = c.get(url)
                        times.append(time.perf_counter() - t0)
                        r.raise_for_status()
                        n = len(r.json())
                    times.sort()
                    p50 = statistics.median(times)
                    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                    rows.append([label, url.split("?", 1)[1], f"{n:,}", fmt(p50 * 1000, "ms"), fmt(p95 * 1000, "ms")])
                    res.add(f"{label}: p50", p50 * 1000, "ms", note=f"{N:,} instances, {n} results/page")
                    res.add(f"{label}: p95", p95 * 1000, "ms")
            print(table(rows, ["QIDO-RS query", "parameters", "results", "p50", "p95"]))
            done: list[float] = []
            failed = [0]
            stop = time.monotonic() + SECONDS

            def client() -> None:
                with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
                    while time.monotonic() < stop:
                        t0 = time.perf_counter()
                        r = c.get(THROUGHPUT_QUERY)
                        if r.status_code == 200:
                            done.append(time.perf_counter() - t0)
                        else:
                            failed[0] += 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rate = len(done) / wall
            done.sort()
            print(
                f"{CLIENTS} concurrent clients, {wall:.1f} s: {len(done):,} responses ({rate:.1f}/s), "
                f"p50 {statistics.median(done) * 1000:.0f} ms, {failed[0]} failed"
            )
            res.add(f"throughput, {CLIENTS} concurrent clients", rate, "req/s", note=THROUGHPUT_QUERY.split("?")[1])
            res.add(f"latency under {CLIENTS} clients: p50", statistics.median(done) * 1000, "ms")
            res.raw = {
                "instances": N,
                "rounds": ROUNDS,
                "clients": CLIENTS,
                "seconds": SECONDS,
                "failed": failed[0],
                "cpus": os.cpu_count(),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return res


if __name__ == "__main__":
    main()
