"""Upsert bench: what one ingest batch pays to find the instances the lake already holds,
in an empty lake and in a large one.

A DuckDB lake is filled with synthetic instances made by DuckDB's ``range()`` (only the key
and a few columns: the key lookup does not read the others), then batches of 2,000
instances are looked up (half already in the lake, half new) and batches of 2,000 new instances
go through ``DuckDBStore.write_batch``. Printed per lake size: the median time of the key
lookup as dicomlake 0.2 did it (a semi-join reading every SOP Instance UID string), as 0.3 did
it (a semi-join over ``instance_keys``, 8 bytes per instance), through the writer's sorted copy
of the keys (:mod:`dicomlake.store.keyindex`, what ``write_batch`` does now; its one-off load
when the writer first looks up is printed apart), and the whole ``write_batch`` of new instances.

Environment: ``BENCH_UPSERT_SIZES`` (default ``0,1000000,4000000``), ``BENCH_ROUNDS`` (default 5).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.report import BenchResult, fmt, table

NAME = "upsert"
BATCH = 2000
ROOT = "1.2.826.0.1.3680043.8.498."


def _sizes() -> list[int]:
    raw = os.environ.get("BENCH_UPSERT_SIZES", "0,1000000,4000000")
    return [int(x) for x in raw.split(",") if x.strip()]


def _fill(lake: Path, n: int) -> None:
    from dicomlake.store.duckdb import DuckDBStore

    with DuckDBStore(lake) as st:
        if n:
            st.con.execute(
                "INSERT INTO instances (SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID, Modality) "
                f"SELECT '{ROOT}' || i, '{ROOT}1.' || (i // 500), '{ROOT}2.' || (i // 50), 'CT' FROM range({n}) t(i)"
            )
            st.con.execute("INSERT INTO instance_keys SELECT hash(SOPInstanceUID) FROM instances")
            st.con.execute("CHECKPOINT")


def _batch(round_no: int, n: int) -> pa.Table:
    half = BATCH // 2
    old = [f"{ROOT}{(round_no * 7919 + j * 104729) % max(n, 1)}" for j in range(half)] if n else []
    new = [f"{ROOT}9.{round_no}.{j}" for j in range(BATCH - len(old))]
    uids = old + new
    return pa.table(
        {
            "SOPInstanceUID": pa.array(uids, pa.string()),
            "StudyInstanceUID": pa.array([f"{ROOT}1.x"] * len(uids), pa.string()),
            "SeriesInstanceUID": pa.array([f"{ROOT}2.x"] * len(uids), pa.string()),
            "Modality": pa.array(["MR"] * len(uids), pa.string()),
        }
    )


def measure(n: int, rounds: int) -> dict[str, float]:
    """Medians (ms) of the old key lookup, the new one and the whole write_batch at ``n`` instances."""
    from dicomlake.store.duckdb import DuckDBStore

    tmp = Path(tempfile.mkdtemp(prefix="dicomlake-upsert-"))
    try:
        _fill(tmp / "lake", n)
        old_ms, new_ms, idx_ms, write_ms = [], [], [], []
        with DuckDBStore(tmp / "lake") as st:
            t = time.perf_counter()
            st._keys.sync(st.con)
            load_ms = (time.perf_counter() - t) * 1000
            for r in range(rounds):
                b = _batch(r, n)
                st.con.register("b_inst", b)
                t = time.perf_counter()
                st.con.execute(
                    "SELECT count(*) FROM instances WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM b_inst)"
                ).fetchall()
                old_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                st.con.execute(
                    "SELECT DISTINCT k.h FROM instance_keys k WHERE k.h IN (SELECT hash(SOPInstanceUID) FROM b_inst)"
                ).fetchall()
                new_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                st._keys.sync(st.con)
                h = st.con.execute("SELECT hash(SOPInstanceUID) AS h FROM b_inst").fetchnumpy()["h"]
                hits = int(st._keys.contains(h).sum())
                idx_ms.append((time.perf_counter() - t) * 1000)
                assert hits >= (BATCH // 2 if n else 0)
                st.con.unregister("b_inst")
                fresh = _batch(1000 + r, 0)  # an ingest batch of new instances (the common case)
                t = time.perf_counter()
                rep = st.write_batch({"instances": fresh}, [])
                write_ms.append((time.perf_counter() - t) * 1000)
                assert rep.inserted == BATCH and rep.replaced == 0
        return {
            "old_lookup_ms": statistics.median(old_ms),
            "keys_lookup_ms": statistics.median(new_ms),
            "index_lookup_ms": statistics.median(idx_ms),
            "index_load_ms": load_ms,
            "write_batch_ms": statistics.median(write_ms),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> BenchResult:
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    res = BenchResult(NAME)
    rows = []
    for n in _sizes():
        m = measure(n, rounds)
        res.raw[str(n)] = m
        rows.append(
            [
                f"{n:,}",
                fmt(m["old_lookup_ms"], "ms"),
                fmt(m["keys_lookup_ms"], "ms"),
                fmt(m["index_lookup_ms"], "ms"),
                fmt(m["index_load_ms"], "ms"),
                fmt(m["write_batch_ms"], "ms"),
            ]
        )
        res.add(
            f"key lookup per {BATCH:,}-instance batch at {n:,} instances",
            m["index_lookup_ms"],
            "ms",
            peer=f"{fmt(m['keys_lookup_ms'], 'ms')} (instance_keys semi-join), {fmt(m['old_lookup_ms'], 'ms')} (UID)",
            note=f"key copy loaded once per writer in {fmt(m['index_load_ms'], 'ms')}",
        )
        res.add(f"write_batch of {BATCH:,} instances at {n:,} instances", m["write_batch_ms"], "ms")
    print(
        table(
            rows,
            [
                "instances in lake",
                "UID semi-join (0.2)",
                "instance_keys semi-join",
                "key index",
                "its load",
                "write_batch",
            ],
        )
    )
    return res


if __name__ == "__main__":
    main()
