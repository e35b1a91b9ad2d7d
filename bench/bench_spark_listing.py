"""Listing bench: what the Spark engine's driver holds and spends to list N input files.

Before (the driver walked every folder, built one task object and one JSON row per file and
shipped them to Spark) against now (the driver sends one unit per top-level folder or
manifest range; the executors list and return two counts). The driver's Python heap is
measured with :mod:`tracemalloc` (peak over the listing), its time by the wall clock, for a
folder tree of N files (100 subfolders) and for a text manifest of N lines. The files are
empty (listing does not read them); the manifest's entries need not exist (each becomes a
"missing" task on an executor, as many rows as a file).

Then compaction: the generated corpus (``BENCH_COMPACT_N`` files, default 2000) ingested on
``local[2]``, the lake's Parquet files and bytes counted before and after ``compact``, and the
rows read by a plain Spark session and by DuckDB before and after (they must not change).

Environment: ``BENCH_LIST_N`` (folder sizes, default ``10000,20000``), ``BENCH_LIST_MANIFEST_N``
(manifest sizes, default ``10000,100000``), ``BENCH_COMPACT_N`` (0 skips compaction).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.report import BenchResult

NAME = "spark-listing"

TABLES = ("instances", "elements", "dicom_json", "dose_events")


def _sizes(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip()]


def _measure(fn: Callable[[], int]) -> tuple[int, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    n = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return n, seconds, peak / 1e6


def _tree(root: Path, n: int) -> Path:
    for i in range(n):
        d = root / f"d{i % 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:07d}.dcm").touch()
    return root


def _before(spark: Any, root: Path) -> int:
    """The driver as it was: expand every file, chunk, serialise, hand to Spark."""
    from dicomlake.ingest.sources import expand
    from dicomlake.ingest.spark import FILES_PER_CHUNK, _chunks

    tasks = expand([root])
    chunks = _chunks(tasks, FILES_PER_CHUNK)
    rows = [(i, json.dumps([(o, asdict(t)) for o, t in c])) for i, c in enumerate(chunks)]
    df = spark.createDataFrame(rows, "chunk_id long, chunk string")
    df.count()
    return len(tasks)


def _after(spark: Any, sources: list[str], manifest: str | None) -> int:
    """The driver now: units out, two counts back."""
    from pyspark.sql import functions as F

    from dicomlake.ingest.spark import FILES_PER_CHUNK, LISTING_DDL, _list_partition, _units

    units = _units(sources, manifest)
    listed = (
        spark.createDataFrame(
            [(i, *u) for i, u in enumerate(units)], "unit long, kind string, path string, start long, end long"
        )
        .repartition(max(1, min(len(units), spark.sparkContext.defaultParallelism * 4)))
        .mapInArrow(_list_partition(FILES_PER_CHUNK, {}), LISTING_DDL)
    )
    row = listed.agg(F.sum("n").alias("files")).first()
    return int(row["files"] or 0)


def main() -> BenchResult:
    from dicomlake.ingest.spark import spark_session

    res = BenchResult(NAME)
    tmp = Path(tempfile.mkdtemp(prefix="dicomlake-bench-listing-"))
    spark = spark_session("local[2]", app_name="dicomlake-bench-listing")
    try:
        _after(spark, [str(_tree(tmp / "warm", 200))], None)  # Python workers up
        for n in _sizes("BENCH_LIST_N", "10000,20000"):
            root = _tree(tmp / f"tree{n}", n)
            for label, fn in (
                ("before: driver walks", lambda r=root: _before(spark, r)),
                ("now: executors list", lambda r=root: _after(spark, [str(r)], None)),
            ):
                got, s, mb = _measure(fn)
                assert got == n, (label, got, n)
                res.add(f"{label}, {n:,} files: driver Python peak", mb, "MB")
                res.add(f"{label}, {n:,} files: driver time", s, "s")
            shutil.rmtree(root)
        for n in _sizes("BENCH_LIST_MANIFEST_N", "10000,100000"):
            man = tmp / f"manifest{n}.txt"
            man.write_text("".join(f"/archive/{i % 977:03d}/f{i:09d}.dcm\n" for i in range(n)), encoding="utf-8")

            def listed(m: str = str(man)) -> int:
                return _after(spark, [], m)

            got, s, mb = _measure(listed)
            assert got == n, (got, n)
            res.add(f"now: manifest, {n:,} lines: driver Python peak", mb, "MB")
            res.add(f"now: manifest, {n:,} lines: driver time", s, "s")
        n = int(os.environ.get("BENCH_COMPACT_N", "2000"))
        if n:
            _compaction(res, spark, tmp, n)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _lake_files(lake: Path) -> tuple[int, int]:
    files = [f for t in TABLES for f in (lake / t).rglob("*.parquet")]
    return len(files), sum(f.stat().st_size for f in files)


def _counts(spark: Any, lake: Path) -> dict[str, tuple[int, int]]:
    import duckdb

    out = {}
    for t in TABLES:
        if not (lake / t).is_dir():
            continue
        glob = str(lake / t / "**" / "*.parquet")
        row = duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)").fetchone()
        out[t] = (spark.read.parquet(str(lake / t)).count(), int(row[0]) if row else -1)
    return out


def _compaction(res: BenchResult, spark: Any, tmp: Path, n: int) -> None:
    from bench.corpus import generate
    from dicomlake.ingest.spark import ingest_spark
    from dicomlake.store.parquet import compact

    src = generate(tmp / "corpus", n, seed=11)
    lake = tmp / "lake"
    rep = ingest_spark([src], lake, spark=spark)
    files0, bytes0 = _lake_files(lake)
    counts0 = _counts(spark, lake)
    t0 = time.perf_counter()
    compact(lake, spark=spark)
    seconds = time.perf_counter() - t0
    files1, bytes1 = _lake_files(lake)
    counts1 = _counts(spark, lake)
    assert counts0 == counts1, (counts0, counts1)
    assert all(a == b for a, b in counts1.values()), counts1
    res.add(f"compaction, {rep.unique_instances:,} instances: Parquet files before", files0, "files")
    res.add(f"compaction, {rep.unique_instances:,} instances: Parquet files after", files1, "files")
    res.add(f"compaction, {rep.unique_instances:,} instances: lake bytes before", bytes0 / 1e6, "MB")
    res.add(f"compaction, {rep.unique_instances:,} instances: lake bytes after", bytes1 / 1e6, "MB")
    res.add("compaction: time (Spark local[2], one task a partition)", seconds, "s")
    res.add(f"ingest, {rep.files:,} files in {rep.tasks} tasks: largest task buffer", rep.peak_buffer_bytes / 1e6, "MB")
    res.raw["compaction_rows"] = {t: c[0] for t, c in counts1.items()}
    res.raw["compaction_partitions"] = len({f.parent for f in (lake / "elements").rglob("*.parquet")})


if __name__ == "__main__":
    for f in main().figures:
        print(f"{f.what:66s} {f.value or 0:12.2f} {f.unit}")
