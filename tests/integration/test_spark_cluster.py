"""The Spark engine on a real standalone cluster (a master and two one-core workers on
127.0.0.1, executors in their own processes and folders) against the embedded engine on
the same files: identical tables, also under ``--deid basic`` with the same key."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomlake.query.lake import Lake
from tests.integration.spark_cluster import SparkCluster, spark_cluster  # noqa: F401  (fixture)
from tests.integration.test_spark_engine import _compare, _embedded

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS_FILES = 14
SECRET = "spark-cluster-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster_spark(spark_cluster: SparkCluster) -> Iterator[Any]:  # noqa: F811
    from pyspark.sql import SparkSession

    from dicomlake.ingest.spark import spark_session

    active = SparkSession.getActiveSession()
    if active is not None:  # one SparkContext per process: another module's local session
        active.stop()
    session = spark_session(spark_cluster.url, app_name="dicomlake-cluster-tests", **spark_cluster.conf())
    yield session
    session.stop()


@pytest.fixture(scope="module")
def corpus(sample_sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 14 smallest OpenREM sample files (DX/PX/CT images, RDSRs, ESRs; ~90 kB) in a folder
    of their own: small, so the cluster runs stay within seconds on a loaded machine."""
    src = next(p for p in sample_sources if p.name == "corpus") / "openrem"
    dest = tmp_path_factory.mktemp("cluster-input") / "openrem"
    dest.mkdir()
    for f in sorted(src.glob("*.dcm"), key=lambda f: (f.stat().st_size, f.name))[:CORPUS_FILES]:
        shutil.copy(f, dest / f.name)
    return dest


def _ids(folder: Path) -> dict[str, set[str]]:
    """The identifying values of the input, as pydicom reads them (the oracle)."""
    out: dict[str, set[str]] = {"PatientID": set(), "PatientName": set(), "StudyInstanceUID": set()}
    for f in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for k in out:
            v = str(ds.get(k, "") or "")
            if v:
                out[k].add(v)
    return out


def test_cluster_reads_a_relative_input_like_the_embedded_engine(
    cluster_spark: Any, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomlake.ingest.spark import ingest_spark

    assert cluster_spark.sparkContext.master.startswith("spark://127.0.0.1:")
    n_files = len(list(corpus.rglob("*.dcm")))
    duck = _embedded([corpus], tmp_path / "duck")
    monkeypatch.chdir(corpus.parent)  # the executors' folders are their own: "openrem" means nothing there
    rep = ingest_spark(["openrem"], "lake", spark=cluster_spark)
    assert rep.files == n_files
    assert rep.rejected == 0, rep.notes[:3]
    counts = _compare(duck, corpus.parent / "lake")
    assert counts["instances"] == n_files == rep.unique_instances
    assert counts["dose_events"] > 0
    with Lake.open(corpus.parent / "lake", read_only=True) as lk:
        paths = lk.sql("SELECT DISTINCT source_path FROM instances")["source_path"].to_list()
    assert all(os.path.isabs(p) and Path(p).is_file() for p in paths)
    _plain_engines_read(cluster_spark, corpus.parent / "lake", counts)


def _plain_engines_read(spark: Any, lake: Path, counts: dict[str, int]) -> None:
    """Spark without special settings, DuckDB's read_parquet and pyarrow read every table;
    a time of day is int64 microseconds since midnight (pydicom's reading of StudyTime)."""
    import datetime as dt

    import duckdb
    import pyarrow.dataset as ds

    assert spark.conf.get("spark.sql.timeType.enabled", "false") != "true"
    for table, n in counts.items():
        folder = lake / table
        if not n:
            continue
        assert spark.read.parquet(str(folder)).count() == n, table
        glob = str(folder / "**" / "*.parquet")
        assert duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)").fetchall() == [
            (n,)
        ]
        assert ds.dataset(folder, format="parquet", partitioning="hive").count_rows() == n, table
    rows = spark.read.parquet(str(lake / "instances")).select("source_path", "StudyTime").collect()
    checked = 0
    for r in rows:
        raw = str(pydicom.dcmread(r["source_path"], stop_before_pixels=True).get("StudyTime", "") or "")
        if raw and r["StudyTime"] is not None:
            t = dt.time.fromisoformat(raw[:2] + ":" + raw[2:4] + ":" + raw[4:6]) if len(raw) >= 6 else None
            if t is not None:
                assert r["StudyTime"] // 1_000_000 == t.hour * 3600 + t.minute * 60 + t.second, raw
                checked += 1
    assert checked > 0


