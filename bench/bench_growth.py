"""Growth bench: is the cost of a DuckDB lake flat as the lake grows? (issue 16, "Must show")

In one run, on one corpus of real-looking headers (:mod:`bench.corpus`), split by study into
``--rounds`` equal parts, each round:

1. ``dicomlake ingest PART --workers 2`` into an empty lake (a fresh folder);
2. the same files into a large lake (``--instances`` synthetic instances, see below);
3. ``dcmdump -q -M`` over the same files as 2 processes (the peer, as in ``ingest_bench``).

Printed: the medians of the three rates, large over empty (goal: within 20 %), each over
dcmdump; bytes per instance on disk of the lake the corpus made (total and per table) and of
the synthetic lake; the p50 of the query bench's filters (``bench_query.FILTERS``) at a middle
size (``--element-instances``) and at ``--instances``.

The large lake is made fast by DuckDB's ``range()``: ``instances`` (the query bench's typed
columns) and ``instance_keys`` for every instance; ``elements`` with the query bench's 8 rows
for every instance; and for the first ``--element-instances`` also the element rows and the
DICOM JSON of a real image instance of the corpus (the median image by element rows; its UIDs
made unique), so those instances carry the real density. (DICOM JSON at 10 M would be ~80 GB of
text to generate: more than this bench's time on 2 cores.) Everything lives in a temporary folder removed at the end.

The same synthetic lake, at each size, is also copied into the other engines
(``--engines``, default ``parquet,postgresql``): a Parquet lake (``export --format lake``'s
writer: element files sorted by attribute) and a PostgreSQL lake (a throw-away server,
``tests/integration/pg.py``); for each, the copy's seconds, its bytes per instance and the
same filters' p50 — issue 16's "for each engine".

``make bench`` runs a small default (``BENCH_GROWTH_INSTANCES``, 200,000); the figures in
docs/explanation/lake.md come from ``python -m bench.bench_growth --instances 10000000
--element-instances 1000000``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import BenchResult, fmt, table

NAME = "growth"
UID_ROOT = "1.2.826.0.1.3680043.10.8."  # bench_query's instance UIDs: its filters match these rows


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_growth", description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=_env_int("BENCH_GROWTH_INSTANCES", 200_000))
    p.add_argument(
        "--element-instances",
        type=int,
        default=_env_int("BENCH_GROWTH_ELEMENT_INSTANCES", 0),
        help="instances with a real image's element rows (default: a tenth of --instances)",
    )
    p.add_argument("--files", type=int, default=_env_int("BENCH_GROWTH_FILES", 2000), help="files per round")
    p.add_argument("--rounds", type=int, default=_env_int("BENCH_ROUNDS", 3))
    p.add_argument("--seed", type=int, default=_env_int("BENCH_SEED", 0))
    p.add_argument("--query-rounds", type=int, default=_env_int("BENCH_QUERY_ROUNDS", 5))
    p.add_argument(
        "--bytes-files",
        type=int,
        default=_env_int("BENCH_N", 20_000),
        help="corpus files ingested into a lake of their own to weigh bytes per instance (0: skip)",
    )
    p.add_argument(
        "--engines",
        default=os.environ.get("BENCH_GROWTH_ENGINES", "parquet,postgresql"),
        help="other engines the synthetic lake is copied into at each size (comma-separated; '' for none)",
    )
    return p.parse_args(argv)


# ---- running ingest and the peer -------------------------------------------------------------


def _ingest(paths: list[Path], lake: Path, report: Path) -> tuple[float, dict[str, object]]:
    """``dicomlake ingest PATHS --lake LAKE --workers 2``: wall seconds and the run's JSON report."""
    from bench.corpus import REPO_ROOT

    cmd = [sys.executable, "-m", "dicomlake.cli.main", "ingest", *map(str, paths), "--lake", str(lake)]
    cmd += ["--workers", "2", "-q", "--report", str(report)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"ingest failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return seconds, json.loads(report.read_text())


def _rounds(corpus: Path, rounds: int) -> list[list[Path]]:
    """The corpus's study folders in ``rounds`` groups of about the same number of files."""
    studies = sorted(p for p in corpus.iterdir() if p.is_dir())
    sizes = {s: sum(1 for _ in s.rglob("*.dcm")) for s in studies}
    total = sum(sizes.values())
    groups: list[list[Path]] = [[] for _ in range(rounds)]
    acc = 0
    for s in studies:
        groups[min(rounds - 1, acc * rounds // max(total, 1))].append(s)
        acc += sizes[s]
    return [g for g in groups if g]


# ---- the large lake ----------------------------------------------------------------------------


def _fill(lake: Path, start: int, stop: int, density_stop: int, template: Path) -> float:
    """Add synthetic instances ``start``..``stop`` to the lake (see the module's docstring)."""
    from bench.bench_query import build_rows
    from dicomlake.store import elementstore
    from dicomlake.store.duckdb import DuckDBStore

    t0 = time.perf_counter()
    with DuckDBStore(lake) as st:
        con = st.con
        build_rows(con, start, stop)  # with instance_keys numbered i + 1
        con.execute(f"ATTACH '{template}' AS tpl (READ_ONLY)")
        if density_stop > start:
            top = min(stop, density_stop)
            # DICOM JSON: a real instance's text, its SOP Instance UID replaced by this instance's
            con.execute(
                f"""INSERT INTO dicom_json BY NAME
                SELECT '{UID_ROOT}' || i::VARCHAR AS SOPInstanceUID,
                       replace(j.json, j.SOPInstanceUID, '{UID_ROOT}' || i::VARCHAR) AS json
                FROM range({start}, {top}) t(i), tpl.json_row j"""
            )
            # a real image's element rows; the UID-valued ones made unique per instance; in sorted
            # runs of 100,000 instances, as the store's merges leave them
            for lo in range(start, top, 100_000):
                con.execute(
                    f"""CREATE OR REPLACE TEMP VIEW growth_rows AS
                    SELECT i + 1 AS iid, e.path, e.path_key, e.depth, e.tag, e.keyword, e.VR, e.private_creator,
                           CASE WHEN e.VR = 'UI' AND e.value_text LIKE '%.%.%'
                                THEN e.value_text || '.' || i::VARCHAR ELSE e.value_text END AS value_text,
                           e.value_num, e.length
                    FROM range({lo}, {min(top, lo + 100_000)}) t(i), tpl.element_rows e"""
                )
                elementstore.append_sorted(con, "growth_rows")
        con.execute("DETACH tpl")
        con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def _template(corpus_lake: Path, out: Path) -> int:
    """Save the DICOM JSON and element rows of one typical image instance of the corpus's lake."""
    import duckdb

    con = duckdb.connect(str(out))
    try:
        con.execute(f"ATTACH '{corpus_lake / 'lake.duckdb'}' AS r (READ_ONLY)")
        # the image instance whose element row count is the median of the image instances
        uid = con.execute(
            """WITH n AS (SELECT e.SOPInstanceUID, count(*) AS k FROM r.elements e
                          JOIN r.instances i USING (SOPInstanceUID)
                          WHERE i.Modality IN ('CT', 'MR', 'MG', 'DX', 'CR', 'US') GROUP BY 1)
               SELECT SOPInstanceUID FROM n ORDER BY k, SOPInstanceUID
               LIMIT 1 OFFSET (SELECT count(*) // 2 FROM n)"""
        ).fetchone()
        if uid is None:
            raise RuntimeError("the corpus lake holds no image instance")
        con.execute(
            "CREATE TABLE json_row AS SELECT SOPInstanceUID, json FROM r.dicom_json WHERE SOPInstanceUID = ?", uid
        )
        con.execute(
            "CREATE TABLE element_rows AS SELECT * EXCLUDE (SOPInstanceUID) FROM r.elements WHERE SOPInstanceUID = ?",
            uid,
        )
        n = con.execute("SELECT count(*) FROM element_rows").fetchone()
        con.execute("DETACH r")
    finally:
        con.close()
    return int(n[0]) if n else 0


# ---- sizes and queries -------------------------------------------------------------------------


ELEMENT_TABLES = ("element_keys", "element_data", "element_recent", "element_delta")
"""The DuckDB element store behind the ``elements`` view (:mod:`dicomlake.store.elementstore`)."""
TABLES = ("instances", "instance_keys", *ELEMENT_TABLES, "dicom_json")


def _sizes(lake: Path, per_table_copy: bool = False) -> dict[str, object]:
    """Bytes on disk: the files, and per table: its blocks (``pragma_storage_info``), or, for a
    small lake whose tables share blocks, the size of a database file holding a copy of it alone
    (rows in the same order). ``elements`` is the sum of the element store's tables."""
    import duckdb

    files = sum(p.stat().st_size for p in lake.rglob("*") if p.is_file())
    per: dict[str, int] = {}
    if per_table_copy:
        empty = lake / "copy-empty.duckdb"
        duckdb.connect(str(empty)).close()
        for t in TABLES:
            one = lake / f"copy-{t}.duckdb"
            c = duckdb.connect(str(one))
            c.execute(f"ATTACH '{lake / 'lake.duckdb'}' AS r (READ_ONLY)")
            c.execute(f"CREATE TABLE {t} AS SELECT * FROM r.{t}")
            c.execute("DETACH r")
            c.execute("CHECKPOINT")
            c.close()
            per[t] = max(0, one.stat().st_size - empty.stat().st_size)
            one.unlink()
        empty.unlink()
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        block = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()
        bsize = int(block[0]) if block else 262144
        n = con.execute("SELECT count(*) FROM instances").fetchone()
        if not per_table_copy:
            for t in TABLES:
                row = con.execute(
                    f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{t}') WHERE block_id >= 0"
                ).fetchone()
                per[t] = int(row[0]) * bsize if row else 0
        counts = {
            t: int(r[0]) if (r := con.execute(f"SELECT count(*) FROM {t}").fetchone()) else 0
            for t in ("elements", "dicom_json")
        }
    finally:
        con.close()
    per["elements"] = sum(per.pop(t) for t in ELEMENT_TABLES)
    inst = int(n[0]) if n else 0
    return {"instances": inst, "file_bytes": files, "table_bytes": per, "rows": counts}


def _weigh(n_files: int, seed: int, work: Path) -> dict[str, object]:
    """Bytes per instance of a lake of ``n_files`` corpus headers (enough that each table fills
    many blocks): the file as ingest leaves it (with the free blocks the element store's merges
    leave for reuse), after ``dicomlake compact``, and each table copied alone."""
    from bench.corpus import REPO_ROOT, ensure_corpus

    corpus, _stats = ensure_corpus(n_files, seed)
    lake = work / "weigh"
    _ingest([corpus], lake, work / "weigh.json")
    out = _sizes(lake, per_table_copy=True)
    cmd = [sys.executable, "-m", "dicomlake.cli.main", "compact", str(lake)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compact failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    out["compacted_file_bytes"] = sum(p.stat().st_size for p in lake.rglob("*") if p.is_file())
    shutil.rmtree(lake)
    print(
        f"weighed {out['instances']:,} corpus headers: {int(out['file_bytes']) / max(int(out['instances']), 1):,.0f} B "  # type: ignore[call-overload]
        f"per instance, {int(out['compacted_file_bytes']) / max(int(out['instances']), 1):,.0f} B after compact",  # type: ignore[call-overload]
        flush=True,
    )
    return out


def _queries(lake: Path | str, rounds: int) -> dict[str, float]:
    """p50 (ms) of each of the query bench's filters, as ``dicomlake query -n 1000`` runs it:
    the first 1,000 matching instances in the stable order, and the count of all matches
    when there are more (:meth:`Lake.query_arrow`)."""
    from bench.bench_query import FILTERS
    from dicomlake.query.lake import Lake

    out: dict[str, float] = {}
    with Lake.open(lake, read_only=True) as lk:
        for label, where in FILTERS:
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                lk.query_arrow(where, ["SOPInstanceUID", "StudyDate"], "instance", limit=1000)
                times.append(time.perf_counter() - t0)
            out[label] = statistics.median(times) * 1000
    return out


def _engines(lake: Path, work: Path, engines: list[str], rounds: int, pg_url: Any) -> dict[str, dict[str, float]]:
    """The lake copied into each of ``engines`` (``parquet``: ``ParquetLakeWriter`` as ``export
    --format lake``; ``postgresql``: ``copy_lake`` into a new database of ``pg_url()``): per engine
    the copy's seconds, bytes per instance and the filters' p50 (ms, :func:`_queries`)."""
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.open import open_store
    from dicomlake.store.parquet import ParquetLakeWriter
    from dicomlake.store.transfer import copy_lake

    out: dict[str, dict[str, float]] = {}
    for engine in engines:
        t0 = time.perf_counter()
        with DuckDBStore(lake, read_only=True) as src:
            n = int(src.query("SELECT count(*) AS n FROM instances").column(0)[0].as_py())
            if engine == "parquet":
                target: Any = work / "parquet-copy"
                shutil.rmtree(target, ignore_errors=True)
                copy_lake(src, ParquetLakeWriter(target))
            elif engine == "postgresql":
                target = pg_url()
                with open_store(target) as dest:
                    copy_lake(src, dest)
            else:
                raise ValueError(f"--engines: {engine!r} is not parquet or postgresql")
        copy_s = time.perf_counter() - t0
        if engine == "parquet":
            size = sum(p.stat().st_size for p in Path(target).rglob("*.parquet"))
        else:
            with open_store(target, read_only=True) as st:
                size = int(st.query("SELECT pg_database_size(current_database()) AS b").column(0)[0].as_py())
        q = _queries(target, rounds)
        out[engine] = {"copy_s": copy_s, "bytes_per_instance": size / max(n, 1), **q}
        print(
            f"  {engine}: copied in {copy_s:.0f} s, {size / max(n, 1):,.0f} B/instance; "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in q.items()),
            flush=True,
        )
        if engine == "parquet":
            shutil.rmtree(target, ignore_errors=True)
    return out


# ---- the bench ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> BenchResult:
    from bench.corpus import ensure_corpus
    from bench.ingest_bench import run_dcmdump, warm_page_cache

    a = _args(argv if argv is not None else [])
    big = a.instances
    mid = a.element_instances or max(1, big // 10)
    res = BenchResult(NAME)
    corpus, _stats = ensure_corpus(a.files * a.rounds, a.seed)
    parts = _rounds(corpus, a.rounds)
    files = [[str(f.relative_to(corpus)) for s in part for f in sorted(s.rglob("*.dcm"))] for part in parts]
    warm_page_cache(corpus, [f for part in files for f in part])
    work = Path(tempfile.mkdtemp(prefix="dicomlake-growth-"))
    load0 = os.getloadavg()
    try:
        # round 1 into an empty lake first: its lake gives the bytes per real instance and the
        # template of the synthetic rows
        _ingest(parts[0], work / "empty1", work / "e1.json")
        real = _sizes(work / "empty1", per_table_copy=True)
        n_el = _template(work / "empty1", work / "template.duckdb")
        shutil.rmtree(work / "empty1")
        weighed = _weigh(a.bytes_files, a.seed, work) if a.bytes_files else None

        lake = work / "big"
        engines = [e.strip() for e in a.engines.split(",") if e.strip()]
        others: dict[int, dict[str, dict[str, float]]] = {}
        pg: Any = None

        if "postgresql" in engines:
            from tests.integration.pg import pg_bin_dir

            if pg_bin_dir() is None:  # the other figures still count
                print("postgresql left out: no PostgreSQL binaries (make install installs them)", flush=True)
                engines.remove("postgresql")

        def pg_url() -> str:
            nonlocal pg
            if pg is None:
                from tests.integration.pg import PostgresCluster

                pg = PostgresCluster().start()
            return str(pg.create_database())

        queries: dict[int, dict[str, float]] = {}
        sizes: dict[int, dict[str, object]] = {}
        builds: dict[int, float] = {}
        for start, stop in ((0, mid), (mid, big)) if big > mid else ((0, big),):
            builds[stop] = _fill(lake, start, stop, mid, work / "template.duckdb")
            print(f"large lake: {stop:,} instances after {builds[stop]:.0f} s more", flush=True)
            sizes[stop] = _sizes(lake)
            queries[stop] = _queries(lake, a.query_rounds)
            print(f"  query p50 at {stop:,}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in queries[stop].items()))
            if engines:
                try:
                    others[stop] = _engines(lake, work, engines, a.query_rounds, pg_url)
                finally:  # each size's PostgreSQL copy goes with its server (disk: a copy and its WAL)
                    if pg is not None:
                        pg.stop()
                        pg = None

        empty_r, big_r, dd_r, empty_in, big_in = [], [], [], [], []
        for r, (part, names) in enumerate(zip(parts, files, strict=True), 1):
            n = len(names)
            # again for round 1 too: each pair of runs sees the same load on a shared machine
            s_empty, rep_e = _ingest(part, work / f"empty{r}", work / f"e{r}.json")
            shutil.rmtree(work / f"empty{r}", ignore_errors=True)
            s_big, rep_b = _ingest(part, lake, work / f"b{r}.json")
            dd = run_dcmdump(corpus, names, 2)
            for rep in (rep_e, rep_b):
                if rep.get("inserted") != n:
                    raise RuntimeError(f"round {r}: {rep.get('inserted')} of {n} instances inserted: {rep}")
            empty_r.append(n / s_empty)
            big_r.append(n / s_big)
            dd_r.append(n / dd.seconds)
            empty_in.append(n / float(rep_e["seconds"]))  # type: ignore[arg-type]
            big_in.append(n / float(rep_b["seconds"]))  # type: ignore[arg-type]
            print(
                f"round {r}: {n:,} files; empty lake {empty_r[-1]:,.0f} inst/s, lake of {big:,} "
                f"{big_r[-1]:,.0f} inst/s, dcmdump -q -M x2 {dd_r[-1]:,.0f} inst/s",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    e, b, d = statistics.median(empty_r), statistics.median(big_r), statistics.median(dd_r)
    ei, bi = statistics.median(empty_in), statistics.median(big_in)
    ratio = b / e
    res.add("ingest into an empty lake, 2 workers", e, "inst/s", peer=f"dcmdump -q -M x2 {fmt(d, 'inst/s')}")
    res.add(
        f"ingest into a lake of {big:,} instances",
        b,
        "inst/s",
        peer=f"empty lake {fmt(e, 'inst/s')}",
        note=f"{100 * (ratio - 1):+.0f} %; goal within 20 %: {'met' if ratio >= 0.8 else 'NOT met'}",
    )
    res.add(
        "the same, inside the run (process start-up left out)", bi, "inst/s", peer=f"empty lake {fmt(ei, 'inst/s')}"
    )
    res.add("ours / dcmdump -q -M x2 (time), empty lake", d / e, "×", peer="dcmdump -q -M x2")
    res.add(f"ours / dcmdump -q -M x2 (time), lake of {big:,}", d / b, "×", peer="dcmdump -q -M x2")
    real_inst = int(real["instances"])  # type: ignore[call-overload]
    real_kb = int(real["file_bytes"]) / max(real_inst, 1) / 1024  # type: ignore[call-overload]
    res.add(
        f"lake bytes per instance, the corpus ({real_inst:,} real-looking headers)",
        real_kb,
        "KiB",
        note="too few to weigh: each table holds at least one 256 KiB block" if weighed else "",
    )
    for t, v in real["table_bytes"].items():  # type: ignore[attr-defined]
        res.add(f"  {t} per instance (corpus)", v / max(real_inst, 1), "B")
    if weighed:
        w_inst = max(int(weighed["instances"]), 1)  # type: ignore[call-overload]
        tables = sum(weighed["table_bytes"].values())  # type: ignore[attr-defined]
        for label, value in (
            ("lake file", int(weighed["file_bytes"])),  # type: ignore[call-overload]
            ("lake file after `dicomlake compact`", int(weighed["compacted_file_bytes"])),  # type: ignore[call-overload]
            ("tables, each copied alone", tables),
        ):
            res.add(
                f"lake bytes per instance, {w_inst:,} corpus headers: {label}",
                value / w_inst,
                "B",
                note=f"goal <= 2 KB: {'met' if value / w_inst <= 2048 else 'NOT met'}",
            )
        for t, v in weighed["table_bytes"].items():  # type: ignore[attr-defined]
            res.add(f"  {t} per instance ({w_inst:,} headers)", v / w_inst, "B")
    rows = []
    for sz in sizes.values():
        inst = int(sz["instances"])  # type: ignore[call-overload]
        res.add(
            f"lake bytes per instance, synthetic lake of {inst:,}",
            int(sz["file_bytes"]) / inst / 1024,  # type: ignore[call-overload]
            "KiB",
            note=f"{sz['rows']['elements']:,} element rows",  # type: ignore[index]
        )
        for t, v in sz["table_bytes"].items():  # type: ignore[attr-defined]
            res.add(f"  {t} per instance ({inst:,})", v / inst, "B")
    for label in queries[next(iter(queries))]:
        rows.append([label, *(fmt(queries[s][label], "ms") for s in queries)])
    for stop, q in queries.items():
        worst = max(q.values())
        res.add(
            f"worst query-bench filter p50 at {stop:,} instances",
            worst,
            "ms",
            note=f"goal < 1 s: {'met' if worst < 1000 else 'NOT met'}",
        )
    for stop, per in others.items():
        for engine, fig in per.items():
            filters = {k: v for k, v in fig.items() if k not in ("copy_s", "bytes_per_instance")}
            res.add(
                f"worst query-bench filter p50 at {stop:,} instances, {engine}",
                max(filters.values()),
                "ms",
                peer=f"DuckDB lake {fmt(max(queries[stop].values()), 'ms')}",
                note=f"copied in {fig['copy_s']:.0f} s",
            )
            res.add(f"  {engine} bytes per instance ({stop:,}, synthetic)", fig["bytes_per_instance"], "B")
            for label, v in filters.items():
                rows.append([f"{label} ({engine})", *(fmt(v, "ms") if s == stop else "" for s in queries)])
    load1 = os.getloadavg()
    print(table(rows, ["filter (bench_query)", *(f"p50 at {s:,}" for s in queries)]))
    print(
        f"element rows of the template image instance: {n_el}; large lake built in "
        + ", ".join(f"{s:.0f} s (to {k:,})" for k, s in builds.items())
    )
    print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} on {os.cpu_count()} CPUs")
    res.raw = {
        "args": vars(a),
        "rates": {"empty": empty_r, "big": big_r, "dcmdump2": dd_r, "empty_in_run": empty_in, "big_in_run": big_in},
        "real": real,
        "sizes": {str(k): v for k, v in sizes.items()},
        "queries": {str(k): v for k, v in queries.items()},
        "engines": {str(k): v for k, v in others.items()},
        "builds": builds,
        "template_element_rows": n_el,
        "loadavg": [load0, load1],
    }
    from bench.report import figures_table

    print(figures_table(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
