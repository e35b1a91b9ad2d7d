"""Query latency over 1,000,000 synthetic instances: any-attribute filters, p50 and p95.

The lake is built with DuckDB's own generators (the rows are synthetic, the schema and the
SQL are the real ones: ``Lake.build_query`` over ``instances`` and ``elements``). Each
instance has its typed columns plus element rows for a top-level attribute, a nested
sequence attribute and a private element, so a filter on a column that has no typed
column of its own is measured, not only the easy case. Target: p50 < 1 s.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import BenchResult, fmt, table

N = int(os.environ.get("BENCH_QUERY_N", "1000000"))
ROUNDS = int(os.environ.get("BENCH_QUERY_ROUNDS", "7"))

FILTERS = [
    ("typed numeric", ["CompressionForce > 150", "Modality = MG"]),
    ("typed date range", ["StudyDate = 20230101-20230331"]),
    ("typed wildcard", ["StationName = MAMMO*"]),
    ("non-typed attribute (elements)", ["DistanceSourceToEntrance > 900"]),
    ("nested sequence attribute", ["CTDIPhantomTypeCodeSequence.CodeMeaning = *Head*"]),
    ("private element by creator", ['(0019,"ACME_LAKE_TEST",10) >= 990']),
    ("study level, combined", ["Modality = MG", "StudyDate = 20240101-", "DistanceSourceToEntrance > 500"]),
]


def build(lake: Path, n: int) -> float:
    from dicomlake.store.duckdb import DuckDBStore

    t0 = time.perf_counter()
    st = DuckDBStore(lake)
    build_rows(st.con, 0, n)
    st.con.execute("CHECKPOINT")
    st.close()
    return time.perf_counter() - t0


def build_rows(con: Any, start: int, stop: int) -> None:
    """Insert synthetic instances ``start``..``stop`` (typed columns, numbered ``i + 1`` in
    ``_iid`` and ``instance_keys``, and 8 element rows each)."""
    from dicomlake.store import elementstore

    con.execute(
        f"""
        INSERT INTO instances BY NAME
        SELECT 'P' || (i // 40)::VARCHAR AS PatientID,
               '1.2.826.0.1.3680043.10.9.' || (i // 20)::VARCHAR AS StudyInstanceUID,
               '1.2.826.0.1.3680043.10.9.' || (i // 20)::VARCHAR || '.1' AS SeriesInstanceUID,
               '1.2.826.0.1.3680043.10.8.' || i::VARCHAR AS SOPInstanceUID,
               ['MG','CT','DX','MR','US'][1 + i % 5] AS Modality,
               DATE '2020-01-01' + INTERVAL ((i // 20) % 1800) DAY AS StudyDate,
               ['MAMMO1','MAMMO2','CT_A','DX-ROOM3','MRI'][1 + i % 5] AS StationName,
               CASE WHEN i % 5 = 0 THEN 40 + (i * 7919) % 160 END AS CompressionForce,
               CASE WHEN i % 5 = 0 THEN 20 + (i * 104729) % 70 END AS BodyPartThickness,
               'file' AS source,
               i + 1 AS _iid
        FROM range({start}, {stop}) t(i)
        """
    )
    con.execute(
        f"""INSERT INTO instance_keys SELECT hash(u), i + 1, u
        FROM (SELECT i, '1.2.826.0.1.3680043.10.8.' || i::VARCHAR AS u FROM range({start}, {stop}) t(i))"""
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW bench_rows AS
        SELECT i + 1 AS iid, p.path, p.path_key, p.depth,
               p.tag, p.keyword, p.VR, p.private_creator,
               CASE p.k WHEN 0 THEN ((i * 31) % 1500)::VARCHAR
                        WHEN 1 THEN CASE WHEN i % 2 = 0 THEN 'IEC Head Dosimetry Phantom' ELSE 'IEC Body Dosimetry Phantom' END
                        WHEN 2 THEN ((i * 17) % 1000)::VARCHAR
                        ELSE 'filler value ' || (i % 97)::VARCHAR END AS value_text,
               CASE p.k WHEN 0 THEN (i * 31) % 1500 WHEN 2 THEN (i * 17) % 1000 END AS value_num,
               8 AS length
        FROM range({start}, {stop}) t(i),
             (VALUES (0, 'DistanceSourceToEntrance', 'DistanceSourceToEntrance', 0, '00400306', 'DistanceSourceToEntrance',
                      'DS', NULL),
                     (1, 'CTDIPhantomTypeCodeSequence[0].CodeMeaning', 'CTDIPhantomTypeCodeSequence.CodeMeaning', 1,
                      '00080104', 'CodeMeaning', 'LO', NULL),
                     (2, '(0019,"ACME_LAKE_TEST",10)', '(0019,"ACME_LAKE_TEST",10)', 0, '00191010', NULL, 'DS',
                      'ACME_LAKE_TEST'),
                     (3, 'StudyDescription', 'StudyDescription', 0, '00081030', 'StudyDescription', 'LO', NULL),
                     (4, 'SeriesDescription', 'SeriesDescription', 0, '0008103E', 'SeriesDescription', 'LO', NULL),
                     (5, 'Manufacturer', 'Manufacturer', 0, '00080070', 'Manufacturer', 'LO', NULL),
                     (6, 'ProtocolName', 'ProtocolName', 0, '00181030', 'ProtocolName', 'LO', NULL),
                     (7, 'InstitutionName', 'InstitutionName', 0, '00080080', 'InstitutionName', 'LO', NULL))
             p(k, path, path_key, depth, tag, keyword, VR, private_creator)
        """
    )
    elementstore.append_sorted(con, "bench_rows")  # one sorted run, as the store's merges make


def main() -> BenchResult:
    from dicomlake.query.lake import Lake

    res = BenchResult("query")
    with tempfile.TemporaryDirectory(prefix="dicomlake-qbench-") as tmp:
        lake = Path(tmp)
        secs = build(lake, N)
        with Lake.open(lake, read_only=True) as lk:
            n_el = lk.count("elements")
            print(f"built {N:,} instances and {n_el:,} element rows in {secs:.1f} s")
            rows = []
            for label, where in FILTERS:
                sql, params, _ = lk.build_query(where, ["SOPInstanceUID", "StudyDate"], "instance")
                times, count = [], 0
                for _ in range(ROUNDS):
                    t0 = time.perf_counter()
                    count = lk.store.query(sql, params).num_rows
                    times.append(time.perf_counter() - t0)
                times.sort()
                p50 = statistics.median(times)
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                rows.append([label, " AND ".join(where), f"{count:,}", fmt(p50 * 1000, "ms"), fmt(p95 * 1000, "ms")])
                res.add(f"{label}: p50", p50 * 1000, "ms", note=f"{N:,} instances, {count:,} matches")
                res.add(f"{label}: p95", p95 * 1000, "ms")
    print(table(rows, ["filter", "where", "matches", "p50", "p95"]))
    worst = max(f.value or 0 for f in res.figures if f.what.endswith("p50"))
    print(f"worst p50 {worst:.0f} ms (target < 1000 ms over {N:,} instances)")
    res.raw = {"instances": N, "element_rows": n_el, "rounds": ROUNDS}
    return res


if __name__ == "__main__":
    main()
