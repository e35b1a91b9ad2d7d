"""A Parquet lake's element files are sorted by attribute, in small row groups (issue 16, item 5).

Every writer of the format gives that layout: the Spark engine's batches
(``ParquetLakeWriter.write_tables``), ``export --format lake`` (a streamed copy, then a sorted
rewrite of each partition) and ``dicomlake compact``. The oracles are pyarrow's reading of the
files (row order, row-group sizes, the footer statistics a reader skips by) and the rows the
test itself wrote.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dicomlake.lakeschema import ELEMENT_SCHEMA
from dicomlake.store import parquet
from dicomlake.store.parquet import ParquetLakeWriter, ParquetStore

N_INSTANCES = 6_000


def _attributes(n: int) -> list[str]:
    """``path_key`` of ``n`` attributes without a typed column (what a filter names them by)."""
    from dicomlake.lakeschema import instance_columns
    from dicomlake.query.filters import resolve_key

    cols = instance_columns()
    keys = (resolve_key(f"(0018,{k:04X})", cols) for k in range(0x1001, 0x1100))
    return [str(k.path_key) for k in keys if k.column is None and k.path_key][:n]


ATTRS = _attributes(24)  # 24 attributes: 144,000 rows


def _instances(n: int) -> pa.Table:
    return pa.table(
        {
            "SOPInstanceUID": [f"1.2.3.{i}" for i in range(n)],
            "Modality": ["MG" if i % 3 else "CT" for i in range(n)],
            "StudyDate": pa.array([19_000 + 40 * (i % 2) for i in range(n)], pa.int32()).cast(pa.date32()),
            "StudyInstanceUID": [f"1.2.4.{i // 10}" for i in range(n)],
            "SeriesNumber": pa.array([1] * n, pa.int32()),
            "InstanceNumber": pa.array([i % 10 for i in range(n)], pa.int32()),
        }
    )


def _elements(n: int, seed: int = 1) -> pa.Table:
    """The rows in arrival order (instance by instance), values random."""
    rnd = random.Random(seed)
    uid, path_key, tag, text, num = [], [], [], [], []
    for i in range(n):
        for a in ATTRS:
            uid.append(f"1.2.3.{i}")
            path_key.append(a)
            tag.append("00181000")
            v = rnd.randrange(1000)
            text.append(None if v == 7 else str(v))
            num.append(float(v))
    cols: dict[str, pa.Array] = {
        "SOPInstanceUID": pa.array(uid),
        "path": pa.nulls(len(uid), pa.string()),
        "path_key": pa.array(path_key),
        "depth": pa.array([0] * len(uid), pa.int8()),
        "tag": pa.array(tag),
        "keyword": pa.nulls(len(uid), pa.string()),
        "VR": pa.array(["DS"] * len(uid)),
        "private_creator": pa.nulls(len(uid), pa.string()),
        "value_text": pa.array(text, pa.string()),
        "value_num": pa.array(num),
        "length": pa.array([4] * len(uid), pa.int64()),
    }
    return pa.table(cols, schema=ELEMENT_SCHEMA)


def _rows(t: pa.Table) -> Counter[tuple[object, ...]]:
    names = ["SOPInstanceUID", "path_key", "value_text", "value_num"]
    return Counter(zip(*(t.column(c).to_pylist() for c in names), strict=True))


def _check_sorted_files(lake: Path, expected: pa.Table) -> list[Path]:
    files = sorted((lake / "elements").rglob("*.parquet"))
    assert files
    seen: Counter[tuple[object, ...]] = Counter()
    for f in files:
        t = pq.read_table(f)
        keys = list(zip(t.column("path_key").to_pylist(), t.column("value_text").to_pylist(), strict=True))
        for a, b in itertools.pairwise(keys):  # (path_key, value_text), a missing value last
            ok = a[0] < b[0] or (a[0] == b[0] and (b[1] is None or (a[1] is not None and a[1] <= b[1])))
            assert ok, f"{f.name}: {a} before {b}"
        meta = pq.ParquetFile(f).metadata
        assert all(meta.row_group(g).num_rows <= parquet.ELEMENT_ROWS_PER_GROUP for g in range(meta.num_row_groups))
        names = meta.schema.names  # the order declared in the footer, for any reader
        declared = [(names[c.column_index], c.descending, c.nulls_first) for c in meta.row_group(0).sorting_columns]
        assert declared == [("path_key", False, False), ("value_text", False, False)], f"{f.name}: {declared}"
        seen += _rows(t)
    assert seen == _rows(expected), "the sorted files hold other rows than were written"
    return files


def _groups_admitting(files: list[Path], key: str) -> tuple[int, int]:
    """(row groups whose footer statistics admit ``path_key = key``, row groups): what a reader reads."""
    hit = total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        col = meta.schema.names.index("path_key")
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            total += 1
            assert st is not None and st.has_min_max, f"{f.name}: no statistics on path_key"
            hit += st.min <= key <= st.max
    return hit, total


def test_batches_the_spark_engine_writes_are_sorted_and_prunable(tmp_path: Path) -> None:
    inst, el = _instances(N_INSTANCES), _elements(N_INSTANCES)
    w = ParquetLakeWriter(tmp_path / "lake", "t")
    w.write_marker()
    w.write_tables({"instances": inst, "elements": el})
    files = _check_sorted_files(tmp_path / "lake", el)
    hit, total = _groups_admitting(files, ATTRS[5])
    # 144,000 rows in 4 partitions: >= 5 groups; one attribute's 6,000 rows lie in 1-2 a partition
    assert total >= 5 and hit <= 2 * 4 and hit < total, (hit, total)


def test_a_streamed_export_is_sorted_by_a_second_pass(tmp_path: Path) -> None:
    inst, el = _instances(N_INSTANCES), _elements(N_INSTANCES)
    keys = parquet.partition_keys(inst)
    w = ParquetLakeWriter(tmp_path / "lake", "t")
    w.write_marker()
    w.write("instances", parquet.with_partitions(inst, keys))
    with_parts = parquet.with_partitions(el, keys)
    batches = with_parts.to_batches(max_chunksize=10_000)  # arrival order, as a copy streams them
    w.write("elements", iter(batches), with_parts.schema)
    assert w.sort_elements_files() == 4
    files = _check_sorted_files(tmp_path / "lake", el)
    assert sorted(Path(f) for f in w.files if "/elements/" in f) == files  # the writer's list stays true
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["_dicomlake_lake.json", "elements", "instances"]
    # what a reader answers from the sorted files: the instances with value > 990 of one attribute
    want = sorted(
        u
        for u, k, v in zip(
            *(el.column(c).to_pylist() for c in ("SOPInstanceUID", "path_key", "value_num")), strict=True
        )
        if k == ATTRS[3] and v > 990
    )
    with ParquetStore(tmp_path / "lake") as st:
        got = st.query(
            "SELECT SOPInstanceUID FROM instances i WHERE i.SOPInstanceUID IN "
            "(SELECT e.SOPInstanceUID FROM elements e WHERE e.path_key = ? AND e.value_num > 990) ORDER BY 1",
            [ATTRS[3]],
        )
    assert sorted(got.column(0).to_pylist()) == want and want


def test_compact_sorts_element_files_of_older_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lake written before the sorted layout (arrival order, two files a partition) is sorted
    by ``compact``; other tables are compacted as before."""
    inst, el = _instances(N_INSTANCES), _elements(N_INSTANCES)
    keys = parquet.partition_keys(inst)
    monkeypatch.setattr(parquet, "sort_elements", lambda t: t)  # the older writer: no sort, none declared
    monkeypatch.setattr(parquet, "sorting_columns", lambda names: [])
    w = ParquetLakeWriter(tmp_path / "lake", "old")
    w.write_marker()
    half = N_INSTANCES // 2 * len(ATTRS)
    w.write_tables({"instances": inst, "elements": el.slice(0, half)})
    # the second half in three of the four partitions; the CT partition of the second month keeps one file
    rest = parquet.with_partitions(el.slice(half), keys)
    one = pc.and_(pc.equal(rest.column("part_modality"), "CT"), pc.not_equal(rest.column("part_month"), "2022-01"))
    w.write("elements", rest.filter(pc.invert(one)))
    monkeypatch.undo()
    single = [d for d in (tmp_path / "lake" / "elements").glob("*/*") if len(list(d.glob("*.parquet"))) == 1]
    assert len(single) == 1, single
    with pytest.raises(AssertionError):
        _check_sorted_files(tmp_path / "lake", el)
    totals = parquet.compact(tmp_path / "lake")
    assert totals["partitions"] >= 8
    _check_sorted_files(
        tmp_path / "lake",
        el.filter(pc.invert(pc.is_in(el.column("SOPInstanceUID"), value_set=_dropped(inst, el, half)))),
    )


