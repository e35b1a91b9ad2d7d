"""Cluster bench: a real Spark standalone cluster beside the embedded engine, same corpus, same run.

The number docs/scaling.md sizes a cluster with is files/s per executor core. This bench
measures it on a real standalone cluster — a master and two one-core workers on 127.0.0.1,
started with ``tests/integration/spark_cluster.py`` (PySpark's own launchers; executors are
separate JVMs with their own Python workers and folders) — and, in the same run on the same
machine, the embedded engine on two worker processes:

1. generate (or reuse) the bench corpus (:func:`bench.corpus.ensure_corpus`);
2. start the cluster and a driver session on it (timed, not counted in the rates);
3. warm up: one small Spark ingest of a 40-file corpus, so that both executors and their
   Python workers are up and have imported dicomlake (timed, not counted);
4. (a) the embedded engine, ``ingest_paths(corpus, workers=2)`` into a DuckDB lake;
   (b) :func:`~dicomlake.ingest.spark.ingest_spark` on the cluster into a Parquet lake;
   each timed by the wall clock from the sources to a lake that answers queries;
5. check both lakes hold the same number of instances and element rows (the bench fails
   otherwise) and compare order-free hashes of instances, elements and DICOM JSON.

It prints files/s and files/s per core side by side (embedded: 2 worker processes on the 2
cores; cluster: 2 executor cores), their ratio, and the load average before and after.

Environment: ``BENCH_N`` (default 20000), ``BENCH_SEED`` (default 0).
Needs a Java runtime (17 or later) and PySpark (``make install`` installs both).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import BenchResult, table

NAME = "cluster"
EMBEDDED_WORKERS = 2
WARMUP_FILES = 40


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _require_spark() -> None:
    """A clear error when the cluster cannot be started at all."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RuntimeError(
            "bench_cluster needs a Java runtime (17 or later) to start a Spark cluster: "
            "apt-get install default-jre-headless (make install does it), or set JAVA_HOME"
        )
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "bench_cluster needs PySpark: pip install 'dicomlake[spark]' (make install does it)"
        ) from exc


