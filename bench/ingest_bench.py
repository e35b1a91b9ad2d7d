"""Ingest throughput and memory of ``dicomlake ingest`` against ``dcmdump -q -M``.

On one cached corpus (``BENCH_N`` instances, default 20,000; ``BENCH_SEED``, default 0)
and in one run, alternating so that drift hits both sides alike, ``BENCH_ROUNDS``
rounds (default 3) of:

1. ``python -m dicomlake.cli.main ingest CORPUS --lake FRESH --workers 2`` — everything
   written: instances, elements, DICOM JSON, dose events — with the RSS of the ingest
   process and of each of its children sampled every 0.2 s (psutil);
2. ``dcmdump -q -M`` over all files as 2 parallel processes (``xargs -P2`` style: one
   ``xargs`` per half of the file list), output to /dev/null — the yardstick;
3. the same as one process.

The page cache is warmed first (the header region of every file is read once). Figures
are medians; the ratio is our time over dcmdump's (lower is faster), as in
PERF-BASELINE.md.

Run alone with ``python -m bench.ingest_bench``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.corpus import REPO_ROOT, ensure_corpus
from bench.report import BenchResult, figures_table, fmt, median, table

NAME = "ingest"
OUT_DIR = REPO_ROOT / "bench" / "out"
SAMPLE_SECONDS = 0.2
MIB = 1024 * 1024


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not an integer; unset it or give e.g. {default}.") from None


# ---------------------------------------------------------------------------------------------
# Running and sampling
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run of a command."""

    label: str
    seconds: float
    cpu_seconds: float
    returncode: int
    n: int
    samples: list[tuple[float, int, str, int, int, int]] = field(default_factory=list)
    """(seconds since start, pid, role, RSS, USS, PSS bytes) for every process at every tick.

    RSS counts every page a process maps, the shared ones too (libraries, and the pages a
    worker shares with the fork server it came from); USS counts the pages only it holds —
    what one more worker costs — and PSS shares each shared page among its users."""
    report: dict[str, object] = field(default_factory=dict)
    log: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _role(proc: object, root_pid: int) -> str:
    import psutil

    assert isinstance(proc, psutil.Process)
    if proc.pid == root_pid:
        return "main"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "worker"
    for helper in ("resource_tracker", "forkserver", "semaphore_tracker"):
        if helper in cmd:
            # a worker forked from the fork server carries the server's command line
            try:
                parent = proc.parent()
                if parent is not None and parent.pid != root_pid and "forkserver" in " ".join(parent.cmdline()):
                    return "worker"
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            return helper
    return "worker"


def _sample(pid: int, start: float, out: list[tuple[float, int, str, int, int, int]], stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    roles: dict[int, str] = {}
    while not stop.is_set():
        now = time.perf_counter() - start
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                if proc.pid not in roles:
                    roles[proc.pid] = _role(proc, pid)
                if roles[proc.pid] == "worker":  # smaps: slower to read, so for workers only
                    mem = proc.memory_full_info()
                    rss, uss, pss = mem.rss, mem.uss, mem.pss
                else:
                    rss = uss = pss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            out.append((now, proc.pid, roles[proc.pid], rss, uss, pss))
        stop.wait(SAMPLE_SECONDS)


def run_ours(corpus: Path, n: int, round_no: int) -> Run:
    """One ``dicomlake ingest`` into a fresh lake, with memory sampled; the lake is removed after."""
    lake = Path(tempfile.mkdtemp(prefix="dicomlake-bench-lake-"))
    cmd = [
        sys.executable,
        "-m",
        "dicomlake.cli.main",
        "ingest",
        str(corpus),
        "--lake",
        str(lake),
        "--workers",
        "2",
    ]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    log_path = OUT_DIR / f"ingest-ours-round{round_no}.log"
    samples: list[tuple[float, int, str, int, int, int]] = []
    stop = threading.Event()
    cpu0 = _children_cpu()
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "COLUMNS": "120"},
        )
        sampler = threading.Thread(target=_sample, args=(proc.pid, start, samples, stop), daemon=True)
        sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
    cpu = _children_cpu() - cpu0
    report: dict[str, object] = {}
    for path in sorted((lake / "reports").glob("*.json")) if (lake / "reports").is_dir() else []:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    report["lake_bytes"] = sum(p.stat().st_size for p in lake.rglob("*") if p.is_file())
    shutil.rmtree(lake, ignore_errors=True)
    text = log_path.read_text(errors="replace")
    return Run("ours", seconds, cpu, code, n, samples, report, text[-3000:])