def _dropped(inst: pa.Table, el: pa.Table, half: int) -> pa.Array:
    """The UIDs whose second-half rows the test left out (CT, second month)."""
    keys = parquet.partition_keys(inst)
    rest = parquet.with_partitions(el.slice(half), keys)
    one = pc.and_(pc.equal(rest.column("part_modality"), "CT"), pc.not_equal(rest.column("part_month"), "2022-01"))
    return pc.unique(rest.filter(one).column("SOPInstanceUID"))


def test_compact_settles_on_partitions_larger_than_a_sorted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition of several sorted files (more rows than one sort holds) is left alone by the
    next ``compact``: it rewrote the whole element store every time."""
    monkeypatch.setattr(parquet, "SORT_CHUNK_ROWS", 10_000)
    inst, el = _instances(N_INSTANCES), _elements(N_INSTANCES)
    w = ParquetLakeWriter(tmp_path / "lake", "t")
    w.write_marker()
    w.write_tables({"instances": inst, "elements": el})
    w.write_tables({"elements": el.slice(0, 1), "instances": inst.slice(0, 1)})  # a second file: compact merges
    parquet.compact(tmp_path / "lake")
    big = max((tmp_path / "lake" / "elements").glob("*/*"), key=lambda d: len(list(d.glob("*.parquet"))))
    assert len(list(big.glob("*.parquet"))) >= 2, "the test needs a partition of several sorted files"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "lake").rglob("*.parquet")}
    parquet.compact(tmp_path / "lake")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lake").rglob("*.parquet")} == before


def test_compact_leaves_sorted_single_files_alone(tmp_path: Path) -> None:
    inst, el = _instances(N_INSTANCES), _elements(N_INSTANCES)
    w = ParquetLakeWriter(tmp_path / "lake", "t")
    w.write_marker()
    w.write_tables({"instances": inst, "elements": el})
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "lake").rglob("*.parquet")}
    totals = parquet.compact(tmp_path / "lake")
    assert totals["files_after"] == totals["files_before"] == len(before)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lake").rglob("*.parquet")} == before


def test_an_export_puts_each_row_in_its_instances_partition_hashing_the_keys_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each exported element row lies in the folder of its instance's Modality and study month
    (pydicom's reading of the files is the oracle); and the copy hashes the lake's UIDs once, not
    once per batch (the cost that made an export of 10 M instances grow with the square of the
    lake: Arrow's ``index_in`` builds its set of every key on each call)."""
    import pyarrow.compute as pc
    import pydicom

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.samples import repo_corpus
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.transfer import copy_lake

    corpus = repo_corpus()
    assert corpus is not None
    files = sorted((corpus / "openrem").glob("*.dcm"))[:8]
    ingest_paths(files, tmp_path / "lake", workers=1)
    want: dict[str, tuple[str, str]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        date = str(ds.get("StudyDate", "") or "")
        want[str(ds.SOPInstanceUID)] = (
            str(ds.get("Modality", "") or "_none"),
            f"{date[:4]}-{date[4:6]}" if len(date) == 8 else "_none",
        )
    hashed = 0
    real_index_in = pc.index_in

    def counting(values: object, value_set: object = None, **kw: object) -> object:
        nonlocal hashed
        hashed += len(value_set) if value_set is not None else 0  # type: ignore[arg-type]
        return real_index_in(values, value_set=value_set, **kw)

    monkeypatch.setattr(pc, "index_in", counting)
    with DuckDBStore(tmp_path / "lake", read_only=True) as src:
        rep = copy_lake(src, ParquetLakeWriter(tmp_path / "pq"), batch_rows=500)
    assert rep.rows["elements"] > 10 * 500  # many batches
    assert hashed <= 2 * len(want), f"{hashed} keys hashed for a lake of {len(want)} instances"
    seen = 0
    for f in (tmp_path / "pq" / "elements").rglob("*.parquet"):
        mod = f.parent.parent.name.split("=", 1)[1]
        month = f.parent.name.split("=", 1)[1]
        for uid in set(pq.read_table(f, columns=["SOPInstanceUID"]).column(0).to_pylist()):
            assert want[uid] == (mod, month), (uid, f)
            seen += 1
    assert seen == len(want)


def test_filters_on_modality_and_study_date_open_only_their_partitions_files(tmp_path: Path) -> None:
    """DuckDB's profiler (not our code) counts the files each scan opened; the oracle is the files
    in the partition folders the filters can match (issue 16: ``Modality='MG'`` opened 137 of 137),
    and the instances are those the test generated to match."""
    import re

    from dicomlake.query.lake import Lake

    inst, el = _instances(N_INSTANCES), _elements(N_INSTANCES)
    half = N_INSTANCES // 2
    w = ParquetLakeWriter(tmp_path / "lake", "t")
    w.write_marker()
    for lo, hi in ((0, half), (half, N_INSTANCES)):  # two files a partition
        w.write_tables(
            {"instances": inst.slice(lo, hi - lo), "elements": el.slice(lo * len(ATTRS), (hi - lo) * len(ATTRS))}
        )
    lake = tmp_path / "lake"

    def files(table: str, modality: str = "*", month: str = "*") -> int:
        return len(list((lake / table).glob(f"part_modality={modality}/part_month={month}/*.parquet")))

    value = {
        u: v
        for u, k, v in zip(
            *(el.column(c).to_pylist() for c in ("SOPInstanceUID", "path_key", "value_num")), strict=True
        )
        if k == ATTRS[2]
    }
    ct = {f"1.2.3.{i}" for i in range(N_INSTANCES) if i % 3 == 0}
    feb = {f"1.2.3.{i}" for i in range(N_INSTANCES) if i % 2 == 1}  # 2022-02-17; the others 2022-01-08
    high = {u for u, v in value.items() if v > 990}
    cases = [
        (["Modality = CT", f"{ATTRS[2]} > 990"], ct & high, files("instances", "CT"), files("elements", "CT")),
        (
            ["StudyDate = 20220201-", f"{ATTRS[2]} > 990"],
            feb & high,
            files("instances", month="2022-02"),
            files("elements", month="2022-02"),
        ),
        (["Modality = CT", "StudyDate < 20220115"], ct - feb, files("instances", "CT", "2022-01"), None),
        (["Modality = C*"], ct, files("instances"), None),  # a wildcard names no partition
    ]
    with Lake.open(lake, read_only=True) as lk:
        for where, want, n_inst, n_el in cases:
            sql, params, _ = lk.build_query(where, ["SOPInstanceUID"], "instance")
            plan = str(lk.store.con.execute("EXPLAIN ANALYZE " + sql, params).fetchall()[0][1])
            read = sorted(int(n) for n in re.findall(r"Total Files Read: (\d+)", plan))
            assert read == sorted([n_inst] + ([n_el] if n_el is not None else [])), (where, read, n_inst, n_el)
            got = lk.query_arrow(where, ["SOPInstanceUID"], "instance", limit=100_000).column(0).to_pylist()
            assert sorted(got) == sorted(want) and want, where
    assert files("instances") == 8 and files("instances", "CT") == 4