def test_cluster_deid_matches_the_embedded_engine(
    cluster_spark: Any, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.ingest.spark import ingest_spark

    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", SECRET)
    duck = tmp_path / "duck"
    ingest_paths([corpus], duck, workers=1, deid="basic")
    lake = tmp_path / "spark"
    rep = ingest_spark([corpus], lake, spark=cluster_spark, deid="basic")
    assert rep.rejected == 0, rep.notes[:3]
    counts = _compare(duck, lake)  # every table, every column, the same Arrow types: byte for byte
    assert counts["instances"] > 0
    orig = _ids(corpus)
    assert orig["PatientID"] and orig["StudyInstanceUID"]
    with Lake.open(lake, read_only=True) as lk:
        got = lk.sql("SELECT PatientID, PatientName, StudyInstanceUID, StudyDate, source_path FROM instances")
    for col in ("PatientID", "PatientName", "StudyInstanceUID"):
        values = {v for v in got[col].to_list() if v}
        assert not values & orig[col], col  # none of the input's identifiers reached the lake
    assert all(p.startswith("deid:") for p in got["source_path"].to_list())
    # and the lake's bytes hold none of them either
    blob = b"".join(f.read_bytes() for f in lake.rglob("*.parquet"))
    for v in orig["PatientID"] | orig["StudyInstanceUID"]:
        if len(v) >= 6:
            assert v.encode() not in blob, v


@pytest.mark.parametrize(
    "extra",
    [["--workers", "2"], ["--batch-size", "10"], ["--quarantine", "q"]],
)
def test_spark_engine_refuses_options_that_do_not_apply(extra: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["ingest", "--engine", "spark", str(tmp_path / "in"), "--out", "o", *extra])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and extra[0] in res.output and "does not apply" in res.output, res.output
    assert "Traceback" not in res.output


def test_spark_deid_without_a_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    monkeypatch.delenv("DICOMLAKE_DEID__SECRET", raising=False)
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(
        app, ["ingest", "--engine", "spark", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--deid", "basic"]
    )
    assert res.exit_code == 2 and "DICOMLAKE_DEID__SECRET" in res.output, res.output


def test_cluster_summary_counts_every_older_copy_dropped(cluster_spark: Any, corpus: Path, tmp_path: Path) -> None:
    """Copies of one instance in one task (dropped there) and across tasks are all counted."""
    from dicomlake.ingest.spark import ingest_spark

    files = sorted(corpus.glob("*.dcm"))[:3]
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(files):
        shutil.copy(f, src / f"{i}-a.dcm")
    shutil.copy(files[0], src / "0-b.dcm")  # same chunk, same task: dropped inside the task
    shutil.copy(files[0], src / "0-c.dcm")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sorted(src.glob("*.dcm"))]
    rep = ingest_spark([src], tmp_path / "lake", spark=cluster_spark)
    assert rep.instances == len(uids) == 5
    assert rep.unique_instances == len(set(uids)) == 3
    assert rep.duplicates_resolved == len(uids) - len(set(uids)) == 2
    with Lake.open(tmp_path / "lake", read_only=True) as lk:
        kept = lk.sql("SELECT source_path FROM instances WHERE SOPInstanceUID = ?", [uids[0]])
    assert kept["source_path"].to_list() == [str(src / "0-c.dcm")]  # the copy read last wins


def test_cluster_failed_run_is_one_line_and_leaves_no_staging(
    cluster_spark: Any, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task fails (a broken columns file, read on the executors): the CLI prints one
    error line naming the cause and a log file, exits 1, and leaves no staging behind."""
    from typer.testing import CliRunner

    from dicomlake.cli.main import app
    from dicomlake.config import reset_settings_cache

    bad = tmp_path / "columns.toml"
    bad.write_text("this is = = not TOML\n", encoding="utf-8")
    monkeypatch.setenv("DICOMLAKE_COLUMNS_FILE", str(bad))
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", SECRET)  # the closure carries it; it must not be printed
    reset_settings_cache()
    try:
        out = tmp_path / "lake"
        res = CliRunner().invoke(app, ["ingest", "--engine", "spark", str(corpus), "--out", str(out)])
    finally:
        monkeypatch.delenv("DICOMLAKE_COLUMNS_FILE")
        reset_settings_cache()
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) <= 3 and "Spark job failed" in res.output, res.output  # rich may wrap the one line
    assert "Traceback" not in res.output and "py4j" not in res.output.lower() and "at org.apache" not in res.output
    assert SECRET not in res.output
    assert not (out / "_staging").exists()
    assert not (out / "instances").exists()
    logs = list((out / "reports").glob("*-failed.log"))
    assert len(logs) == 1 and str(logs[0].name) in res.output.replace("\n", "")
    assert "Traceback" in logs[0].read_text(encoding="utf-8")


def test_cluster_append_run_keeps_the_newest_copy(
    cluster_spark: Any, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run into a Spark lake adds its instances; an instance already there is replaced
    by the copy this run read (a corrected re-send), with its elements; of two copies within
    the run, the one read last stays. The driver takes part only through counts: no result it
    collects is longer than one row per task, and it never opens a Parquet file (the
    executors find, drop and count the older copies)."""
    import pyarrow.parquet as pq
    from pyspark import RDD
    from pyspark.sql.classic.dataframe import DataFrame

    from dicomlake.ingest.spark import ingest_spark

    files = sorted(corpus.glob("*.dcm"))[:5]
    first, second = tmp_path / "day1", tmp_path / "day2"
    first.mkdir()
    (second / "sub").mkdir(parents=True)
    for f in files[:3]:
        shutil.copy(f, first / f.name)
    for f in files[3:]:
        shutil.copy(f, second / f.name)
    shutil.copy(files[4], second / "sub" / "again.dcm")  # a later copy within the run (another task)
    ds = pydicom.dcmread(files[0])
    ds.StudyDescription = "CORRECTED RE-SEND"
    ds.save_as(second / "resent.dcm")
    lake = tmp_path / "lake"
    ingest_spark([first], lake, spark=cluster_spark)

    sizes: list[int] = []
    for cls in (DataFrame, RDD):
        for name in ("collect", "toLocalIterator"):

            def spy(self: Any, *a: Any, _real: Any = getattr(cls, name), **k: Any) -> Any:
                out = list(_real(self, *a, **k))
                sizes.append(len(out))
                return out

            monkeypatch.setattr(cls, name, spy)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the driver read a Parquet file")

    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(pq, "ParquetFile", refuse)
    rep = ingest_spark([second], lake, spark=cluster_spark)
    monkeypatch.undo()
    assert sizes and max(sizes) <= rep.tasks < rep.unique_instances == 3, (sizes, rep.tasks)  # was 3 UIDs collected
    assert rep.instances == 4 and rep.duplicates_resolved == 1 and rep.replaced == 1
    uid = str(ds.SOPInstanceUID)
    again = str(pydicom.dcmread(files[4], stop_before_pixels=True).SOPInstanceUID)
    with Lake.open(lake, read_only=True) as lk:
        n = lk.sql("SELECT count(*) AS n, count(DISTINCT SOPInstanceUID) AS u FROM instances").row(0)
        desc = lk.sql("SELECT StudyDescription FROM instances WHERE SOPInstanceUID = ?", [uid])
        el = lk.sql("SELECT count(*) AS n FROM elements WHERE SOPInstanceUID = ?", [uid])
        want = lk.sql("SELECT element_count FROM instances WHERE SOPInstanceUID = ?", [uid])["element_count"][0]
        runs = lk.sql("SELECT count(*) AS n FROM ingest_runs")["n"][0]
        path = lk.sql("SELECT source_path FROM instances WHERE SOPInstanceUID = ?", [again])["source_path"].to_list()
        json_rows = lk.sql("SELECT count(*) AS n, count(DISTINCT SOPInstanceUID) AS u FROM dicom_json").row(0)
    assert n == (5, 5) and json_rows == (5, 5)
    assert desc["StudyDescription"].to_list() == ["CORRECTED RE-SEND"]
    assert el["n"][0] == want > 0  # the older copy's elements are gone
    assert path == [str(second / "sub" / "again.dcm")]
    assert runs == 2
    assert not (lake / "_staging").exists()


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3 server (moto, on 127.0.0.1) and the AWS_* settings that address it; the
    driver hands them to the executors with the tasks."""
    import socket

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        from tests.support import missing

        missing("moto is not installed (the test dependency group: make install)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "dicomlake-test",
        "AWS_SECRET_ACCESS_KEY": "dicomlake-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    try:
        yield endpoint
    finally:
        server.stop()


def test_cluster_reads_and_writes_s3(
    cluster_spark: Any, corpus: Path, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Input DICOM files in one bucket, the lake written to another (s3a:// as Hadoop names it):
    the rows read back from the bucket with pyarrow hold what pydicom reads in the same files,
    and nothing is written to a local folder named like the URI."""
    import pyarrow.dataset as pds
    import pyarrow.fs as pafs
    from typer.testing import CliRunner

    from dicomlake.cli.main import app

    s3 = pafs.S3FileSystem(
        endpoint_override=s3_server.split("//", 1)[1], scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    s3.create_dir("dicom-in")
    s3.create_dir("dicom-out")
    files = sorted(corpus.glob("*.dcm"))[:6]
    for f in files:
        with s3.open_output_stream(f"dicom-in/openrem/{f.name}") as fh:
            fh.write(f.read_bytes())
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        app, ["ingest", "--engine", "spark", "s3a://dicom-in/openrem/", "--out", "s3a://dicom-out/lake"]
    )
    assert res.exit_code == 0, res.output
    assert list(tmp_path.iterdir()) == []  # no local "s3a:" folder, no local report

    got = (
        pds.dataset("dicom-out/lake/instances", filesystem=s3, format="parquet", partitioning="hive")
        .to_table(columns=["SOPInstanceUID", "Modality", "PatientID", "StudyDate", "source_path", "size_bytes"])
        .to_pylist()
    )
    by_uid = {r["SOPInstanceUID"]: r for r in got}
    assert len(got) == len(by_uid) == len(files)
    for f in files:  # the oracle: pydicom's reading of the same files
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        row = by_uid[str(ds.SOPInstanceUID)]
        assert row["source_path"] == f"s3a://dicom-in/openrem/{f.name}"
        assert row["Modality"] == (ds.get("Modality") or None)
        assert row["PatientID"] == (str(ds.get("PatientID", "")) or None)
        assert row["size_bytes"] == f.stat().st_size
        if ds.get("StudyDate"):
            assert row["StudyDate"].strftime("%Y%m%d") == ds.StudyDate
    names = [i.path for i in s3.get_file_info(pafs.FileSelector("dicom-out/lake", recursive=True))]
    assert "dicom-out/lake/_dicomlake_lake.json" in names
    assert not [n for n in names if "/_staging" in n]
    assert [n for n in names if n.startswith("dicom-out/lake/reports/ingest-") and n.endswith(".json")]
    n_elements = pds.dataset("dicom-out/lake/elements", filesystem=s3, format="parquet", partitioning="hive")
    assert n_elements.count_rows() > 0


def test_dropping_older_copies_on_s3_puts_each_object_whole(s3_server: str) -> None:
    """The replacement job's step for one file on an object store (no rename there): the object
    is replaced by one PUT of the kept rows, no temporary object is left, an object left with
    no row is deleted; read back from the local S3 server with pyarrow."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from dicomlake.ingest.spark import _rewrite_file

    s3 = pafs.S3FileSystem(
        endpoint_override=s3_server.split("//", 1)[1], scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    s3.create_dir("lake")
    rows = pa.table({"SOPInstanceUID": ["1.2.3", "1.2.4", "1.2.3"], "n": [1, 2, 3]})
    a, b = "lake/elements/part_modality=CT/a.parquet", "lake/elements/part_modality=CT/b.parquet"
    pq.write_table(rows, a, filesystem=s3)
    pq.write_table(rows.slice(0, 1), b, filesystem=s3)
    drop = pa.array(["1.2.3"], pa.string())
    assert _rewrite_file(s3, a, a, drop, local=False) == (1, 2)
    assert _rewrite_file(s3, b, b, drop, local=False) == (0, 1)
    assert _rewrite_file(s3, a, a, drop, local=False) == (1, 0)  # a retried task: nothing more to drop
    assert pq.read_table(a, filesystem=s3).to_pylist() == [{"SOPInstanceUID": "1.2.4", "n": 2}]
    names = [
        i.path for i in s3.get_file_info(pafs.FileSelector("lake", recursive=True)) if i.type == pafs.FileType.File
    ]
    assert names == [a]


def test_cluster_lists_on_the_executors_and_reads_a_manifest(
    cluster_spark: Any, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver never walks a folder nor reads the manifest's lines (both fail if it tries):
    a folder with subfolders is listed by the executors, one task a subfolder, and a manifest
    (absolute, relative and missing paths, a comment) is read by them in ranges."""
    from dicomlake.ingest import sources, spark

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the driver listed files")

    monkeypatch.setattr(sources, "expand", refuse)
    monkeypatch.setattr(spark, "expand", refuse)
    monkeypatch.setattr(spark, "MANIFEST_RANGE_BYTES", 200)  # several ranges, lines cut across them
    files = sorted(corpus.glob("*.dcm"))
    tree = tmp_path / "tree"
    for i, f in enumerate(files[:-1]):
        (tree / f"d{i % 3}" / "x").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tree / f"d{i % 3}" / "x" / f.name)
    shutil.copy(files[-1], tree / files[-1].name)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    rep = spark.ingest_spark([tree], tmp_path / "lake1", spark=cluster_spark, files_per_task=1)
    assert (rep.files, rep.unique_instances, rep.rejected, rep.partitions) == (len(files), len(uids), 0, 4)
    _compaction_keeps_every_row(cluster_spark, tmp_path / "lake1")

    man = tmp_path / "m" / "manifest.txt"
    man.parent.mkdir()
    lines = ["# files to read"] + [str(f) for f in files[:-1]] + [os.path.relpath(files[-1], man.parent), "gone.dcm"]
    man.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = spark.ingest_spark([], tmp_path / "lake2", spark=cluster_spark, manifest=man)
    assert rep.files == len(files) + 1 and rep.rejected == 1
    with Lake.open(tmp_path / "lake2", read_only=True) as lk:
        got = set(lk.sql("SELECT SOPInstanceUID FROM instances")["SOPInstanceUID"].to_list())
        missing = lk.sql("SELECT source_path, reason FROM rejects").to_dicts()
    assert got == uids
    assert missing[0]["source_path"] == str(man.parent / "gone.dcm") and "manifest" in missing[0]["reason"]


def test_manifest_ranges_hold_every_line_once(tmp_path: Path) -> None:
    """Byte ranges of a text manifest, cut anywhere, give back each line exactly once."""
    import random

    from dicomlake.ingest.spark import _text_range

    rng = random.Random(3)
    lines = ["/" + "a" * rng.randrange(0, 40) + str(i) for i in range(300)]
    f = tmp_path / "m.txt"
    f.write_text("\n".join(lines), encoding="utf-8")  # no final newline
    size = f.stat().st_size
    for step in (1, 7, 64, 1000, size, size + 5):
        got: list[str] = []
        for start in range(0, size, step):
            got += [ln for ln in _text_range(str(f), start, min(size, start + step)).decode().split("\n") if ln]
        assert got == lines, step


def _compaction_keeps_every_row(spark: Any, lake: Path) -> None:
    """`compact` on Spark (one task a partition): fewer files, fewer bytes, the same rows read
    by a plain Spark session and by DuckDB's read_parquet as before."""
    import duckdb

    from dicomlake.store.parquet import compact

    def rows(table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        # a plain Spark read of instances (elements: DuckDB only, to keep the test short)
        sp = (
            sorted((tuple(r) for r in spark.read.parquet(str(lake / table)).collect()), key=repr)
            if table == "instances"
            else []
        )
        glob = str(lake / table / "**" / "*.parquet")
        dk = duckdb.execute(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()
        return sp, sorted(dk, key=repr)

    before = {t: rows(t) for t in ("instances", "elements")}
    n_before = len(list((lake / "elements").rglob("*.parquet")))
    totals = compact(lake, spark=spark)
    n_after = len(list((lake / "elements").rglob("*.parquet")))
    assert totals["files_after"] < totals["files_before"] and n_after < n_before
    assert n_after == len({f.parent for f in (lake / "elements").rglob("*.parquet")})  # one file a partition
    assert totals["bytes_after"] < totals["bytes_before"]
    for t, (sp, dk) in before.items():
        assert len(dk) > 0 and len(sp) in (0, len(dk)), t
        assert rows(t) == (sp, dk), t
    assert not (lake / "_compact").exists()
