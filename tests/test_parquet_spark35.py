"""A Parquet lake plain engines read (issue 17): every file's physical schema uses only types
that Spark 3.5's Parquet reader reads with no settings, and the footer lets Spark 3.x read
dates before 1582 without its rebase exception.

Spark 3.5 itself is too large for CI; it was run once by hand (docs/scaling.md, "Reading the
lake with other engines"), and this check holds the files to what it read. The allowed types
follow Spark's ``ParquetToSparkSchemaConverter.convertPrimitiveField``
(sql/core/src/main/scala/org/apache/spark/sql/execution/datasources/parquet/
ParquetSchemaConverter.scala, branch-3.5): INT64 ``TIME`` and ``TIMESTAMP(NANOS)`` are an
"Illegal Parquet type" (nanoseconds read only with spark.sql.legacy.parquet.nanosAsLong),
unsigned integers read as a wider type (UINT64 as decimal(20,0)), INT96 is the legacy
timestamp with rebase rules of its own. The rebase rule for dates and timestamps is
``DataSourceUtils.getRebaseSpec`` (sql/core/.../datasources/DataSourceUtils.scala).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

# physical type -> logical types (pyarrow's names) Spark 3.5 reads as the same kind of value
SPARK35_READS: dict[str, set[str]] = {
    "BOOLEAN": {"None"},
    "FLOAT": {"None"},
    "DOUBLE": {"None"},
    "INT32": {"None", "Int8", "Int16", "Int32", "Date", "Decimal"},
    "INT64": {"None", "Int64", "Decimal", "Timestamp[ms]", "Timestamp[us]"},
    "BYTE_ARRAY": {"None", "String", "Enum", "JSON", "BSON", "Decimal"},
    "FIXED_LEN_BYTE_ARRAY": {"None", "Decimal"},
}


def _logical(col: pq.ColumnSchema) -> str:
    lt = json.loads(col.logical_type.to_json())
    kind = str(lt.get("Type", "None"))
    if kind == "Int":
        return f"{'Int' if lt['isSigned'] else 'UInt'}{lt['bitWidth']}"
    if kind == "Timestamp":
        unit = {"milliseconds": "ms", "microseconds": "us"}.get(lt["timeUnit"], lt["timeUnit"])
        return f"Timestamp[{unit}]"
    return kind


def spark35_problems(path: Path) -> list[str]:
    """What in one Parquet file Spark 3.5 would refuse or read differently (empty: nothing)."""
    f = pq.ParquetFile(path)
    out = []
    for i in range(f.metadata.num_columns):
        col = f.schema.column(i)
        logical = _logical(col)
        if logical not in SPARK35_READS.get(col.physical_type, set()):
            out.append(f"{path.name}: {col.path} is {col.physical_type} ({logical})")
    meta = f.metadata.metadata or {}
    version = meta.get(b"org.apache.spark.version", b"").decode()
    if not version or version < "3.0.0" or b"org.apache.spark.legacyDateTime" in meta:
        out.append(f"{path.name}: no org.apache.spark.version >= 3.0.0 (Spark 3.x refuses dates before 1582)")
    return out


def lake_problems(lake: Path) -> list[str]:
    files = sorted(lake.rglob("*.parquet"))
    assert files, lake
    return [p for f in files for p in spark35_problems(f)]


def test_the_check_refuses_what_spark35_cannot_read(tmp_path: Path) -> None:
    bad = pa.table(
        {
            "t": pa.array([dt.time(10, 11, 12)], pa.time64("us")),
            "u": pa.array([1], pa.uint64()),
            "ns": pa.array([1], pa.timestamp("ns")),
            "ok": pa.array([dt.date(1111, 11, 11)], pa.date32()),
        }
    )
    pq.write_table(bad, tmp_path / "bad.parquet", coerce_timestamps=None)
    problems = spark35_problems(tmp_path / "bad.parquet")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "t is INT64 (Time)",
        "u is INT64 (UInt64)",
        "ns is INT64 (Timestamp[nanoseconds])",
        "no org.apache.spark.version >= 3.0.0 (Spark 3.x refuses dates before 1582)",
    ]


def test_lake_writer_writes_what_spark35_reads(tmp_path: Path) -> None:
    """A time of day and a date before 1582 through the one writer of the format: int64
    microseconds and the footer key; DuckDB and pyarrow read the same values."""
    from dicomlake.store.parquet import ParquetLakeWriter

    table = pa.table(
        {
            "SOPInstanceUID": ["1.2.3"],
            "StudyTime": pa.array([dt.time(10, 11, 12, 500)], pa.time64("us")),
            "PatientBirthDate": pa.array([dt.date(1111, 11, 11)], pa.date32()),
            "part_modality": ["CT"],
            "part_month": ["2024-03"],
        }
    )
    writer = ParquetLakeWriter(tmp_path / "lake", "t")
    writer.write("instances", table)
    writer.write("instances", iter(table.to_batches()), table.schema)  # the streamed path (export)
    assert lake_problems(tmp_path / "lake") == []
    glob = str(tmp_path / "lake" / "instances" / "**" / "*.parquet")
    got = duckdb.execute(
        f"SELECT StudyTime, PatientBirthDate, part_modality FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()
    assert got == [(36_672_000_500, dt.date(1111, 11, 11), "CT")] * 2
    read = ds.dataset(tmp_path / "lake" / "instances", format="parquet", partitioning="hive").to_table()
    assert read.schema.field("StudyTime").type == pa.int64()
    assert read.schema.field("StudyTime").metadata == {b"dicomlake": b"time-us"}


def test_exported_lake_is_readable_by_spark35(sample_sources: list[Path], tmp_path: Path) -> None:
    """`export --format lake` of real headers (StudyTime and friends, a birth date of
    1111-11-11 in pydicom's examples_overlay.dcm): every file passes, and dicomlake reads
    the times back as TIME, equal to the embedded lake's."""
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.query.lake import Lake

    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm", "rtdose.dcm"):
        shutil.copy(sample_sources[0] / name, src / name)
    ingest_paths([src], tmp_path / "duck", workers=1, progress=False)
    sql = "SELECT SOPInstanceUID, StudyTime, PatientBirthDate FROM instances ORDER BY 1"
    with Lake.open(tmp_path / "duck", read_only=True) as lk:
        lk.export(tmp_path / "lake", fmt="lake")
        want = lk.store.query(sql)
    assert lake_problems(tmp_path / "lake") == []
    assert dt.date(1111, 11, 11) in want.column("PatientBirthDate").to_pylist()
    with Lake.open(tmp_path / "lake", read_only=True) as lk:
        got = lk.store.query(sql)
    assert got.equals(want)
    assert pa.types.is_time(got.schema.field("StudyTime").type)
    assert got.column("StudyTime").null_count < got.num_rows


@pytest.mark.parametrize("injected", [pa.time64("us"), pa.time32("ms")])
def test_a_time_column_of_any_unit_is_converted(injected: pa.DataType, tmp_path: Path) -> None:
    from dicomlake.store.parquet import ParquetLakeWriter

    t = pa.table({"SOPInstanceUID": ["1"], "x": pa.array([dt.time(1, 2, 3)], injected)})
    ParquetLakeWriter(tmp_path / "lake", "t").write("rejects", t)
    assert lake_problems(tmp_path / "lake") == []
    assert pq.read_table(tmp_path / "lake" / "rejects").column("x").to_pylist() == [3_723_000_000]
