"""PostgreSQL writers bench: instances/s with 1 writer and with 4 writers on disjoint data,
with one lake-wide write lock (dicomlake before migration 5) and with row locks (now).

Each writer is a process with its own :class:`~dicomlake.store.postgres.PostgresStore` that
writes synthetic batches built with the lake schema (:func:`synthetic_batch`: typed instance
row, ~140 element rows and a DICOM JSON document per instance) into a fresh database of a
throw-away cluster (``tests/integration/pg.py``). "global lock" is the current batch inside
one lake-wide ``pg_advisory_xact_lock`` (:class:`GlobalLockStore`, as every batch took it before
migration 5); "row locks" is the current ``write_batch``. While the writers run, the main process samples ``pg_stat_activity`` every
10 ms and counts the writer backends waiting on a heavyweight lock (``wait_event_type =
'Lock'``: the advisory lock, or a row/transaction lock) — the share of writer samples spent
waiting on a lock says whether writers serialise. Rates are total instances over the wall
time from the first writer's start to the last one's end.

Environment: ``BENCH_PG_N`` (instances per run, default 4000), ``BENCH_PG_BATCH`` (default 200),
``BENCH_PG_ELEMENTS`` (element rows per instance, default 140).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from bench.report import BenchResult, fmt, table

NAME = "pg_writers"
ROOT = "1.2.826.0.1.3680043.8.498.77."
ADVISORY_KEY = 0x44_4C_57_52  # the key the lake-wide lock used ("DLWR")


def synthetic_batch(uids: list[str], marker: str, n_elements: int = 140) -> dict[str, pa.Table]:
    """Lake tables for ``uids``: every value that can differ between writes carries ``marker``.

    ``instances.StudyDescription``, every element's ``value_text`` and the DICOM JSON hold the
    marker, and ``element_count`` is ``n_elements``, so a reader can tell which write each
    table's rows of an instance came from.
    """
    from dicomlake.lakeschema import ELEMENT_SCHEMA, JSON_SCHEMA, instance_columns

    n = len(uids)
    schema = instance_columns().arrow_schema()
    given: dict[str, pa.Array] = {
        "SOPInstanceUID": pa.array(uids),
        "StudyInstanceUID": pa.array([u.rsplit(".", 1)[0] + ".1" for u in uids]),
        "SeriesInstanceUID": pa.array([u.rsplit(".", 1)[0] + ".2" for u in uids]),
        "PatientID": pa.array([f"P{u[-4:]}" for u in uids]),
        "Modality": pa.array(["CT"] * n),
        "StudyDescription": pa.array([marker] * n),
        "element_count": pa.array([n_elements] * n),
    }
    cols = []
    for f in schema:
        arr = given.get(f.name)
        cols.append(arr.cast(f.type) if arr is not None else pa.nulls(n, f.type))
    inst = pa.Table.from_arrays(cols, schema=schema)
    m = n * n_elements
    idx = [f"{i:04x}" for i in range(n_elements)]
    el = {
        "SOPInstanceUID": pa.array([u for u in uids for _ in range(n_elements)]),
        "path": pa.array([f"(0011,{t})" for _ in uids for t in idx]),
        "path_key": pa.array([f"0011{t}" for _ in uids for t in idx]),
        "depth": pa.array([0] * m, pa.int8()),
        "tag": pa.array([f"0011{t}" for _ in uids for t in idx]),
        "keyword": pa.array([f"K{t}" for _ in uids for t in idx]),
        "VR": pa.array(["LO"] * m),
        "private_creator": pa.nulls(m, pa.string()),
        "value_text": pa.array([marker] * m),
        "value_num": pa.nulls(m, pa.float64()),
        "length": pa.array([len(marker)] * m, pa.int64()),
    }
    elements = pa.Table.from_pydict(el, schema=ELEMENT_SCHEMA)
    js = pa.Table.from_pydict(
        {"SOPInstanceUID": uids, "json": [f'{{"00081030": {{"vr": "LO", "Value": ["{marker}"]}}}}' for _ in uids]},
        schema=JSON_SCHEMA,
    )
    return {"instances": inst, "elements": elements, "dicom_json": js}


def _global_lock_store(url: str) -> Any:
    """A store whose ``write_batch`` is the one before row locks: one advisory lock per batch."""
    from dicomlake.store.postgres import PostgresStore

    class GlobalLockStore(PostgresStore):
        # today's batch (upsert, element store) inside one lake-wide advisory lock: the one
        # difference from the row-lock write_batch is the lock
        def _write_once(self, tables: Mapping[str, pa.Table], inst: pa.Table | None, accepted_paths: list[str]) -> int:
            with self.connection.transaction():
                self.connection.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
                return super()._write_once(tables, inst, accepted_paths)

    return GlobalLockStore(url)


def _writer(url: str, mode: str, uids: list[str], batch: int, n_el: int, start: Any, out: Any) -> None:
    from dicomlake.store.postgres import PostgresStore

    st = _global_lock_store(url) if mode == "global lock" else PostgresStore(url)
    st.connection.execute("SET application_name = 'dl_bench_writer'")
    batches = [synthetic_batch(uids[i : i + batch], "w", n_el) for i in range(0, len(uids), batch)]
    start.wait()
    t0 = time.perf_counter()
    for b in batches:
        st.write_batch(b, [])
    t1 = time.perf_counter()
    st.close()
    out.put((t0, t1, len(uids)))


def run(url: str, mode: str, writers: int, n: int, batch: int, n_el: int) -> dict[str, float]:
    """One run into ``url`` (a fresh lake); rate and lock-wait share."""
    import psycopg

    from dicomlake.store.postgres import PostgresStore

    PostgresStore(url).close()  # migrate before the clock starts
    uids = [f"{ROOT}{i // 50}.{i}" for i in range(n)]
    share = [uids[w::writers] for w in range(writers)]  # disjoint
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(writers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, mode, share[w], batch, n_el, start, out)) for w in range(writers)]
    for p in procs:
        p.start()
    samples = waiting = 0
    with psycopg.connect(url, autocommit=True) as mon:
        start.wait(timeout=300)
        while any(p.is_alive() for p in procs) and out.qsize() < writers:
            rows = mon.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE application_name = 'dl_bench_writer' "
                "AND state = 'active'"
            ).fetchall()
            samples += len(rows)
            waiting += sum(1 for r in rows if r[0] == "Lock")
            time.sleep(0.01)
        got = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        count = mon.execute("SELECT count(*) FROM instances").fetchone()
    assert count == (n,), count
    wall = max(g[1] for g in got) - min(g[0] for g in got)
    busy = sum(g[1] - g[0] for g in got)
    return {"rate": n / wall, "wall": wall, "overlap": busy / wall, "lock_wait": waiting / samples if samples else 0.0}


def main() -> BenchResult:
    from tests.integration.pg import PostgresCluster

    n = int(os.environ.get("BENCH_PG_N", "4000"))
    batch = int(os.environ.get("BENCH_PG_BATCH", "200"))
    n_el = int(os.environ.get("BENCH_PG_ELEMENTS", "140"))
    res = BenchResult(NAME)
    rows = []
    with PostgresCluster() as pg:
        for mode in ("global lock", "row locks"):
            for writers in (1, 4):
                url = pg.create_database()
                r = run(url, mode, writers, n, batch, n_el)
                rows.append(
                    [
                        mode,
                        str(writers),
                        fmt(r["rate"]),
                        f"{r['wall']:.1f}",
                        f"{r['overlap']:.2f}",
                        f"{100 * r['lock_wait']:.0f}%",
                    ]
                )
                res.add(
                    f"{mode}, {writers} writer(s)", r["rate"], "inst/s", note=f"lock wait {100 * r['lock_wait']:.0f}%"
                )
                res.raw[f"{mode}/{writers}"] = r
    print(f"PostgreSQL writers: {n} instances, {n_el} element rows each, batches of {batch}, {os.cpu_count()} cores")
    print(table(rows, ["write_batch", "writers", "inst/s", "wall s", "writers busy", "samples waiting on a lock"]))
    return res


if __name__ == "__main__":
    main()