def run_dcmdump(corpus: Path, files: list[str], procs: int) -> Run:
    """``dcmdump -q -M`` over all files, split over ``procs`` parallel xargs, output discarded."""
    parts = [files[i::procs] for i in range(procs)]
    cpu0 = _children_cpu()
    start = time.perf_counter()
    running = []
    for _part in parts:
        p = subprocess.Popen(
            ["xargs", "-0", "dcmdump", "-q", "-M"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=corpus,
        )
        running.append(p)
    errors = []
    feeders = []
    for p, part in zip(running, parts, strict=True):
        data = "\0".join(part).encode()

        def feed(p: subprocess.Popen = p, data: bytes = data) -> None:
            assert p.stdin
            p.stdin.write(data)
            p.stdin.close()

        t = threading.Thread(target=feed)
        t.start()
        feeders.append(t)
    for t in feeders:
        t.join()
    code = 0
    for p in running:
        assert p.stderr
        err = p.stderr.read().decode(errors="replace")
        code = max(code, p.wait())
        if err.strip():
            errors.append(err.strip()[-500:])
    seconds = time.perf_counter() - start
    return Run(
        f"dcmdump x{procs}",
        seconds,
        _children_cpu() - cpu0,
        code,
        len(files),
        log="\n".join(errors),
    )


def warm_page_cache(corpus: Path, files: list[str], head: int = 256 * 1024) -> float:
    """Read the header region of every file once (pixel values are holes and never read)."""
    start = time.perf_counter()
    for name in files:
        with open(corpus / name, "rb", buffering=0) as fp:
            fp.read(head)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Memory: per-worker peaks and the curve
# ---------------------------------------------------------------------------------------------


def memory_profile(run: Run) -> dict[str, object]:
    """Peak RSS (and USS, PSS) per process and RSS at 25/50/75/100 % of the run, in MiB."""
    peaks: dict[int, tuple[str, int]] = {}
    unique: dict[int, tuple[int, int]] = {}  # pid -> peak USS, peak PSS
    # a process that is exiting reports no resident pages: those samples say nothing
    samples = [s for s in run.samples if s[3] >= MIB]
    for _, pid, role, rss, uss, pss in samples:
        if rss > peaks.get(pid, (role, 0))[1]:
            peaks[pid] = (role, rss)
        u, p = unique.get(pid, (0, 0))
        unique[pid] = (max(u, uss), max(p, pss))
    workers = sorted(pid for pid, (role, _) in peaks.items() if role == "worker")
    mains = [pid for pid, (role, _) in peaks.items() if role == "main"]
    by_tick: dict[float, dict[int, int]] = {}
    for t, pid, _, rss, _uss, _pss in samples:
        by_tick.setdefault(t, {})[pid] = rss
    ticks = sorted(by_tick)
    active = [t for t in ticks if any(p in by_tick[t] for p in workers)]

    def at(limit: float) -> dict[str, object]:
        chosen = max((t for t in ticks if t <= limit + 1e-9), default=None)
        if chosen is None:
            return {"t": None}
        tick = by_tick[chosen]
        return {
            "t": round(chosen, 2),
            "main_mib": round(tick[mains[0]] / MIB, 1) if mains and mains[0] in tick else None,
            "worker_mib": [round(tick[p] / MIB, 1) for p in workers if p in tick],
            "total_mib": round(sum(tick.values()) / MIB, 1),
        }

    fractions = (0.25, 0.5, 0.75, 1.0)
    curve = [{"fraction": f, **at(f * run.seconds)} for f in fractions]
    # the same points over the span in which workers ran (they start after the imports)
    worker_curve = []
    if active:
        span = active[-1] - active[0]
        worker_curve = [{"fraction": f, **at(active[0] + f * span)} for f in fractions]
    total_peak = max((sum(v.values()) for v in by_tick.values()), default=0) / MIB
    return {
        "samples": len(ticks),
        "workers_seen": len(workers),
        "worker_peak_mib": [round(peaks[p][1] / MIB, 1) for p in workers],
        "worker_peak_uss_mib": [round(unique[p][0] / MIB, 1) for p in workers],
        "worker_peak_pss_mib": [round(unique[p][1] / MIB, 1) for p in workers],
        "main_peak_mib": round(peaks[mains[0]][1] / MIB, 1) if mains else None,
        "total_peak_mib": round(total_peak, 1),
        "other_processes": sorted({role for role, _ in peaks.values()} - {"main", "worker"}),
        "curve": curve,
        "worker_curve": worker_curve,
    }


def _flatness(profile: dict[str, object]) -> tuple[float | None, str]:
    """Growth of the largest worker RSS from 25 % to 100 % of the workers' lifetime, in %."""
    curve = [c for c in profile["worker_curve"] if c.get("worker_mib")]  # type: ignore[union-attr]
    if len(curve) < 2:
        return None, "too few samples"
    first, last = max(curve[0]["worker_mib"]), max(curve[-1]["worker_mib"])
    growth = 100.0 * (last - first) / first if first else None
    if growth is None:
        return None, "n/a"
    return growth, "flat" if abs(growth) < 10 else ("growing" if growth > 0 else "shrinking")


# ---------------------------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------------------------


def main() -> BenchResult:
    """Run the rounds, print a table, return the figures."""
    n = _env_int("BENCH_N", 20000)
    seed = _env_int("BENCH_SEED", 0)
    rounds = _env_int("BENCH_ROUNDS", 3)
    result = BenchResult(NAME)
    t0 = time.perf_counter()
    corpus, stats = ensure_corpus(n, seed)
    made = time.perf_counter() - t0
    files = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*.dcm"))
    apparent = int(stats.get("bytes", 0))
    print(
        f"corpus: {len(files):,} files, {stats.get('studies')} studies, "
        f"{apparent / 1e9:.2f} GB apparent ({apparent / max(len(files), 1) / 1e3:,.0f} KB mean), "
        f"generated in {stats.get('seconds')} s{' (cached)' if made < 1 else ''}: {corpus}"
    )
    load_before = os.getloadavg()
    warm = warm_page_cache(corpus, files)
    print(f"page cache warmed in {warm:.1f} s")

    ours: list[Run] = []
    dd2: list[Run] = []
    dd1: list[Run] = []
    for r in range(1, rounds + 1):
        run = run_ours(corpus, len(files), r)
        ours.append(run)
        print(
            f"round {r}: ours {run.seconds:6.1f} s  {run.rate:8,.0f} inst/s  exit {run.returncode}"
            f"  instances in lake {run.report.get('instances', '?')}",
            flush=True,
        )
        if run.returncode not in (0, 1):
            print(f"  ingest failed (exit {run.returncode}); last output:\n{run.log[-1500:]}")
        for procs, bucket in ((2, dd2), (1, dd1)):
            d = run_dcmdump(corpus, files, procs)
            bucket.append(d)
            print(
                f"round {r}: dcmdump x{procs} {d.seconds:6.1f} s  {d.rate:8,.0f} inst/s  exit {d.returncode}",
                flush=True,
            )
            if d.returncode:
                print(f"  dcmdump reported: {d.log[-500:]}")

    load_after = os.getloadavg()
    print(
        f"load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after {', '.join(f'{v:.2f}' for v in load_after)} on {os.cpu_count()} CPUs"
    )
    ok = [r for r in ours if r.returncode in (0, 1) and r.report.get("instances") == len(files)]
    if len(ok) < len(ours):
        result.error = (
            f"{len(ours) - len(ok)} of {len(ours)} ingest runs failed or stored fewer "
            f"than {len(files)} instances; see bench/out/ingest-ours-round*.log"
        )
    ours_s = median([r.seconds for r in ok])
    d2_s = median([r.seconds for r in dd2])
    d1_s = median([r.seconds for r in dd1])
    nfiles = len(files)

    def rate(seconds: float | None) -> float | None:
        return nfiles / seconds if seconds else None

    gen_s = float(stats.get("seconds", 0) or 0)  # type: ignore[arg-type]
    if gen_s:
        result.add(
            "corpus generation, 1 process",
            nfiles / gen_s,
            "files/s",
            note=f"{gen_s:.1f} s for {nfiles:,} files",
        )
    result.add("dicomlake ingest --workers 2", rate(ours_s), "inst/s")
    result.add("dcmdump -q -M, 2 processes", rate(d2_s), "inst/s")
    result.add("dcmdump -q -M, 1 process", rate(d1_s), "inst/s")
    if ours_s and d2_s:
        result.add("ours / dcmdump x2 (time, lower is faster)", ours_s / d2_s, "×", "dcmdump -q -M x2")
    if ours_s and d1_s:
        result.add("ours / dcmdump x1 (time, lower is faster)", ours_s / d1_s, "×", "dcmdump -q -M x1")
    cpu_ours = median([r.cpu_seconds for r in ok])
    cpu_d1 = median([r.cpu_seconds for r in dd1])
    if cpu_ours and cpu_d1:
        result.add(
            "ours / dcmdump CPU time (less sensitive to a noisy host)",
            cpu_ours / cpu_d1,
            "×",
            "dcmdump -q -M x1",
        )
    if cpu_ours is not None:
        result.add(
            "ours CPU per 1,000 instances",
            1000 * cpu_ours / nfiles,
            "s",
            note="user+sys, all processes",
        )
    if cpu_d1 is not None:
        result.add("dcmdump CPU per 1,000 instances", 1000 * cpu_d1 / nfiles, "s")

    profiles = [memory_profile(r) for r in ok]
    if profiles:
        best = profiles[len(profiles) // 2]
        worker_peak = max((max(p["worker_peak_mib"] or [0]) for p in profiles), default=None)  # type: ignore[type-var]
        result.add("ours peak RSS per worker (max over rounds)", worker_peak, "MiB")
        for key, what in (("uss", "USS (its own pages)"), ("pss", "PSS (shared pages divided)")):
            peak = max((max(p[f"worker_peak_{key}_mib"] or [0]) for p in profiles), default=None)  # type: ignore[type-var]
            result.add(f"ours peak {what} per worker (max over rounds)", peak, "MiB")
        result.add(
            "ours peak RSS of the ingest process",
            median([p["main_peak_mib"] for p in profiles if p["main_peak_mib"] is not None]),
            "MiB",
        )  # type: ignore[misc]
        result.add("ours peak RSS, all processes", median([p["total_peak_mib"] for p in profiles]), "MiB")  # type: ignore[misc]
        growth, verdict = _flatness(best)
        result.add("worker RSS growth, 25 % → 100 % of worker lifetime", growth, "%", note=verdict)
        lake_bytes = median([float(r.report.get("lake_bytes", 0)) for r in ok])  # type: ignore[arg-type]
        if lake_bytes:
            result.add("lake size per instance", lake_bytes / nfiles / 1024, "KiB")
        print()
        print("memory of `dicomlake ingest --workers 2` (middle round), MiB:")
        print(
            f"  peak per worker: RSS {', '.join(fmt(v) for v in best['worker_peak_mib'])}"  # type: ignore[union-attr]
            f"; USS {', '.join(fmt(v) for v in best['worker_peak_uss_mib'])}"  # type: ignore[union-attr]
            f"; PSS {', '.join(fmt(v) for v in best['worker_peak_pss_mib'])}"  # type: ignore[union-attr]
            f"  ({best['workers_seen']} worker processes seen; ingest process "
            f"{fmt(best['main_peak_mib'])}; all processes {fmt(best['total_peak_mib'])};"  # type: ignore[arg-type]
            f" others: {', '.join(best['other_processes']) or 'none'})"
        )  # type: ignore[arg-type]
        for title, key in (("of the run", "curve"), ("of the workers' lifetime", "worker_curve")):
            rows = []
            for c in best[key]:  # type: ignore[union-attr]
                workers = " / ".join(fmt(v) for v in c.get("worker_mib", [])) or "-"
                rows.append(
                    [
                        f"{int(c['fraction'] * 100)} % {title}",
                        fmt(c.get("t"), "s"),
                        fmt(c.get("main_mib")),
                        workers,
                        fmt(c.get("total_mib")),
                    ]
                )
            print(table(rows, ["point", "at", "ingest process", "workers", "all"]))
        print(
            f"  worker RSS: {verdict}"
            + (f" ({growth:+.1f} % from 25 % to 100 % of their lifetime)" if growth is not None else "")
        )

    result.raw = {
        "n": nfiles,
        "seed": seed,
        "load_before": load_before,
        "load_after": load_after,
        "rounds": rounds,
        "corpus": str(corpus),
        "corpus_stats": stats,
        "ours": [
            {
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
                "returncode": r.returncode,
                "report": r.report,
                "memory": memory_profile(r),
            }
            for r in ours
        ],
        "dcmdump_2": [{"seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "returncode": r.returncode} for r in dd2],
        "dcmdump_1": [{"seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "returncode": r.returncode} for r in dd1],
    }
    print()
    print(f"ingest of {nfiles:,} instances, medians of {rounds} alternating rounds, warm cache:")
    print(figures_table(result))
    if result.error:
        print(f"ERROR: {result.error}")
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome.error else 0)
