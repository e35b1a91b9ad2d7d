"""Run the fuzz targets: ``python fuzz/run.py [--target T ...] [--seconds S]`` (``make fuzz``).

Each target runs in its own process under atheris for ``--seconds``. A crash, hang or
out-of-memory input found is copied to ``tests/data/fuzz/<target>/`` (``--save``), where
``tests/test_fuzz_regressions.py`` replays it for ever after; the target is then restarted
for the time left, so one run can find several distinct bugs. The figures per target
(executions, distinct inputs, corpus size, coverage, crashes) are printed as a table and
written to ``<workdir>/results.json``.

Without ``--seed`` libFuzzer picks a new random seed each run (the long run explores).
``--seed N --runs short`` makes a run repeatable: a fixed seed, ``PYTHONHASHSEED=0``, no
address randomisation (``setarch -R``, where it exists) and a fixed number of executions
per target (its ``SHORT_RUNS``) instead of a time budget, so the inputs tried are the same
on every run and a test cannot fail by chance on a new random input (``--seconds`` then
only bounds a slow machine: it cuts the same sequence short). ``inputs_digest`` in the
results identifies the set of inputs a run executed: compare it between two runs.

Examples::

    python fuzz/run.py --seconds 600            # the long run (make fuzz)
    python fuzz/run.py --target reader --seconds 30
    python fuzz/run.py --seed 1 --runs short --seconds 30 --no-save   # the short run in make test
    python fuzz/run.py --target pdu-live --seconds 300                # the listener over sockets
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("reader", "json", "deid", "stow", "qido", "pdu", "pdu-live")
LIVE_TARGETS = ("pdu-live",)
"""Targets that run a server in the fuzzing process and talk to it over sockets."""
REGRESSIONS = REPO / "tests" / "data" / "fuzz"


@dataclass
class TargetResult:
    target: str
    seconds: float = 0.0
    executions: int = 0
    distinct_inputs: int = 0
    corpus: int = 0
    seeds: int = 0
    coverage: int = 0
    inputs_digest: str = ""
    """XOR of the distinct inputs' digests (one per process, joined by +): equal runs, equal digests."""
    seed: int | None = None
    runs: int | None = None
    features: int = 0
    peak_rss_mb: int = 0
    crashes: list[str] = field(default_factory=list)
    """Artifacts found in this run (crash-/timeout-/oom-/leak- files), as saved."""
    error: str | None = None


def _seed_folder(workdir: Path, kind: str, limit: int | None = None) -> Path | None:
    sys.path.insert(0, str(REPO))
    import itertools

    from fuzz import seeds

    folder = workdir / (f"seeds-{kind}" + (f"-{limit}" if limit else ""))
    marker = folder / ".complete"
    if marker.exists():
        return folder
    if kind == "dicom":
        it = seeds.dicom_seeds(limit)
    else:
        mod = __import__(f"fuzz.fuzz_{kind}", fromlist=["seed_inputs"])
        it = iter(mod.seed_inputs())
    seeds.write_seeds(folder, itertools.islice(it, limit))
    marker.touch()
    return folder


def target_file(target: str) -> Path:
    """``fuzz/fuzz_<target>.py`` (a ``-`` in a target's name is ``_`` in its file's)."""
    return REPO / "fuzz" / f"fuzz_{target.replace('-', '_')}.py"


def _target_meta(target: str) -> tuple[int, str | None, int]:
    """``MAX_LEN``, ``SEEDS`` and ``SHORT_RUNS`` of a target, read without importing it (no atheris)."""
    text = target_file(target).read_text()
    m = re.search(r"^MAX_LEN = ([0-9* ]+)$", text, re.M)
    max_len = eval(m.group(1)) if m else 4096  # a literal product from our own file
    s = re.search(r'^SEEDS = "(\w+)"$', text, re.M)
    r = re.search(r"^SHORT_RUNS = ([0-9_]+)$", text, re.M)
    return max_len, s.group(1) if s else None, int(r.group(1)) if r else 2000


