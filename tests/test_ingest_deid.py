"""`ingest --deid PROFILE`: the lake never holds the identifying values of what it read."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pydicom
import pytest

from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.samples import pydicom_test_files

PLANTED = {
    "PatientName": "Zebulon^Quixotic",
    "PatientID": "PID-7741-ZQ",
    "AccessionNumber": "ACC99812Q",
    "InstitutionName": "Quixotic Memorial Infirmary",
    "ReferringPhysicianName": "Doctor^Xylophone",
    "StudyDescription": "CT HEAD for Zebulon Quixotic",
}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", "test-secret-" + "x" * 40)


def _plant(folder: Path) -> list[str]:
    folder.mkdir()
    uids = []
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm")):
        ds = pydicom.dcmread(pydicom_test_files() / name)
        for k, v in PLANTED.items():
            setattr(ds, k, v)
        ds.PatientBirthDate = "19610312"
        ds.save_as(folder / f"Quixotic_Zebulon_{i}.dcm")
        uids.append(ds.SOPInstanceUID)
    return uids


def test_ingest_with_research_profile_keeps_no_identifier(tmp_path: Path, secret_env: None) -> None:
    src = tmp_path / "in"
    original_uids = _plant(src)
    lake = tmp_path / "lake"
    rep = ingest_paths([src], lake, workers=2, deid="research")
    assert rep.instances == 2 and rep.rejected == 0
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    texts: list[str] = []
    for table, col in (("elements", "value_text"), ("dicom_json", "json"), ("instances", "source_path")):
        texts += [r[0] for r in con.execute(f'SELECT "{col}" FROM {table} WHERE "{col}" IS NOT NULL').fetchall()]
    cur = con.execute("SELECT * FROM instances")
    names = [d[0] for d in cur.description]
    inst = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    con.close()
    texts += [str(v) for row in inst for v in row.values() if v is not None]
    needles = [*PLANTED.values(), "Zebulon", "Quixotic", "19610312", *original_uids]
    leaks = sorted({n for n in needles for t in texts if n in t})
    print(f"\nscanned {len(texts)} values for {len(needles)} planted identifiers: {len(leaks)} leaks")
    assert leaks == []
    # pseudonyms are there instead, and stable: the same input gives the same lake
    assert {r["PatientIdentityRemoved"] for r in inst} == {"YES"}
    lake2 = tmp_path / "lake2"
    ingest_paths([src], lake2, workers=1, deid="research")
    a = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    b = duckdb.connect(str(lake2 / "lake.duckdb"), read_only=True)
    q = "SELECT PatientID, SOPInstanceUID, StudyDate FROM instances ORDER BY SOPInstanceUID"
    assert a.execute(q).fetchall() == b.execute(q).fetchall()
    a.close()
    b.close()


def test_unknown_profile_fails_before_reading(tmp_path: Path, secret_env: None) -> None:
    from dicomlake.errors import DicomlakeError

    src = tmp_path / "in"
    _plant(src)
    with pytest.raises((DicomlakeError, ValueError, FileNotFoundError)):
        ingest_paths([src], tmp_path / "lake", workers=1, deid="no-such-profile")
    assert not (tmp_path / "lake" / "lake.duckdb").exists() or os.path.getsize(tmp_path / "lake" / "lake.duckdb") >= 0
