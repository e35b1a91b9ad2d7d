"""Queries on any attribute: typed, nested, private, numeric and date ranges, wildcards, lists.

Answers come from outside the query layer: a corpus built with a known answer key, and
pydicom reading the real sample files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

import dicomlake
from dicomlake.errors import QueryError
from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.samples import pydicom_test_files

N = 60


@pytest.fixture(scope="module")
def keyed_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    """MG-like instances with planted values; the list is the answer key."""
    src = tmp_path_factory.mktemp("keyed-src")
    lake = tmp_path_factory.mktemp("keyed-lake")
    base = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    key: list[dict[str, object]] = []
    for i in range(N):
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(i // 3)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(i // 3), "s"])
        ds.PatientID = f"P{i // 6:03d}"
        ds.Modality = ["MG", "CT", "DX"][i % 3]
        day = dt.date(2023, 1, 1) + dt.timedelta(days=13 * i)
        ds.StudyDate = day.strftime("%Y%m%d")
        ds.CompressionForce = 40 + 3 * i
        ds.StationName = ["MAMMO1", "mammo-2", "CTSCAN"][i % 3] + f"_{i % 4}"
        phantom = ["IEC Body Dosimetry Phantom", "IEC Head Dosimetry Phantom"][i % 2]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = ("113691", "DCM") if i % 2 == 0 else ("113690", "DCM")
        item.CodeMeaning = phantom
        ds.CTDIPhantomTypeCodeSequence = Sequence([item])
        block = ds.private_block(0x0019, "ACME_LAKE_TEST", create=True)
        block.add_new(0x10, "DS", str(i * 1.5))
        block.add_new(0x11, "LO", f"proto-{i % 5}")
        ds.save_as(src / f"{i:03d}.dcm")
        key.append(
            {
                "SOPInstanceUID": ds.SOPInstanceUID, "Modality": ds.Modality, "StudyDate": day,
                "CompressionForce": float(ds.CompressionForce), "StationName": ds.StationName,
                "phantom": phantom, "private_num": i * 1.5, "private_proto": f"proto-{i % 5}",
                "PatientID": ds.PatientID, "StudyInstanceUID": ds.StudyInstanceUID,
            }
        )  # fmt: skip
    ingest_paths([src], lake, workers=1)
    return lake, key


def _uids(lake: Path, *where: str) -> set[str]:
    with dicomlake.open(lake, read_only=True) as lk:
        df = lk.query(list(where), select=["SOPInstanceUID"])
    return set(df["SOPInstanceUID"].to_list())


def _expect(key: list[dict[str, object]], pred) -> set[str]:  # type: ignore[no-untyped-def]
    return {str(r["SOPInstanceUID"]) for r in key if pred(r)}


def test_numeric_range_on_a_typed_column(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    got = _uids(lake, "CompressionForce > 120", "CompressionForce <= 160", "Modality = MG")
    want = _expect(key, lambda r: 120 < r["CompressionForce"] <= 160 and r["Modality"] == "MG")
    assert got == want and len(want) > 2


def test_date_range_with_open_ends_and_iso_form(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    assert _uids(lake, "StudyDate = 20230301-20230630") == _expect(
        key, lambda r: dt.date(2023, 3, 1) <= r["StudyDate"] <= dt.date(2023, 6, 30)
    )
    assert _uids(lake, "StudyDate = 20231001-") == _expect(key, lambda r: r["StudyDate"] >= dt.date(2023, 10, 1))
    assert _uids(lake, "StudyDate = -2023-02-01") == _expect(key, lambda r: r["StudyDate"] <= dt.date(2023, 2, 1))
    assert _uids(lake, "study_datetime = 2023-01-14..2023-02-09") == _expect(
        key, lambda r: dt.date(2023, 1, 14) <= r["StudyDate"] <= dt.date(2023, 2, 9)
    )


def test_wildcards_and_lists(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    assert _uids(lake, "StationName = MAMMO*") == _expect(key, lambda r: str(r["StationName"]).startswith("MAMMO"))
    assert _uids(lake, "StationName = *_?") == _expect(key, lambda r: True)
    assert _uids(lake, "Modality = CT,DX") == _expect(key, lambda r: r["Modality"] in ("CT", "DX"))
    assert _uids(lake, "Modality != MG") == _expect(key, lambda r: r["Modality"] != "MG")


def test_nested_sequence_attribute(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    got = _uids(lake, "CTDIPhantomTypeCodeSequence.CodeMeaning = *Head*")
    assert got == _expect(key, lambda r: "Head" in str(r["phantom"]))
    by_tag = _uids(lake, "(0018,9346).(0008,0100) = 113691")
    assert by_tag == _expect(key, lambda r: "Body" in str(r["phantom"]))


def test_private_tag_by_creator_and_element(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    got = _uids(lake, '(0019,"ACME_LAKE_TEST",10) >= 45')
    assert got == _expect(key, lambda r: r["private_num"] >= 45)
    got = _uids(lake, '(0019,"ACME_LAKE_TEST",11) = proto-3')
    assert got == _expect(key, lambda r: r["private_proto"] == "proto-3")
    # CT_small already reserves block 10 for GEMS_ACQU_01, so pydicom put ours in block 11:
    # the raw tag form names that exact element
    assert _uids(lake, "(0019,1111) = proto-3") == got


def test_levels_group_instances(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    with dicomlake.open(lake, read_only=True) as lk:
        studies = lk.query("Modality = MG", level="study")
        patients = lk.query([], level="patient")
    want_studies = {r["StudyInstanceUID"] for r in key if r["Modality"] == "MG"}
    assert set(studies["StudyInstanceUID"].to_list()) == want_studies
    assert isinstance(patients, pl.DataFrame)
    assert dict(zip(patients["PatientID"], patients["n_instances"], strict=True)) == {
        f"P{p:03d}": 6 for p in range(N // 6)
    }


def test_selecting_nested_and_private_values(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    with dicomlake.open(lake, read_only=True) as lk:
        df = lk.query(
            [], select=["SOPInstanceUID", "CTDIPhantomTypeCodeSequence.CodeMeaning", '(0019,"ACME_LAKE_TEST",11)']
        )
    got = {r[0]: (r[1], r[2]) for r in df.iter_rows()}
    assert got == {r["SOPInstanceUID"]: (r["phantom"], r["private_proto"]) for r in key}


def test_bad_filters_say_what_is_wrong(keyed_lake) -> None:  # type: ignore[no-untyped-def]
    lake, _ = keyed_lake
    with dicomlake.open(lake, read_only=True) as lk:
        with pytest.raises(QueryError, match="neither a DICOM keyword"):
            lk.query("CompresionForce > 3")
        with pytest.raises(QueryError, match="KEY OP VALUE"):
            lk.query("CompressionForce")
        with pytest.raises(QueryError, match="not a date"):
            lk.query("StudyDate = yesterday")
        with pytest.raises(QueryError, match="read-only"):
            lk.sql("DELETE FROM instances")


def test_modality_filter_matches_pydicom_on_every_sample_file(sample_lake: Path) -> None:
    """Outside oracle: pydicom's reading of each file that landed in the lake."""
    with dicomlake.open(sample_lake, read_only=True) as lk:
        rows = lk.sql("SELECT SOPInstanceUID, source_path FROM instances")
        got_mr = set(lk.query("Modality = MR", select=["SOPInstanceUID"])["SOPInstanceUID"].to_list())
        got_kvp = set(lk.query("KVP >= 100", select=["SOPInstanceUID"])["SOPInstanceUID"].to_list())
    want_mr, want_kvp = set(), set()
    for uid, path in rows.iter_rows():
        if "!/" in path:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if ds.get("Modality") == "MR":
            want_mr.add(uid)
        try:
            if ds.get("KVP") not in (None, "") and float(ds.KVP) >= 100:
                want_kvp.add(uid)
        except (TypeError, ValueError):
            pass
    assert got_mr == want_mr and len(want_mr) > 5
    assert got_kvp == want_kvp and len(want_kvp) > 5


