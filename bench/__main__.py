"""``python -m bench`` (``make bench``): run every benchmark in order, then a summary.

Each module in :data:`BENCHES` has a ``main()`` that runs its rounds, prints its own table
and returns a :class:`bench.report.BenchResult`. A bench that raises is reported as failed
and the others still run. The summary of all figures is printed last and written to
``bench/out/results.json``.

Environment: ``BENCH_N`` (corpus size, default 20000), ``BENCH_SEED``, ``BENCH_ROUNDS``;
``BENCH_ONLY=ingest,deid`` runs a subset (the others are listed as not run).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback

from bench.report import BenchResult, fmt, table

BENCHES = [
    "bench.ingest_bench",
    "bench.bench_query",
    "bench.bench_upsert",
    "bench.bench_growth",
    "bench.bench_pg_writers",
    "bench.bench_qido",
    "bench.bench_sc",
    "bench.bench_deid",
    "bench.bench_scale",
    "bench.bench_cluster",
    "bench.bench_spark_listing",
    "bench.bench_receive",
    "bench.bench_load",
]
"""Modules whose ``main()`` is called, in this order."""

OUT = "bench/out/results.json"


def _short(module: str) -> str:
    return module.rsplit(".", 1)[-1].removesuffix("_bench").removeprefix("bench_")


def main() -> int:
    from bench.corpus import REPO_ROOT

    only = {s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()}
    results: list[BenchResult] = []
    started = time.time()
    for module in BENCHES:
        name = _short(module)
        bar = "=" * 100
        if only and name not in only and module not in only:
            print(f"{bar}\n{module}: not run (BENCH_ONLY={','.join(sorted(only))})")
            results.append(BenchResult(name, error="not run (BENCH_ONLY)"))
            continue
        print(f"{bar}\n{module}\n{bar}", flush=True)
        t0 = time.perf_counter()
        try:
            outcome = importlib.import_module(module).main()
            if not isinstance(outcome, BenchResult):
                outcome = BenchResult(
                    name,
                    raw={"returned": repr(outcome)},
                    error=f"main() returned {type(outcome).__name__}, not a BenchResult",
                )
        except Exception as exc:
            traceback.print_exc()
            outcome = BenchResult(name, error=f"{type(exc).__name__}: {exc}")
        outcome.raw.setdefault("seconds", round(time.perf_counter() - t0, 1))
        results.append(outcome)
        print(flush=True)

    rows = []
    for res in results:
        if res.error and not res.figures:
            rows.append([res.name, "FAILED" if "not run" not in res.error else "not run", "", res.error])
        for f in res.figures:
            rows.append([res.name, f.what, fmt(f.value, f.unit), " ".join(x for x in (f.peer, f.note) if x)])
        if res.error and res.figures:
            rows.append([res.name, "ERROR", "", res.error])
    print("=" * 100)
    print(f"summary ({platform.node()}, {os.cpu_count()} CPUs, {time.time() - started:.0f} s)")
    print(table(rows, ["bench", "figure", "value", "peer / note"]))

    out = REPO_ROOT / OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")},
        "benches": [r.to_json() for r in results],
    }
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nresults: {OUT}")
    failed = [r.name for r in results if r.error and "not run" not in r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