def main() -> BenchResult:
    _require_spark()
    from bench.bench_scale import _fingerprints
    from bench.corpus import ensure_corpus, generate
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.ingest.spark import ingest_spark, spark_session
    from tests.integration.spark_cluster import _stop, start_cluster

    n = _env_int("BENCH_N", 20000)
    seed = _env_int("BENCH_SEED", 0)
    res = BenchResult(NAME)
    load_before = _load()
    print(f"load average before: {load_before} ({os.cpu_count()} CPUs)", flush=True)
    corpus, stats = ensure_corpus(n, seed)
    files = sum(1 for _ in corpus.rglob("*.dcm"))
    print(f"corpus: {files:,} files ({stats.get('studies')} studies), seed {seed}: {corpus}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster: Any = None
    spark: Any = None
    try:
        t0 = time.perf_counter()
        cluster = start_cluster(work / "cluster")
        cluster_s = time.perf_counter() - t0
        conf = cluster.conf()
        spark_cores = int(conf["spark.cores.max"])
        print(f"cluster: master {cluster.url}, {spark_cores} workers × 1 core, up in {cluster_s:.1f} s", flush=True)

        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:  # one SparkContext per process: an earlier bench's local session
            active.stop()
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the driver binds to loopback too
        t0 = time.perf_counter()
        spark = spark_session(cluster.url, app_name="dicomlake-bench-cluster", **conf)
        session_s = time.perf_counter() - t0
        print(f"driver session on the cluster: {session_s:.1f} s (not counted)", flush=True)

        # -- warm-up: executors and their Python workers start, dicomlake is imported -------
        warm = generate(work / "warmup-corpus", WARMUP_FILES, seed + 1)
        t0 = time.perf_counter()
        wrep = ingest_spark([warm], work / "warmup-lake", spark=spark)
        warm_s = time.perf_counter() - t0
        if wrep.instances != WARMUP_FILES:
            raise RuntimeError(f"warm-up run wrote {wrep.instances} instances of {WARMUP_FILES} files")
        print(
            f"warm-up Spark run: {WARMUP_FILES} files in {warm_s:.1f} s (not counted) — "
            "both executors and their Python workers are now up",
            flush=True,
        )

        # -- (a) embedded engine, 2 worker processes → DuckDB ------------------------------
        t0 = time.perf_counter()
        rep = ingest_paths([corpus], work / "embedded-lake", workers=EMBEDDED_WORKERS)
        emb_s = time.perf_counter() - t0
        emb_rate = rep.files / emb_s
        print(f"embedded: {rep.files:,} files in {emb_s:.1f} s, {emb_rate:,.0f} files/s", flush=True)

        # -- (b) Spark standalone cluster → Parquet lake -----------------------------------
        t0 = time.perf_counter()
        srep = ingest_spark([corpus], work / "cluster-lake", spark=spark)
        spark_s = time.perf_counter() - t0
        spark_rate = srep.files / spark_s
        task_rate = srep.files / srep.task_seconds if srep.task_seconds else 0.0
        print(
            f"cluster: {srep.files:,} files in {spark_s:.1f} s, {spark_rate:,.0f} files/s; {srep.tasks} tasks, "
            f"{srep.files_written} Parquet files; inside tasks {srep.task_seconds:.1f} core-s "
            f"= {task_rate:,.0f} files/s per core",
            flush=True,
        )

        a = _fingerprints(work / "embedded-lake")
        b = _fingerprints(work / "cluster-lake")
    finally:
        if spark is not None:
            spark.stop()
        if cluster is not None:
            _stop(cluster.procs)
        shutil.rmtree(work, ignore_errors=True)
    load_after = _load()

    emb_core = emb_rate / EMBEDDED_WORKERS
    spark_core = spark_rate / spark_cores
    ratio = spark_core / emb_core
    rows = [
        [
            f"Spark standalone, {spark_cores} executors × 1 core → Parquet",
            f"{spark_s:.1f}",
            f"{spark_rate:,.0f}",
            f"{spark_core:,.1f}",
        ],
        [f"embedded, {EMBEDDED_WORKERS} workers → DuckDB", f"{emb_s:.1f}", f"{emb_rate:,.0f}", f"{emb_core:,.1f}"],
    ]
    print()
    print(table(rows, [f"engine ({files:,} files, same run)", "seconds", "files/s", "files/s per core"]))
    print(
        f"cluster / embedded per core: {ratio:.2f}×  (cluster start {cluster_s:.0f} s, session {session_s:.0f} s "
        f"and warm-up {warm_s:.0f} s not counted)"
    )
    print(f"load average before: {load_before}; after: {load_after}")

    counts = {k: (a[k], b[k]) for k in ("instances.rows", "elements.rows", "dicom_json.rows", "rejects.rows")}
    print("rows (embedded, cluster):", ", ".join(f"{k} {x:,} / {y:,}" for k, (x, y) in counts.items()))
    same_hash = all(a[k] == b[k] for k in ("instances.hash", "elements.hash", "dicom_json.hash"))
    print(f"instances, elements and dicom_json identical (order-free hashes): {same_hash}")

    res.add(f"embedded engine, {EMBEDDED_WORKERS} workers → DuckDB", emb_rate, "files/s", note=f"{files:,} files")
    res.add(
        f"Spark standalone cluster, {spark_cores} executor cores → Parquet",
        spark_rate,
        "files/s",
        peer="embedded engine",
        note=f"{spark_rate / emb_rate:.2f}x; cluster start, session and warm-up not counted",
    )
    res.add("embedded per core (docs/scaling.md)", emb_core, "files/s/core")
    res.add(
        "cluster per executor core (docs/scaling.md)",
        spark_core,
        "files/s/core",
        peer="embedded per core",
        note=f"{ratio:.2f}x",
    )
    res.add(
        "same instances and element rows", 1.0 if counts_equal(counts) else 0.0, "", note=f"hashes equal {same_hash}"
    )
    res.raw.update(
        {
            "files": files,
            "seed": seed,
            "cluster_start_s": cluster_s,
            "session_s": session_s,
            "warmup_s": warm_s,
            "embedded_s": emb_s,
            "cluster_s": spark_s,
            "cluster_tasks": srep.tasks,
            "cluster_task_seconds": srep.task_seconds,
            "parquet_files": srep.files_written,
            "embedded": a,
            "cluster": b,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
    )
    if not counts_equal(counts):
        raise RuntimeError(
            "the cluster and the embedded engine wrote different numbers of rows: "
            + ", ".join(f"{k} embedded {x} vs cluster {y}" for k, (x, y) in counts.items())
        )
    if not same_hash:
        res.error = "same row counts but different rows (hashes differ)"
    return res


def counts_equal(counts: dict[str, tuple[object, object]]) -> bool:
    """Same instances and element rows in both lakes (and at least one instance)."""
    inst, elem = counts["instances.rows"], counts["elements.rows"]
    return inst[0] == inst[1] and elem[0] == elem[1] and bool(inst[0])


if __name__ == "__main__":
    result = main()
    if result.error:
        print(f"FAILED: {result.error}", file=sys.stderr)
    sys.exit(1 if result.error else 0)