def test_cli_query_sql_and_export(keyed_lake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake, key = keyed_lake
    cli = [sys.executable, "-m", "dicomlake.cli.main"]
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    out = subprocess.run(
        [*cli, "query", "--lake", str(lake), "--where", "Modality = MG", "--where", "CompressionForce > 100",
         "--select", "SOPInstanceUID,CompressionForce", "--format", "json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    assert {r["SOPInstanceUID"] for r in rows} == _expect(
        key, lambda r: r["Modality"] == "MG" and r["CompressionForce"] > 100
    )
    pq = tmp_path / "q.parquet"
    subprocess.run(
        [
            *cli,
            "sql",
            "SELECT Modality, count(*) AS n FROM instances GROUP BY ALL ORDER BY 1",
            "--lake",
            str(lake),
            "--format",
            "parquet",
            "--out",
            str(pq),
        ],
        env=env,
        check=True,
    )
    assert pl.read_parquet(pq).to_dicts() == [{"Modality": m, "n": N // 3} for m in ("CT", "DX", "MG")]
    exp = tmp_path / "export"
    subprocess.run([*cli, "export", "--lake", str(lake), "--out", str(exp)], env=env, check=True)
    inst = pl.read_parquet(exp / "instances.parquet")
    assert inst.height == N and "CompressionForce" in inst.columns and "StudyDate" in inst.columns
    assert (
        pl.read_parquet(exp / "elements.parquet")
        .filter(pl.col("path_key") == "CTDIPhantomTypeCodeSequence.CodeMeaning")
        .height
        == N
    )
