"""The Spark engine (PySpark, local[2]) against the embedded engine: identical rows and types,
a Parquet lake that `dicomlake query` and `audit` read, and a clean commit."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dicomlake.lakeschema import INTERNAL_COLUMNS, PARTITION_COLUMNS, TABLES
from dicomlake.query.lake import Lake
from tests.test_parquet_spark35 import lake_problems
from tests.test_store_backends import VOLATILE, sorted_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENERATED_N = int(os.environ.get("DICOMLAKE_TEST_SPARK_N", "400"))


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        msg = "no Java runtime: apt-get install default-jre-headless (make install does it)"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    try:
        import pyspark  # noqa: F401
    except ImportError:
        msg = "PySpark is not installed (pip install 'dicomlake[spark]'; make install does it)"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    from dicomlake.ingest.spark import spark_session

    session = spark_session("local[2]", app_name="dicomlake-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = pytest.importorskip("bench.corpus")
    return Path(corpus.generate(tmp_path_factory.mktemp("generated"), GENERATED_N, seed=7))


def _embedded(sources: list[Path], lake: Path) -> Path:
    from dicomlake.ingest.pipeline import ingest_paths

    # one worker: the embedded engine's "later copy wins" then follows the source order exactly
    ingest_paths(sources, lake, workers=1)
    return lake


def _compare(duck: Path, parquet: Path) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        with Lake.open(duck, read_only=True) as a, Lake.open(parquet, read_only=True) as b:
            want = a.store.query(f'SELECT * FROM "{table}"')
            got = b.store.query(f'SELECT * FROM "{table}"')
        # the DuckDB lake's own instance numbers (instances._iid) are not data: a Parquet lake has none
        want = want.drop_columns([c for c in want.column_names if c in INTERNAL_COLUMNS])
        # the Parquet lake's views show its partition keys (folders, not file columns)
        got = got.drop_columns([c for c in got.column_names if c in PARTITION_COLUMNS])
        assert got.schema == want.schema, table  # same column names, order and types
        w, g = sorted_table(want), sorted_table(got)
        assert g.num_rows == w.num_rows, table
        assert g.equals(w), table
        counts[table] = w.num_rows
    return counts


@pytest.fixture(scope="module")
def spark_lakes(
    spark: Any, sample_sources: list[Path], generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Any]]:
    from dicomlake.ingest.spark import ingest_spark

    out = {}
    for corpus, sources in (("samples", sample_sources), ("generated", [generated])):
        lake = tmp_path_factory.mktemp(f"spark-{corpus}") / "lake"
        out[corpus] = (lake, ingest_spark(sources, lake, spark=spark))
    return out


@pytest.mark.parametrize("corpus", ["samples", "generated"])
def test_spark_engine_gives_the_embedded_rows(
    spark_lakes: dict[str, tuple[Path, Any]],
    corpus: str,
    sample_sources: list[Path],
    generated: Path,
    tmp_path: Path,
) -> None:
    sources = sample_sources if corpus == "samples" else [generated]
    duck = _embedded(sources, tmp_path / "duck")
    lake, rep = spark_lakes[corpus]
    counts = _compare(duck, lake)
    assert counts["instances"] == rep.unique_instances > 0
    if corpus == "generated":
        assert counts["instances"] == GENERATED_N
    print(f"{corpus}: identical rows {counts}; {rep.duplicates_resolved} older copies dropped")
    # staging is gone; the lake is partitioned by modality and month
    out = lake
    assert not (out / "_staging").exists()
    parts = {p.name.split("=")[0] for p in (out / "instances").iterdir()}
    assert parts == {"part_modality"}
    assert any(p.name.startswith("part_month=") for p in next((out / "instances").iterdir()).iterdir())


def test_spark_engine_cli_writes_a_lake_query_and_audit_read(
    spark: Any, sample_sources: list[Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    out = tmp_path / "lake"
    runner = CliRunner()
    small = tmp_path / "small"
    small.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "MR_truncated.dcm", "test-SR.dcm"):
        shutil.copy(sample_sources[0] / name, small / name)
    (small / "broken.dcm").write_bytes(b"\x00" * 10)  # a truncated transfer: rejected, kept
    res = runner.invoke(app, ["ingest", "--engine", "spark", str(small), "--out", str(out)])
    assert res.exit_code in (0, 1), res.output  # 1: the samples include unreadable files
    assert (out / "_dicomlake_lake.json").is_file()
    res = runner.invoke(
        app,
        [
            "query",
            "--lake",
            str(out),
            "--where",
            "Modality = CT",
            "--select",
            "SOPInstanceUID,Modality",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    with Lake.open(out, read_only=True) as lk:
        n_ct = lk.query("Modality = CT").height
        assert lk.sql("SELECT count(*) AS n FROM rejects")["n"][0] > 0
    assert n_ct > 0 and res.output.count('"Modality": "CT"') == n_ct
    res = runner.invoke(app, ["audit", "--help"])
    assert res.exit_code == 0
    for name in ("ct-dose", "workflow", "quality"):
        res = runner.invoke(app, ["audit", name, "--lake", str(out), "--out", str(tmp_path / f"{name}.html")])
        assert res.exit_code in (0, 1), (name, res.output)
        assert (tmp_path / f"{name}.html").is_file()
    assert res.exit_code in (0, 1), res.output
    # a second run into the same lake appends: the same files replace their own rows, no duplicates
    with Lake.open(out, read_only=True) as lk:
        before = lk.sql("SELECT count(*) AS n, count(DISTINCT SOPInstanceUID) AS u FROM instances").row(0)
    res = runner.invoke(app, ["ingest", "--engine", "spark", str(small), "--out", str(out)])
    assert res.exit_code in (0, 1), res.output
    with Lake.open(out, read_only=True) as lk:
        after = lk.sql("SELECT count(*) AS n, count(DISTINCT SOPInstanceUID) AS u FROM instances").row(0)
    assert after == before and before[0] == before[1] > 0
    assert lake_problems(out) == []  # the append's rewritten files too: Spark 3.5 reads them
    # a folder that is not a lake this engine wrote is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    res = runner.invoke(app, ["ingest", "--engine", "spark", str(small), "--out", str(other)])
    assert res.exit_code == 2 and "no lake written by the Spark engine" in res.output


@pytest.mark.parametrize("corpus", ["samples", "generated"])
def test_spark_engine_lake_holds_only_types_spark35_reads(
    spark_lakes: dict[str, tuple[Path, Any]], corpus: str
) -> None:
    """No Parquet TIME, nanosecond or unsigned column, and the footer that lets Spark 3.x read
    a date before 1582 (tests/test_parquet_spark35.py; Spark 3.5.9 read such a lake by hand)."""
    assert lake_problems(spark_lakes[corpus][0]) == []


def test_spark_engine_partitions_follow_modality_and_study_month(spark_lakes: dict[str, tuple[Path, Any]]) -> None:
    import pyarrow.dataset as ds

    out = spark_lakes["generated"][0]
    d = ds.dataset(out / "instances", format="parquet", partitioning="hive")
    t = d.to_table(columns=["Modality", "StudyDate", "part_modality", "part_month"])
    months = pa.compute.strftime(t.column("StudyDate").cast(pa.timestamp("s")), format="%Y-%m")
    assert t.column("part_modality").to_pylist() == [m or "_none" for m in t.column("Modality").to_pylist()]
    assert t.column("part_month").to_pylist() == [m or "_none" for m in months.to_pylist()]
    # elements live in their instance's partition
    e = ds.dataset(out / "elements", format="parquet", partitioning="hive").to_table(
        columns=["SOPInstanceUID", "part_modality", "part_month"]
    )
    want = dict(zip(t.column("part_modality").to_pylist(), t.column("part_month").to_pylist(), strict=False))
    assert set(e.column("part_modality").to_pylist()) <= set(want)
    assert VOLATILE  # (columns compared elsewhere)


def test_task_buffer_is_bounded_by_bytes(generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task writes once its buffer holds FLUSH_BYTES, however few instances that is; every
    row is written once (the task's writer run in-process, no Spark)."""
    import pyarrow.dataset as ds

    from dicomlake.ingest import spark
    from dicomlake.ingest.sources import expand
    from dicomlake.ingest.worker import WorkerConfig, process_chunk

    monkeypatch.setattr(spark, "FLUSH_BYTES", 1 << 15)
    tasks = expand([generated])[:12]
    tw = spark._TaskWriter(str(tmp_path / "stage"), "p0", "part-0")
    cfg = WorkerConfig(
        lake=str(tmp_path / "lake"),
        columns_file=None,
        inline_max=1024,
        max_header_bytes=64 << 20,
        max_zip_member_bytes=1 << 30,
        max_zip_ratio=100.0,
    )
    sizes = []
    for i in range(0, len(tasks), 3):
        res = process_chunk(tasks[i : i + 3], cfg)
        for seg in res.segments:
            sizes.append(sum(t.nbytes for t in seg.tables.values()))
            tw.add(seg.tables, list(range(i, i + seg.tables["instances"].num_rows)))
    tw.close()
    assert len(tw.stages) > 1  # flushed on bytes: 20,000 instances were never reached
    assert tw.peak_bytes < (1 << 15) + max(sizes)  # one chunk over the bound at most
    n = sum(ds.dataset(tmp_path / "stage" / s / "instances", partitioning="hive").count_rows() for s in tw.stages)
    assert n == len(tw.written) == 12
