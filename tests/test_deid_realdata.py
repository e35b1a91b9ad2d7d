"""Real files: deid-data and pydicom/OpenREM samples de-identified; answer keys and dciodvfy."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomlake.deid import Deidentifier, DeidSettings, load_profile, standard_tables
from dicomlake.deid.profile import BurnedInPolicy
from dicomlake.deid.table import Action
from tests.factories_phi import dciodvfy_errors, dcmdump_text
from tests.support import DEID_DATA_DIR, OPENREM

DEID_DATA = sorted(DEID_DATA_DIR.rglob("*.dcm"))
SECRET = "real-data-test-secret-0123456789abcdef"
_TEXT = {"LO", "SH", "PN", "ST", "LT", "UT", "UC", "AE", "DA", "DT", "TM", "UI", "CS"}


def _flagging(name: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(load_profile(name), burned_in=BurnedInPolicy.FLAG)


def _answer_key(ds: pydicom.Dataset) -> set[str]:
    """Values the Basic Profile removes or replaces, read from the file's own header."""
    tables = standard_tables()
    keys: set[str] = set()
    kept: set[str] = set()
    for elem in ds.iterall():
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            continue
        values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        texts = [str(v).strip() for v in values]
        row = tables.private_row if elem.tag.is_private else tables.row_for(int(elem.tag))
        if elem.tag.is_private and elem.tag.element < 0x100:
            continue  # private creator names
        if row is None or row.basic is Action.K or elem.VR not in _TEXT:
            kept.update(texts)
            continue
        for t in texts:
            if elem.VR == "UI" and t.startswith("1.2.840.10008."):
                continue
            keys.add(t)
            if elem.VR == "PN":
                keys.update(p for p in re.split(r"[\^= ]", t) if len(p) >= 3)
    return {k for k in keys if len(k) >= 4 and k not in kept and not k.isspace()}


def _present(key: str, dump: str) -> bool:
    """Whether a value shows in dcmdump's output: a whole value, or a whole word inside one."""
    if key.replace(".", "").isdigit():
        return bool(re.search(r"\[" + re.escape(key) + r"[\]\\]", dump))
    return bool(re.search(r"(?<![A-Za-z0-9])" + re.escape(key) + r"(?![A-Za-z0-9])", dump))


def test_deid_real_deid_data_keeps_no_known_identifier(tmp_path: Path) -> None:
    engine = Deidentifier(_flagging("basic"), DeidSettings(secret=SECRET))
    checked, leaks = 0, []
    for src in DEID_DATA:
        key = _answer_key(pydicom.dcmread(src))
        out = engine.deidentify_bytes(src.read_bytes(), source=str(src))
        assert out is not None
        path = tmp_path / src.name
        path.write_bytes(out)
        dump = dcmdump_text(str(path))
        for k in key:
            checked += 1
            if _present(k, dump):
                leaks.append((src.name, k))
    print(f"\ndeid-data: {len(DEID_DATA)} files, {checked} header identifiers checked, {len(leaks)} left")
    assert not leaks
    assert checked > 100


def test_deid_removes_burned_in_annotation_series() -> None:
    engine = Deidentifier("basic", DeidSettings(secret=SECRET))
    results = {src.name: engine.deidentify_bytes(src.read_bytes(), source=str(src)) for src in DEID_DATA}
    assert all(v is None for v in results.values())  # SC screenshots, US with names: excluded
    assert len(engine.report.excluded) == len(DEID_DATA)
    assert any("Burned In Annotation YES" in line for line in engine.report.excluded)


def _validation_inputs() -> list[Path]:
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "test-SR.dcm",
        "rtdose.dcm",
        "rtplan.dcm",
        "rtstruct.dcm",
        "SC_rgb.dcm",
        "US1_J2KR.dcm",
        "emri_small.dcm",
        "JPEG2000.dcm",
    ]
    files = [Path(get_testdata_file(n)) for n in names]  # type: ignore[arg-type]
    files += DEID_DATA
    openrem = sorted(OPENREM.glob("*.dcm"))
    files += [f for f in openrem if "RDSR" in f.name][:6] + [f for f in openrem if "-Im-" in f.name][:6]
    return [f for f in files if f and f.is_file()]


@pytest.mark.parametrize("profile", ["basic", "research"])
def test_deid_output_has_no_new_dciodvfy_error(profile: str, tmp_path: Path) -> None:
    engine = Deidentifier(_flagging(profile), DeidSettings(secret=SECRET))
    new_errors = {}
    inputs = _validation_inputs()
    for src in inputs:
        out = engine.deidentify_bytes(src.read_bytes(), source=str(src))
        assert out is not None
        dst = tmp_path / src.name
        dst.write_bytes(out)
        added = dciodvfy_errors(str(dst)) - dciodvfy_errors(str(src))
        if added:
            new_errors[src.name] = sorted(added)
    print(f"\ndciodvfy ({profile}): {len(inputs)} outputs, {len(new_errors)} with an error their input lacked")
    assert not new_errors, new_errors