_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_PROGRESS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def run_target(
    target: str,
    seconds: float,
    workdir: Path,
    *,
    save: bool,
    max_crashes: int = 5,
    timeout_s: int = 10,
    rss_limit_mb: int = 2048,
    verbose: bool = False,
    seed_limit: int | None = None,
    seed: int | None = None,
    runs: int | str | None = None,
) -> TargetResult:
    """Fuzz one target for ``seconds`` (or ``runs`` executions); restart after each crash until done.

    ``seed`` fixes libFuzzer's seed (each restart after a crash takes the next one);
    ``runs`` bounds the executions: a number, or ``"short"`` for the target's ``SHORT_RUNS``.
    """
    max_len, seed_kind, short_runs = _target_meta(target)
    runs = short_runs if runs == "short" else int(runs) if runs is not None else None
    res = TargetResult(target, seed=seed, runs=runs)
    tdir = workdir / target
    corpus = tdir / "corpus"
    artifacts = tdir / "artifacts"
    for d in (corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    dirs = [str(corpus)]
    try:
        seed_dir = _seed_folder(workdir, seed_kind or target, seed_limit)
    except Exception as exc:  # a target without seeds still fuzzes
        seed_dir = None
        res.error = f"seeds: {type(exc).__name__}: {exc}"
    if seed_dir is not None:
        dirs.append(str(seed_dir))
        res.seeds = sum(1 for p in seed_dir.iterdir() if not p.name.startswith("."))
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    digests = []
    restarts = 0
    while True:
        left = deadline - time.monotonic()
        if left < 1 or (runs is not None and res.executions >= runs):
            break
        stats_file = tdir / "stats.json"
        stats_file.unlink(missing_ok=True)
        # MALLOC_ARENA_MAX: threads (pdu-live) must not reserve 64 MiB arenas against FUZZ_MEMORY_MB
        env = {**os.environ, "FUZZ_STATS": str(stats_file), "PYTHONPATH": f"{REPO}:{REPO / 'src'}",
               "MALLOC_ARENA_MAX": "2"}  # fmt: skip
        cmd = [
            sys.executable, "-m", "fuzz.harness", target,
            f"-max_total_time={max(1, int(left))}", f"-max_len={max_len}", f"-timeout={timeout_s}",
            f"-rss_limit_mb={rss_limit_mb}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            "-reload=0",
        ]  # fmt: skip
        if seed is not None:
            # repeatable: libFuzzer's seed, string hashes, and (setarch -R) the addresses that
            # object hashes come from: with ASLR, set orders change coverage and so the inputs
            env["PYTHONHASHSEED"] = "0"
            cmd.append(f"-seed={seed + restarts}")
            if shutil.which("setarch"):
                cmd[:0] = ["setarch", "-R"]
        if runs is not None:
            cmd.append(f"-runs={runs - res.executions}")
        cmd += dirs
        restarts += 1
        before = set(artifacts.iterdir())
        t_run = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, errors="replace")
        ran_out = time.monotonic() - t_run >= int(left) - 1
        out = proc.stdout + proc.stderr
        if verbose:
            print(out[-4000:])
        stats = dict((k, int(v)) for k, v in _STAT.findall(out))
        res.executions += stats.get("number_of_executed_units", 0)
        res.peak_rss_mb = max(res.peak_rss_mb, stats.get("peak_rss_mb", 0))
        prog = _PROGRESS.findall(out)
        if prog:
            res.coverage = max(res.coverage, int(prog[-1][1]))
            res.features = max(res.features, int(prog[-1][2]))
        try:
            st = json.loads(stats_file.read_text())
            res.distinct_inputs += st["distinct_inputs"]
            digests.append(st.get("inputs_digest", ""))
            if not stats.get("number_of_executed_units"):
                res.executions += st["executions"]
        except (OSError, ValueError, KeyError):
            pass
        new = sorted(set(artifacts.iterdir()) - before)
        if proc.returncode != 0 and not new:
            if proc.returncode == -14 and ran_out:
                break  # libFuzzer's own -max_total_time alarm ended it mid-input: time is up, not a finding
            res.error = f"exit {proc.returncode} without an artifact: {out[-2000:]}"
            break
        for art in new:
            kind = art.name.split("-", 1)[0]
            digest = hashlib.sha1(art.read_bytes()).hexdigest()[:16]
            dest_name = f"{kind}-{digest}"
            if save:
                dest = REGRESSIONS / target / dest_name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(art, dest)
                res.crashes.append(str(dest.relative_to(REPO)))
            else:
                res.crashes.append(str(art))
            (tdir / f"{dest_name}.log").write_text(out[-20000:])
        if proc.returncode == 0 or len(res.crashes) >= max_crashes:
            break
    res.seconds = round(time.monotonic() - started, 1)
    res.inputs_digest = "+".join(digests)
    res.corpus = sum(1 for _ in corpus.iterdir())
    return res


def _table(results: list[TargetResult]) -> str:
    head = ["target", "seconds", "executions", "exec/s", "distinct inputs", "seeds", "corpus", "cov", "crashes"]
    rows = [
        [
            r.target, f"{r.seconds:.0f}", f"{r.executions:,}", f"{r.executions / max(r.seconds, 0.1):,.0f}",
            f"{r.distinct_inputs:,}", str(r.seeds), str(r.corpus), str(r.coverage),
            str(len(r.crashes)) + (" ERROR" if r.error else ""),
        ]
        for r in results
    ]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", action="append", choices=TARGETS, help="a target (repeatable); default: all")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per target. Default: 60")
    ap.add_argument("--workdir", type=Path, default=REPO / "fuzz" / "runs", help="corpus and artifacts")
    ap.add_argument("--no-save", dest="save", action="store_false", help="do not copy crashes into tests/data/fuzz")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take (a hang). Default: 10")
    ap.add_argument("--seed-limit", type=int, default=None, help="use only the first N seeds (short runs)")
    ap.add_argument("--seed", type=int, default=None, help="libFuzzer's -seed (repeatable runs). Default: random")
    ap.add_argument(
        "--runs", default=None, help="executions per target instead of a time budget: N, or 'short' (SHORT_RUNS)"
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    targets = args.target or list(TARGETS)
    results = []
    for t in targets:
        r = run_target(
            t,
            args.seconds,
            args.workdir,
            save=args.save,
            timeout_s=args.timeout,
            verbose=args.verbose,
            seed_limit=args.seed_limit,
            seed=args.seed,
            runs=args.runs,
        )
        results.append(r)
        print(
            f"{t}: {r.executions:,} executions, {r.distinct_inputs:,} distinct inputs, "
            f"{len(r.crashes)} crashes" + (f" — {r.error[:300]}" if r.error else ""),
            flush=True,
        )
        for c in r.crashes:
            print(f"  crash input: {c}")
    print(_table(results))
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if any(r.crashes or r.error for r in results) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
