"""The DuckDB element store (store/elementstore.py): the ``elements`` view gives every element
pydicom reads, whatever runs the rows sit in; a filter on one attribute reads that attribute's
row groups only; a replaced instance's old rows never show; a lake of the older layout (an
``elements`` table) is converted on open. Bytes per instance: bench/bench_growth.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.lakeschema import ELEMENTS_BY_UID
from dicomlake.query.lake import Lake
from dicomlake.samples import repo_corpus
from dicomlake.store import elementstore
from dicomlake.store.duckdb import DuckDBStore


def _files(n: int = 12) -> list[Path]:
    corpus = repo_corpus()
    assert corpus is not None
    return sorted((corpus / "openrem").glob("*.dcm"))[:n]


def _pydicom_counts(path: Path) -> Counter[tuple[int, str]]:
    """(depth, tag) of every data element pydicom reads, the file meta included, other groups'
    lengths (gggg,0000) left out: the oracle for the rows of one instance."""
    out: Counter[tuple[int, str]] = Counter()

    def walk(ds: Dataset, depth: int) -> None:
        for el in ds:
            if el.tag.element == 0 and el.tag.group != 0x0002:
                continue
            out[(depth, f"{el.tag.group:04X}{el.tag.element:04X}")] += 1
            if el.VR == "SQ":
                for item in el.value:
                    walk(item, depth + 1)

    ds = pydicom.dcmread(path, stop_before_pixels=False)
    walk(ds.file_meta, 0)
    walk(ds, 0)
    return out


def _lake_counts(st: DuckDBStore, uid: str) -> Counter[tuple[int, str]]:
    rows = st.query("SELECT depth, tag FROM elements WHERE SOPInstanceUID = ?", [uid]).to_pylist()
    return Counter(
        (int(r["depth"]), str(r["tag"]).replace("(", "").replace(",", "").replace(")", "").upper()) for r in rows
    )


def _check_against_pydicom(st: DuckDBStore, files: list[Path]) -> None:
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        ours, theirs = _lake_counts(st, uid), _pydicom_counts(f)
        assert ours == theirs, f"{f.name}: missing {theirs - ours}, extra {ours - theirs}"


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merges every ~2 instances, a large run every ~6: every table of the store gets rows."""
    monkeypatch.setattr(elementstore, "MERGE_ROWS", 300)
    monkeypatch.setattr(elementstore, "RUN_ROWS", 5_000)


def test_view_gives_every_element_pydicom_reads_across_runs(small_runs: None, tmp_path: Path) -> None:
    files = _files()
    lake = tmp_path / "lake"
    with DuckDBStore(lake) as st:
        for f in files:  # one batch per file: delta, recent runs and large runs all fill
            ingest_paths([f], lake, workers=1, store=st)
        sizes = {t: elementstore.count(st.con, t) for t in elementstore.TABLES}
        assert sizes["element_data"] > 0 and sizes["element_recent"] > 0 and sizes["element_delta"] > 0, sizes
        _check_against_pydicom(st, files)
    with DuckDBStore(lake) as st:  # the writer's close sorted its last rows into a run
        assert elementstore.count(st.con, "element_delta") == 0
        _check_against_pydicom(st, files)


def test_replaced_instances_show_once_and_compact_drops_their_old_rows(small_runs: None, tmp_path: Path) -> None:
    files = _files(6)
    lake = tmp_path / "lake"
    with DuckDBStore(lake) as st:
        ingest_paths(files, lake, workers=1, store=st)
        st.merge_elements()
        before = elementstore.count(st.con, "element_data") + elementstore.count(st.con, "element_recent")
        rep = ingest_paths(files[:3], lake, workers=1, store=st)  # the same instances again
        assert rep.replaced == 3
        _check_against_pydicom(st, files)  # old rows of the three are still stored, never shown
        kept = st.compact_elements()
        assert kept == before  # compact dropped exactly the replaced copies' rows
        assert elementstore.count(st.con, "element_delta") == elementstore.count(st.con, "element_recent") == 0
        _check_against_pydicom(st, files)


