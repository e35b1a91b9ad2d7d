"""`ingest --deid`: a rejected file leaves nothing of the original in the lake (issue 20).

The oracle is a byte scan of every file under the lake folder (quarantine, reports, the DuckDB
file) and of `dicomlake rejects`, for the planted identifiers of the corrupt file, its name
and its folder's name.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import duckdb
import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.deid.engine import write_bytes
from tests.factories_phi import PATIENTS, encodings_of, phi_dataset

PATIENT = PATIENTS["latin1"]
runner = CliRunner()


@pytest.fixture
def lake_after_ingest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes, str]:
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", "rejects-test-secret-" + "y" * 30)
    folder = tmp_path / "in" / f"{PATIENT.family}^{PATIENT.given}"
    folder.mkdir(parents=True)
    ds, _ = phi_dataset("latin1")
    whole = write_bytes(ds)
    corrupt = whole[: len(whole) // 2]  # starts like DICOM, cut inside the data set
    (folder / f"corrupt_{PATIENT.family}^{PATIENT.given}.dcm").write_bytes(corrupt)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.PatientName, ct.PatientID = PATIENT.name, PATIENT.patient_id
    ct.save_as(folder / f"{PATIENT.patient_id}.dcm")
    lake = tmp_path / "lake"
    res = runner.invoke(
        app, ["ingest", str(tmp_path / "in"), "--lake", str(lake), "--deid", "research", "--workers", "1", "-q"]
    )
    assert res.exit_code == 1, res.output  # one input rejected
    listing = runner.invoke(app, ["rejects", "--lake", str(lake), "--format", "csv"])
    assert listing.exit_code == 0, listing.output
    return lake, corrupt, listing.output


def _needles() -> list[bytes]:
    words = [PATIENT.family, PATIENT.given, PATIENT.patient_id, PATIENT.accession, "corrupt_"]
    return [form for w in words for form in encodings_of(w, PATIENT.charset)]


def test_ingest_deid_keeps_no_original_byte_or_name_of_a_reject(lake_after_ingest: tuple[Path, bytes, str]) -> None:
    lake, corrupt, listing = lake_after_ingest
    planted = re.compile(rb"PHI[lL]\d{5}Q|PHIFAMl|PHIGIVl")  # every planted token of the latin1 file
    leaks = []
    files = [p for p in lake.rglob("*") if p.is_file()]
    for f in files:
        raw = f.read_bytes()
        leaks += [(str(f.relative_to(lake)), n) for n in _needles() if n in raw]
        leaks += [(str(f.relative_to(lake)), m[0]) for m in planted.finditer(raw)][:3]
    print(f"\nscanned {len(files)} lake files: {len(leaks)} leaks")
    assert leaks == []
    assert not (lake / "quarantine").exists() or not any((lake / "quarantine").rglob("*"))
    assert not any(n.decode("latin-1") in listing for n in _needles()), listing
    assert "deid:" in listing and "truncated" in listing
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    rows = con.execute("SELECT source_path, reason, size_bytes, sha256, quarantine_path FROM rejects").fetchall()
    runs = con.execute("SELECT sources FROM ingest_runs").fetchall()
    con.close()
    ((source_path, reason, size, digest, qpath),) = rows
    assert source_path.startswith("deid:") and qpath is None
    assert size == len(corrupt) and digest == hashlib.sha256(corrupt).hexdigest()
    assert "truncated" in reason and PATIENT.family not in reason
    assert all(PATIENT.family not in r[0] for r in runs)
