"""`dicomlake deid` never touches its inputs and never copies their names (issue 20).

Oracles: SHA-256 of every input file before and after, `strings`-like byte scans of every
output file and path for the planted tokens, pydicom readings of the outputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from dicomlake.cli.main import app
from dicomlake.deid.engine import write_bytes
from tests.factories_phi import PATIENTS, phi_dataset

SECRET = "cli-safety-secret-0123456789abcdef"
PATIENT = PATIENTS["latin1"]
# The folder and file names of a typical PACS export: patient name, date, accession number.
FOLDER = f"{PATIENT.family}^{PATIENT.given}"
SUBFOLDER = f"20150929_{PATIENT.accession}"

runner = CliRunner()


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMLAKE_DEID__SECRET", SECRET)


def _corpus(root: Path) -> Path:
    """An export folder: a planted-PHI CT and pydicom's CT, under identifying folder names."""
    src = root / "export"
    study = src / FOLDER / SUBFOLDER
    study.mkdir(parents=True)
    ds, _ = phi_dataset("latin1")
    (study / f"{PATIENT.family}_{PATIENT.patient_id}_1.dcm").write_bytes(write_bytes(ds))
    ct = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    (study / f"{PATIENT.family}_{PATIENT.patient_id}_2.dcm").write_bytes(ct.read_bytes())
    return src


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("where", ["same", "inside", "nested-rerun", "contains"])
def test_deid_refuses_an_output_that_overlaps_the_input(tmp_path: Path, where: str) -> None:
    src = _corpus(tmp_path)
    if where == "nested-rerun":
        (src / "deid").mkdir()  # an earlier run's output inside the input
    before = _hashes(tmp_path)
    out, inputs = {
        "same": (src, [src]),
        "inside": (src / "deid", [src]),
        "nested-rerun": (src / "deid" / "deid", [src]),
        "contains": (tmp_path, [src / FOLDER]),
    }[where]
    res = runner.invoke(app, ["deid", *map(str, inputs), "--out", str(out), "--profile", "basic"])
    assert res.exit_code == 2, res.output
    assert "error: --out" in res.output and "outside the inputs" in res.output
    assert "Traceback" not in res.output
    assert _hashes(tmp_path) == before  # originals byte-identical, nothing added


def test_deid_refuses_an_input_file_given_as_output(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    one = next(src.rglob("*_1.dcm"))
    before = _hashes(tmp_path)
    res = runner.invoke(app, ["deid", str(one), "--out", str(one.parent), "--profile", "basic"])
    assert res.exit_code == 2, res.output
    assert _hashes(tmp_path) == before


def test_deid_output_names_come_from_the_new_uids_only(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["deid", str(src), "--out", str(out), "--profile", "basic"])
    assert res.exit_code == 0, res.output
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 2
    needles = [PATIENT.family, PATIENT.given, PATIENT.patient_id, PATIENT.accession, "20150929", "export"]
    for f in files:
        rel = str(f.relative_to(out))
        assert not any(n in rel for n in needles), rel
        ds = pydicom.dcmread(f)
        assert f.relative_to(out).parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
        raw = f.read_bytes()
        assert not any(n.encode() in raw for n in needles), f  # the input names are not inside either
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind
    # a rerun with the same key gives the same names and bytes (the outputs are replaced atomically)
    first = _hashes(out)
    res = runner.invoke(app, ["deid", str(src), "--out", str(out), "--profile", "basic"])
    assert res.exit_code == 0 and _hashes(out) == first


def test_deid_refuses_and_lists_truncated_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    plan = Path(get_testdata_file("rtplan.dcm")).read_bytes()  # type: ignore[arg-type]
    (src / "whole.dcm").write_bytes(ct)
    (src / "header_cut.dcm").write_bytes(ct[:700])  # cut inside the header
    (src / "plan_cut.dcm").write_bytes(plan[: len(plan) // 2])  # cut inside a sequence item
    out = tmp_path / "out"
    res = runner.invoke(app, ["deid", str(src), "--out", str(out), "--profile", "basic"])
    assert res.exit_code == 1, res.output
    assert "de-identified 1," in res.output and "failed 2" in res.output
    for name in ("header_cut.dcm", "plan_cut.dcm"):
        assert f"{src / name}: " in res.output and "incomplete" in res.output
    assert len([p for p in out.rglob("*") if p.is_file()]) == 1


def test_deid_lists_symlinked_folders_it_skips(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ct.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())  # type: ignore[arg-type]
    os.symlink(elsewhere, src / "linked", target_is_directory=True)
    res = runner.invoke(app, ["deid", str(src), "--out", str(tmp_path / "out"), "--profile", "basic"])
    assert res.exit_code == 0, res.output
    assert "de-identified 2," in res.output and "skipped 1" in res.output
    assert f"skipped {src / 'linked'}: symbolic link to a folder" in res.output


def test_deid_profiles_works_beside_a_folder_named_profiles(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = runner.invoke(app, ["deid", "profiles"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    assert "research" in res.output and "dose-audit" in res.output
