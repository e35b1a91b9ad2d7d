"""The store suite on every back end: DuckDB (embedded), PostgreSQL (a real server started on
loopback) and the Parquet lake give the same rows and answer the same filters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dicomlake.errors import ConfigError, QueryError
from dicomlake.lakeschema import INTERNAL_COLUMNS, PARTITION_COLUMNS, TABLES
from dicomlake.query.lake import Lake
from dicomlake.store.open import lake_kind as location_kind
from tests.integration.pg import PostgresCluster, running_cluster

pytestmark = pytest.mark.integration

# columns that record *when* a row was written (differ between two ingests of the same files)
VOLATILE = {"received_at", "rejected_at"}
BACKENDS = ("duckdb", "postgres", "parquet")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    yield from running_cluster()


@pytest.fixture(scope="module")
def pg_lake(pg: PostgresCluster, sample_sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample files ingested through the pipeline into PostgreSQL."""
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.postgres import PostgresStore

    url = pg.create_database("samples")
    with PostgresStore(url) as st:
        ingest_paths(sample_sources, tmp_path_factory.mktemp("pg-quarantine"), workers=2, store=st)
    return url


@pytest.fixture(scope="module")
def parquet_lake(sample_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parquet") / "lake"
    with Lake.open(sample_lake, read_only=True) as lk:
        lk.export(out, "lake")
    return out


@pytest.fixture(scope="module")
def locations(sample_lake: Path, pg_lake: str, parquet_lake: Path) -> dict[str, Any]:
    return {"duckdb": sample_lake, "postgres": pg_lake, "parquet": parquet_lake}


def sorted_table(t: pa.Table, drop: set[str] = VOLATILE) -> pa.Table:
    t = t.select([c for c in t.column_names if c not in drop])
    keys = [(c, "ascending") for c in t.column_names if not pa.types.is_nested(t.schema.field(c).type)]
    return t.take(pc.sort_indices(t, sort_keys=keys))


def read_all(location: Any, table: str) -> pa.Table:
    """Every row; a DuckDB or PostgreSQL lake's without its own instance numbers (``instances._iid``,
    not data: a Parquet lake must not have them, so they are kept there and fail the comparison)."""
    with Lake.open(location, read_only=True) as lk:
        t = lk.store.query(f'SELECT * FROM "{table}"')
    # each engine's own columns, on its side only (a leak into another engine fails the comparison)
    own = {"duckdb": {"_iid"}, "postgres": {"_iid"}, "parquet": set(PARTITION_COLUMNS)}.get(
        location_kind(location), set()
    )
    assert own <= INTERNAL_COLUMNS
    return t.drop_columns([c for c in t.column_names if c in own])


@pytest.mark.parametrize("backend", ["postgres", "parquet"])
@pytest.mark.parametrize("table", TABLES)
def test_store_tables_hold_the_same_rows_as_duckdb(locations: dict[str, Any], backend: str, table: str) -> None:
    want = sorted_table(read_all(locations["duckdb"], table))
    got = read_all(locations[backend], table)
    got = sorted_table(
        got.select(
            want.column_names + [c for c in got.column_names if c not in want.column_names and c not in VOLATILE]
        )
    )
    assert got.column_names == want.column_names
    if backend == "parquet":  # the same Arrow types, exactly
        assert got.schema == want.schema
    else:  # PostgreSQL widens TINYINT depth to SMALLINT; values compare equal
        got = got.cast(want.schema)
    assert got.num_rows == want.num_rows > (0 if table != "rejects" else -1)
    assert got.equals(want)


FILTERS = [
    ["Modality = CT"],
    ["Modality = CT,MR"],
    ["Modality != CT"],
    ["PatientName = *a*"],
    ["PatientID = ?*"],
    ["StudyDate = 20000101-"],
    ["StudyDate = -20050101"],
    ["study_datetime = 19990101-20101231"],
    ["StudyDate = 2004-01-19"],
    ["SliceThickness > 1"],
    ["Rows >= 512", "Modality = CT,MR"],
    ["ImageType = ORIGINAL"],
    ["ImageType = DERIVED"],
    ["KVP > 100"],
    ["Manufacturer = GE*"],
    ["StudyTime = 100000-"],
    ["SOPClassUID = 1.2.840.10008.5.1.4.1.1.2"],
    ["ReferencedSOPSequence.ReferencedSOPClassUID = 1.2.840.10008.5.1.4.1.1.*"],
    ["ConceptNameCodeSequence.CodeMeaning = *Dose*"],
    ['(0019,"GEMS_ACQU_01",10) > 0'],
    ["(0008,0060) = CT"],
    ["WindowCenter > 0"],
    ["ScanOptions = HELICAL*"],
    ["patient_age_years > 40"],
    # filters a Parquet lake also answers by choosing partition folders (ElementJoin.partitions)
    ["StudyDate > 20050101"],
    ["StudyDate < 20050101"],
    ["StudyDate <= 20040119"],
    ["StudyDate = 20040119,19950101"],
    ["Modality = CT", "StudyDate = 20000101-", "SliceThickness > 1"],
    ["Modality = CT,MR", "ConceptNameCodeSequence.CodeMeaning = *Dose*"],
    ["Modality = SR", "ConceptNameCodeSequence.CodeMeaning = *Dose*"],
    ["Modality != CT", "KVP > 100"],
    ["Modality = C*", "StudyDate != 20040119"],
    ["StudyDate = 19950101-20041231", '(0019,"GEMS_ACQU_01",10) > 0'],
    ["Modality = CT", "ReferencedSOPSequence.ReferencedSOPClassUID != 1.2.840.10008.5.1.4.1.1.2"],
]


@pytest.mark.parametrize("backend", ["postgres", "parquet"])
def test_store_filters_select_the_same_instances_on_every_backend(locations: dict[str, Any], backend: str) -> None:
    nonempty = 0
    for where in FILTERS:
        results = []
        for b in ("duckdb", backend):
            with Lake.open(locations[b], read_only=True) as lk:
                t = lk.query_arrow(where, ["SOPInstanceUID", "PatientID", "StudyDate"], limit=100_000)
            results.append(sorted(t.column("SOPInstanceUID").to_pylist()))
        assert results[0] == results[1], where
        nonempty += bool(results[0])
    assert nonempty >= len(FILTERS) - 8  # the filters mostly match something in the samples


@pytest.mark.parametrize("backend", ["postgres", "parquet"])
@pytest.mark.parametrize("level", ["series", "study", "patient"])
def test_store_levels_aggregate_alike(locations: dict[str, Any], backend: str, level: str) -> None:
    from dicomlake.query.lake import LEVEL_KEY

    out = []
    for b in ("duckdb", backend):
        with Lake.open(locations[b], read_only=True) as lk:
            # the key and the aggregates; any_value() of a column that varies in a study may
            # pick a different row on each engine, as the SQL standard allows
            t = lk.query_arrow(["Modality = CT,MR,MG,SR"], select=[LEVEL_KEY[level]], level=level)
            out.append(sorted_table(t).to_pylist())
    assert out[0] == out[1]
    assert out[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_refuses_a_write_through_the_read_only_sql(locations: dict[str, Any], backend: str) -> None:
    with Lake.open(locations[backend], read_only=True) as lk:
        for stmt in ("DELETE FROM instances", "SELECT 1; DROP TABLE instances", "DROP TABLE elements"):
            with pytest.raises(QueryError):
                lk.sql_arrow(stmt)
        assert lk.count() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_serves_dicom_json_alike(locations: dict[str, Any], backend: str) -> None:
    with Lake.open(locations["duckdb"], read_only=True) as lk:
        uids = lk.sql("SELECT SOPInstanceUID FROM instances ORDER BY 1 LIMIT 5")["SOPInstanceUID"].to_list()
        want = [lk.instance_json(u) for u in uids]
    with Lake.open(locations[backend], read_only=True) as lk:
        assert [lk.instance_json(u) for u in uids] == want
        assert lk.instance_json("1.2.3.not.there") is None


@pytest.fixture(params=["duckdb", "postgres"])
def writable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from dicomlake.store.open import open_store

    if request.param == "duckdb":
        st = open_store(tmp_path / "lake")
    else:
        pg = request.getfixturevalue("pg")
        st = open_store(pg.create_database())
    yield st
    st.close()


def _batch(sample_sources: list[Path]) -> tuple[dict[str, pa.Table], list[str]]:
    from dicomlake.ingest.sources import expand

    tasks = [t for t in expand([sample_sources[0]]) if t.path.endswith(("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"))]
    return worker_batch(tasks)


def worker_batch(tasks: list[Any]) -> tuple[dict[str, pa.Table], list[str]]:
    """The tables and accepted paths of one batch of ingest ``tasks``, as a worker makes them."""
    from dicomlake.ingest.worker import WorkerConfig, process_chunk

    cfg = WorkerConfig(
        lake=str(Path("/tmp")),
        columns_file=None,
        inline_max=256,
        max_header_bytes=1 << 26,
        max_zip_member_bytes=1 << 30,
        max_zip_ratio=200.0,
    )
    res = process_chunk(tasks, cfg)
    assert len(res.segments) == 1
    return res.segments[0].tables, res.segments[0].accepted_paths


def test_store_upsert_replaces_an_instance_and_its_rows(writable: Any, sample_sources: list[Path]) -> None:
    tables, accepted = _batch(sample_sources)
    n = tables["instances"].num_rows
    first = writable.write_batch(tables, accepted)
    assert (first.inserted, first.replaced) == (n, 0)
    again = writable.write_batch(tables, accepted)
    assert (again.inserted, again.replaced) == (0, n)
    for name in ("instances", "elements", "dicom_json"):
        got = writable.query(f'SELECT count(*) AS n FROM "{name}"').column("n")[0].as_py()
        assert got == tables[name].num_rows, name
    dup = writable.query(
        "SELECT SOPInstanceUID, count(*) AS n FROM instances GROUP BY SOPInstanceUID HAVING count(*) > 1"
    )
    assert dup.num_rows == 0


def test_store_clears_a_reject_once_the_path_reads(writable: Any) -> None:
    import datetime as dt

    from dicomlake.lakeschema import REJECT_SCHEMA

    rej = pa.Table.from_pylist(
        [
            {
                "source_path": "/x/a.dcm",
                "source": "file",
                "reason": "truncated",
                "size_bytes": 3,
                "sha256": None,
                "quarantine_path": None,
                "rejected_at": dt.datetime(2024, 1, 1),
            }
        ],
        schema=REJECT_SCHEMA,
    )
    writable.write_batch({"rejects": rej}, [])
    writable.write_batch({"rejects": rej}, [])
    assert writable.query("SELECT count(*) AS n FROM rejects").column("n")[0].as_py() == 1
    writable.write_batch({}, ["/x/a.dcm"])
    assert writable.query("SELECT count(*) AS n FROM rejects").column("n")[0].as_py() == 0


def test_store_parquet_lake_refuses_writes(parquet_lake: Path) -> None:
    from dicomlake.store.open import open_store

    st = open_store(parquet_lake)
    with pytest.raises(ConfigError, match="Parquet lake"):
        st.write_batch({}, [])
    st.close()


def test_store_open_picks_the_backend_from_the_location(locations: dict[str, Any], tmp_path: Path) -> None:
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.open import lake_kind
    from dicomlake.store.parquet import ParquetStore
    from dicomlake.store.postgres import PostgresStore

    assert lake_kind(locations["duckdb"]) == "duckdb"
    assert lake_kind(locations["parquet"]) == "parquet"
    assert lake_kind(locations["postgres"]) == "postgres"
    assert lake_kind(Path(locations["postgres"])) == "postgres"  # a URL folded by pathlib still works
    assert lake_kind(tmp_path / "new") == "duckdb"
    for b, cls in (("duckdb", DuckDBStore), ("postgres", PostgresStore), ("parquet", ParquetStore)):
        with Lake.open(locations[b], read_only=True) as lk:
            assert isinstance(lk.store, cls)
    with pytest.raises(ConfigError, match="no lake"):
        Lake.open(tmp_path / "missing", read_only=True)


# DuckDB-dialect statements as users (``dicomlake sql``) and the query layer write them; on
# PostgreSQL sqlglot translates them (store/lakesql.py) and DuckDB's answer is the oracle.
DIALECT: list[tuple[str, list[object] | None]] = [
    # the README example: GROUP BY ALL expanded (PostgreSQL refused it before); NULL kept
    ("SELECT Modality, count(*) FROM instances GROUP BY ALL", None),
    # unquoted identifiers in any case, as DuckDB resolves them; an output name keeps its case
    ("SELECT modality AS Mod, count(*) AS N FROM Instances i WHERE I.rows > ? GROUP BY ALL", [100]),
    ("WITH Big AS (SELECT sopinstanceuid, KVP FROM instances WHERE kvp > 0) SELECT count(*) FROM big", None),
    # dose_events' kvp/laterality are not instances' KVP/Laterality (the token rewriter took them for those)
    ("SELECT d.kvp, d.laterality, i.KVP FROM dose_events d JOIN instances i USING (SOPInstanceUID)", None),
    # a literal % and the modulo operator beside psycopg's parameters
    ("SELECT count(*) FROM instances WHERE PatientID LIKE '%' AND Rows % 2 = ? AND Modality <> '50%'", [0]),
    # DuckDB sorts NULL last in DESC as in ASC; PostgreSQL sorts it first unless told
    ("SELECT StudyDate FROM instances ORDER BY StudyDate DESC LIMIT 140", None),
    # the DuckDB functions the lake's PostgreSQL schema defines (migration 2) and sqlglot's rewrites
    ("SELECT count(*) FROM instances WHERE list_contains(string_split(ImageType, '\\'), ?)", ["ORIGINAL"]),
    ("SELECT strftime(StudyDate, '%Y-%m-%d') AS d, count(*) FROM instances GROUP BY 1", None),
    ("SELECT Modality, median(Rows) AS m, min(epoch(study_datetime)) AS e FROM instances GROUP BY Modality", None),
    ("SELECT SOPInstanceUID, median(Rows) OVER (PARTITION BY Modality) AS m FROM instances", None),
    (
        "SELECT SOPInstanceUID FROM instances QUALIFY row_number() OVER (PARTITION BY Modality ORDER BY SOPInstanceUID) = 1",
        None,
    ),
    ("SELECT count(*) FROM instances WHERE study_datetime > TIMESTAMP '2001-01-01' + INTERVAL 1 DAY", None),
    ("SELECT CAST(KVP AS DOUBLE) / 3 AS k, round(SliceThickness, 2) AS t FROM instances", None),
]


@pytest.mark.parametrize("sql,params", DIALECT)
def test_store_duckdb_sql_gives_duckdb_answers_on_postgres(
    locations: dict[str, Any], sql: str, params: list[object] | None
) -> None:
    out = []
    for b in ("duckdb", "postgres"):
        with Lake.open(locations[b], read_only=True) as lk:
            rows = [
                tuple(round(v, 9) if isinstance(v, float) else v for v in r.values())
                for r in lk.sql_arrow(sql, params, max_rows=0).to_pylist()
            ]
        out.append(rows if "ORDER BY" in sql.split(")")[-1] else sorted(rows, key=repr))
    assert out[0] == out[1]
    assert out[0]