def test_a_filter_reads_only_its_attributes_row_groups(tmp_path: Path) -> None:
    """DuckDB's profiler (not our code) counts the row groups the filter's scan read."""
    lake = tmp_path / "lake"
    with DuckDBStore(lake) as st:
        con = st.con
        # 300,000 synthetic instances x 8 attributes in one sorted run: ~20 row groups
        from bench.bench_query import build_rows

        build_rows(con, 0, 300_000)
        con.execute("CHECKPOINT")
    with Lake.open(lake, read_only=True) as lk:
        sql, params, _ = lk.build_query(["DistanceSourceToEntrance > 1400"], ["SOPInstanceUID"], "instance")
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        plan = con.execute("EXPLAIN ANALYZE " + sql, params).fetchall()[0][1]
    finally:
        con.close()
    scanned = [
        line for line in str(plan).splitlines() if "Row Groups Scanned" in line or "row_groups_scanned" in line.lower()
    ]
    text = str(plan)
    assert "element_data" in text
    # the element_data scan: its "Row Groups Scanned: a / b" with a far below b
    import re

    pairs = [(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*/\s*(\d+)", "\n".join(scanned))]
    big = [p for p in pairs if p[1] >= 15]
    assert big, text[:2000]
    assert all(a <= max(3, b // 5) for a, b in big), big


def test_a_lake_of_the_older_layout_is_converted_on_open(tmp_path: Path) -> None:
    files = _files(5)
    lake = tmp_path / "lake"
    ingest_paths(files, lake, workers=1)
    # make it the older layout: one row per element in an `elements` table, instance_keys of hashes
    con = duckdb.connect(str(lake / "lake.duckdb"))
    con.execute("CREATE TABLE elements_old AS SELECT * FROM elements")
    con.execute("DROP VIEW elements")
    for t in (*elementstore.TABLES, "element_keys", "instance_keys"):
        con.execute(f"DROP TABLE {t}")
    con.execute("ALTER TABLE elements_old RENAME TO elements")
    con.execute("CREATE TABLE instance_keys AS SELECT hash(SOPInstanceUID) AS h FROM instances")
    con.execute("DROP VIEW element_index")
    con.execute("ALTER TABLE instances DROP COLUMN _iid")
    con.close()
    with Lake.open(lake, read_only=True) as lk:  # read-only, unconverted: filters join by UID
        assert lk.element_join == ELEMENTS_BY_UID
        assert _filter_uids(lk, "InstitutionAddress") == _pydicom_having(files, "InstitutionAddress")
    with DuckDBStore(lake) as st:
        kinds = dict(
            st.con.execute(
                "SELECT table_name, table_type FROM information_schema.tables WHERE table_name = 'elements'"
            ).fetchall()
        )
        assert kinds == {"elements": "VIEW"}
        _check_against_pydicom(st, files)
        assert Lake(st).element_join == elementstore.JOIN
        assert _filter_uids(Lake(st), "InstitutionAddress") == _pydicom_having(files, "InstitutionAddress")


def _filter_uids(lk: Lake, keyword: str) -> list[str]:
    """The instances an element filter (``(gggg,eeee) = *``, not a typed column) finds, sorted."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert tag is not None
    where = [f"({tag >> 16:04X},{tag & 0xFFFF:04X}) = *"]
    uids = [str(u) for u in lk.query_arrow(where, ["SOPInstanceUID"]).column("SOPInstanceUID").to_pylist()]
    assert lk.count_matching(where) == len(uids)
    return sorted(uids)


def _pydicom_having(files: list[Path], keyword: str) -> list[str]:
    """The SOP Instance UIDs of the files whose data set has ``keyword`` at the top level with a
    value (pydicom)."""
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if keyword in ds and str(ds[keyword].value or "") != "":
            out.append(str(ds.SOPInstanceUID))
    return sorted(out)


def check_element_filters(lk: Lake, files: list[Path]) -> None:
    """Filters on four attributes without a typed column find the instances pydicom says have
    them, each once; at least two tell instances apart."""
    partial = 0
    for keyword in ("InstitutionAddress", "DateOfLastCalibration", "AdditionalPatientHistory", "PatientAddress"):
        assert keyword not in lk.columns.kinds  # a filter on it reads the element store
        want = _pydicom_having(files, keyword)
        partial += 0 < len(want) < len(files)
        assert _filter_uids(lk, keyword) == want, keyword
    assert partial >= 2  # filters that tell instances apart


def test_element_filters_join_instance_numbers_and_find_each_instance_once(small_runs: None, tmp_path: Path) -> None:
    """Filters read ``element_index`` by ``instances._iid``: a replaced instance's old rows (still
    in the runs) match nothing, every instance is found once, the count and the cut page agree."""
    files = _files(8)
    lake = tmp_path / "lake"
    with DuckDBStore(lake) as st:
        ingest_paths(files, lake, workers=1, store=st)
        st.merge_elements()
        assert ingest_paths(files[:4], lake, workers=1, store=st).replaced == 4
        dead = st.con.execute(
            "SELECT count(*) FROM element_index WHERE iid NOT IN (SELECT iid FROM instance_keys)"
        ).fetchall()[0][0]
        assert dead > 0  # the replaced copies' rows are still stored
        lk = Lake(st)
        assert lk.element_join == elementstore.JOIN
        check_element_filters(lk, files)
        cut = lk.query_arrow(["(0008,0016) = *"], ["SOPInstanceUID"], limit=3)  # SOPClassUID
        assert cut.num_rows == 3
        assert (cut.schema.metadata or {})[b"dicomlake.total"] == str(len(files)).encode()
        # every instance's number is the one instance_keys gives it, and no other instance's
        pairs = st.con.execute(
            "SELECT count(*), count(DISTINCT i._iid) FROM instances i JOIN instance_keys n "
            "ON n.iid = i._iid AND n.SOPInstanceUID = i.SOPInstanceUID"
        ).fetchall()[0]
        assert pairs == (len(files), len(files))


def test_exports_and_copies_never_carry_instance_numbers(tmp_path: Path) -> None:
    """``_iid`` is the DuckDB lake's own: a Parquet lake (read by pyarrow) has no such column, and a
    DuckDB lake imported from it numbers its instances anew."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    files = _files(4)
    lake = tmp_path / "lake"
    ingest_paths(files, lake, workers=1)
    out = tmp_path / "pq"
    r = CliRunner().invoke(app, ["export", "--lake", str(lake), "--format", "lake", "--out", str(out)])
    assert r.exit_code == 0, r.output
    parts = sorted((out / "instances").rglob("*.parquet"))
    assert parts
    for part in parts:
        assert "_iid" not in pq.read_schema(part).names, part
    copy = tmp_path / "copy"
    r = CliRunner().invoke(app, ["import", str(out), "--lake", str(copy)])
    assert r.exit_code == 0, r.output
    with DuckDBStore(copy) as st:
        assert _filter_uids(Lake(st), "InstitutionAddress") == _pydicom_having(files, "InstitutionAddress")


def test_cli_compact_keeps_exactly_the_elements_pydicom_reads(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    files = _files(4)
    lake = tmp_path / "lake"
    ingest_paths(files, lake, workers=1)
    ingest_paths(files, lake, workers=1)  # every instance replaced: its first rows are dead
    before = (lake / "lake.duckdb").stat().st_size
    r = CliRunner().invoke(app, ["compact", str(lake)])
    assert r.exit_code == 0, r.output
    assert "element rows kept" in r.output
    db = lake / "lake.duckdb"
    assert db.stat().st_size < before  # the file was rewritten without its free blocks
    assert db.stat().st_mode & 0o777 == 0o600 and not (lake / "lake.duckdb.compacting").exists()
    con = duckdb.connect(str(db), read_only=True)  # the copy has the views, before any writer opens it
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert {"elements", "element_index"} <= views
        assert con.execute("SELECT count(*) FROM elements").fetchall()[0][0] == sum(
            sum(_pydicom_counts(f).values()) for f in files
        )
    finally:
        con.close()
    with DuckDBStore(lake) as st:
        assert elementstore.count(st.con, "element_data") == sum(sum(_pydicom_counts(f).values()) for f in files)
        _check_against_pydicom(st, files)


def test_two_writers_never_give_two_instances_one_number(tmp_path: Path) -> None:
    """A writer whose last batch was before another writer's *replacement* (the key count
    unchanged) numbers its next instances after the other's: no two instances share an ``iid``,
    so a filter on an attribute only one of them has never finds both."""
    files = _files(3)
    lake = tmp_path / "lake"
    with DuckDBStore(lake) as first:
        ingest_paths(files[:2], lake, workers=1, store=first)
        with DuckDBStore(lake) as second:  # the same lake, in the same process
            assert ingest_paths(files[:1], lake, workers=1, store=second).replaced == 1
        ingest_paths(files[2:], lake, workers=1, store=first)
        shared = first.con.execute("SELECT iid FROM instance_keys GROUP BY iid HAVING count(*) > 1").fetchall()
        assert shared == []
        numbers = first.con.execute("SELECT count(DISTINCT _iid), count(*) FROM instances").fetchall()[0]
        assert numbers == (3, 3)
        for keyword in ("InstitutionAddress", "DateOfLastCalibration", "PatientAddress"):
            assert _filter_uids(Lake(first), keyword) == _pydicom_having(files, keyword), keyword
