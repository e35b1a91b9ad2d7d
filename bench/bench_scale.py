"""Scale bench: the Spark engine (local[2]) beside the embedded engine on the same corpus,
PostgreSQL as the lake, and the per-core rate docs/scaling.md sizes a cluster with.

Both engines run the same extraction (:func:`dicomlake.ingest.worker.process_chunk`) on two
cores; the bench checks that they wrote the same rows (counts of every table, the instances
table compared row by row, a fingerprint of every element row) and prints:

- files/s of each engine on 2 cores, wall clock from sources to a queryable lake;
- Spark's per-core rate, with the session start-up (a fixed cost of a cluster job) apart;
- the embedded engine writing into PostgreSQL instead of DuckDB (when PostgreSQL is installed).

Environment: ``BENCH_N`` (default 20000), ``BENCH_SEED``; ``BENCH_SCALE_PG=0`` skips PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.report import BenchResult, table

NAME = "scale"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _fingerprints(location: Path | str) -> dict[str, object]:
    """Counts of every table, and order-free hashes of instances and elements."""
    from dicomlake.query.lake import Lake

    out: dict[str, object] = {}
    with Lake.open(location, read_only=True) as lk:
        for t in ("instances", "elements", "dicom_json", "dose_events", "rejects"):
            out[f"{t}.rows"] = lk.count(t)
        inst = lk.store.query("SELECT * FROM instances LIMIT 0").column_names
        cols = ", ".join(f'"{c}"' for c in inst if c not in ("received_at",))
        out["instances.hash"] = (
            lk.store.query(f"SELECT sum(hash({cols})::HUGEINT)::VARCHAR AS h FROM instances").column("h")[0].as_py()
        )
        out["elements.hash"] = (
            lk.store.query(
                "SELECT sum(hash(SOPInstanceUID, path, path_key, depth, tag, keyword, VR, private_creator, "
                "value_text, value_num, length)::HUGEINT)::VARCHAR AS h FROM elements"
            )
            .column("h")[0]
            .as_py()
        )
        out["dicom_json.hash"] = (
            lk.store.query("SELECT sum(hash(SOPInstanceUID, json)::HUGEINT)::VARCHAR AS h FROM dicom_json")
            .column("h")[0]
            .as_py()
        )
    return out


def main() -> BenchResult:
    from bench.corpus import ensure_corpus
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.ingest.spark import ingest_spark, spark_session

    n = _env_int("BENCH_N", 20000)
    seed = _env_int("BENCH_SEED", 0)
    res = BenchResult(NAME)
    corpus, stats = ensure_corpus(n, seed)
    files = sum(1 for _ in corpus.rglob("*.dcm"))
    print(f"corpus: {files:,} files ({stats.get('studies')} studies): {corpus}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        # -- embedded engine, 2 worker processes, DuckDB -----------------------------------
        t0 = time.perf_counter()
        rep = ingest_paths([corpus], work / "duck", workers=2)
        emb_s = time.perf_counter() - t0
        emb_rate = rep.files / emb_s
        rows.append(["embedded, 2 workers → DuckDB", f"{emb_s:.1f}", f"{emb_rate:,.0f}", f"{emb_rate / 2:,.0f}"])
        print(f"embedded: {emb_s:.1f} s, {emb_rate:,.0f} files/s", flush=True)

        # -- Spark local[2] → Parquet lake ------------------------------------------------
        t0 = time.perf_counter()
        spark = spark_session("local[2]", app_name="dicomlake-bench")
        start_s = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            srep = ingest_spark([corpus], work / "spark", spark=spark)
            spark_s = time.perf_counter() - t0
        finally:
            spark.stop()
        spark_rate = srep.files / spark_s
        per_core = spark_rate / 2
        task_rate = srep.files / srep.task_seconds if srep.task_seconds else 0.0
        rows.append(["Spark local[2] → Parquet lake", f"{spark_s:.1f}", f"{spark_rate:,.0f}", f"{per_core:,.0f}"])
        print(
            f"spark: session start {start_s:.1f} s; job {spark_s:.1f} s, {spark_rate:,.0f} files/s; "
            f"inside tasks {srep.task_seconds:.1f} core-s = {task_rate:,.0f} files/s per core",
            flush=True,
        )

        a, b = _fingerprints(work / "duck"), _fingerprints(work / "spark")
        if b["rejects.rows"] != a["rejects.rows"]:
            from dicomlake.query.lake import Lake

            with Lake.open(work / "spark", read_only=True) as lk:
                print(
                    "Spark rejects:",
                    lk.sql("SELECT reason, count(*) AS n FROM rejects GROUP BY 1 ORDER BY 2 DESC LIMIT 5"),
                )
        same = a == b
        print(f"rows identical (counts + hashes of instances, elements, dicom_json): {same}")
        print(json.dumps({"embedded": a, "spark": b}, indent=1))

        # -- embedded engine into PostgreSQL -----------------------------------------------
        pg_rate = None
        if os.environ.get("BENCH_SCALE_PG", "1") != "0":
            try:
                from dicomlake.store.postgres import PostgresStore
                from tests.integration.pg import PostgresCluster, pg_bin_dir

                if pg_bin_dir() is not None:
                    with PostgresCluster() as pg:
                        url = pg.create_database("bench")
                        with PostgresStore(url) as st:
                            t0 = time.perf_counter()
                            prep = ingest_paths([corpus], work / "pgq", workers=2, store=st)
                            pg_s = time.perf_counter() - t0
                        pg_rate = prep.files / pg_s
                        rows.append(
                            [
                                "embedded, 2 workers → PostgreSQL",
                                f"{pg_s:.1f}",
                                f"{pg_rate:,.0f}",
                                f"{pg_rate / 2:,.0f}",
                            ]
                        )
                        print(f"postgres: {pg_s:.1f} s, {pg_rate:,.0f} files/s", flush=True)
            except Exception as exc:
                print(f"postgres: not measured ({type(exc).__name__}: {exc})")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(table(rows, ["engine (same corpus, 2 cores)", "seconds", "files/s", "files/s per core"]))
    load = os.getloadavg()
    print(f"load average during the bench: {load[0]:.1f} (a shared machine inflates every figure)")
    res.add("embedded engine, 2 workers → DuckDB", emb_rate, "files/s")
    res.add(
        "Spark local[2] → Parquet",
        spark_rate,
        "files/s",
        peer="embedded engine",
        note=f"{spark_rate / emb_rate:.2f}x; session start {start_s:.0f} s not counted",
    )
    res.add("Spark per-core rate, wall clock (docs/scaling.md)", per_core, "files/s/core")
    res.add(
        "Spark per-core rate inside tasks (docs/scaling.md)",
        task_rate,
        "files/s/core",
        note="read + extract + Parquet write, Spark scheduling excluded",
    )
    if pg_rate is not None:
        res.add(
            "embedded engine, 2 workers → PostgreSQL",
            pg_rate,
            "files/s",
            peer="DuckDB",
            note=f"{pg_rate / emb_rate:.2f}x",
        )
    res.add("rows identical embedded vs Spark", 1.0 if same else 0.0, "", note=f"{files:,} files")
    res.raw.update(
        {
            "files": files,
            "embedded_s": emb_s,
            "spark_s": spark_s,
            "spark_start_s": start_s,
            "spark_tasks": srep.tasks,
            "spark_task_seconds": srep.task_seconds,
            "parquet_files": srep.files_written,
            "fingerprints": a,
            "identical": same,
            "loadavg": load,
        }
    )
    if not same:
        res.error = "the engines wrote different rows"
    return res


if __name__ == "__main__":
    main()
