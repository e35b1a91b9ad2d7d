"""Keyed replacements, table semantics, profiles, vault, external maps, double pseudonymisation."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from dicomlake.deid import (
    Deidentifier,
    DeidSettings,
    Keyring,
    RetainOption,
    Vault,
    builtin_profiles,
    load_profile,
    standard_tables,
)
from dicomlake.deid.table import Action, resolve_compound
from dicomlake.deid.text import Scrubber, postcode_area, postcode_district, zip3
from dicomlake.errors import DeidError

SECRET = "keys-test-secret-0123456789abcdef"
VAULT_KEY = "11" * 32
uids = st.from_regex(r"1\.[1-9][0-9]{0,5}(\.[1-9][0-9]{0,8}){2,8}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(uid=uids)
def test_deid_uid_map_is_deterministic_well_formed_and_keyed(uid: str) -> None:
    a, b = Keyring(SECRET.encode()), Keyring(SECRET.encode())
    other = Keyring(b"another-project-secret-0123456789")
    new = a.uid(uid)
    assert new == b.uid(uid)  # same input, same output, no shared state
    assert new != other.uid(uid)
    assert new.startswith("2.25.") and len(new) <= 64
    assert pydicom.uid.UID(new).is_valid


@settings(max_examples=60, deadline=None)
@given(patient=st.text(min_size=1, max_size=20), day=st.dates(date(1950, 1, 1), date(2030, 1, 1)))
def test_deid_date_offset_keeps_weekday_and_interval(patient: str, day: date) -> None:
    k = Keyring(SECRET.encode())
    off = k.date_offset(patient, -3650, -30, whole_weeks=True)
    assert off % 7 == 0 and -3650 <= off <= -30
    assert off == k.date_offset(patient, -3650, -30, whole_weeks=True)
    shifted = day + timedelta(days=off)
    assert shifted.weekday() == day.weekday()


options = st.sets(st.sampled_from(list(RetainOption)))


@settings(max_examples=80, deadline=None)
@given(row=st.sampled_from(standard_tables().rows), chosen=options)
def test_deid_table_action_follows_the_option_columns(row, chosen) -> None:  # type: ignore[no-untyped-def]
    action, option = row.action(chosen)
    if option is None:
        assert action is row.basic
        assert not (set(row.options) & chosen)
    else:
        assert option in chosen and row.options[option] is action
    if (
        RetainOption.RETAIN_LONGITUDINAL_FULL_DATES in chosen
        and RetainOption.RETAIN_LONGITUDINAL_FULL_DATES in row.options
    ):
        assert action is Action.K


@pytest.mark.parametrize(
    ("compound", "iod_type", "expected"),
    [
        ("X/Z", "2", "Z"),
        ("X/Z", "3", "X"),
        ("X/Z", None, "X"),
        ("X/D", "1", "D"),
        ("Z/D", "1C", "D"),
        ("Z/D", "2", "Z"),
        ("Z/D", None, "Z"),
        ("X/Z/D", "1", "D"),
        ("X/Z/D", "2C", "Z"),
        ("X/Z/D", "3", "X"),
        ("X/Z/U*", "1", "U"),
        ("X/Z/U*", "2", "Z"),
        ("X/Z/U*", "3", "X"),
        ("X/D", "2", "Z"),
    ],
)
def test_deid_compound_actions_resolve_by_iod_type(compound: str, iod_type: str | None, expected: str) -> None:
    assert resolve_compound(Action(compound), iod_type) is Action(expected)


def test_deid_sop_class_and_transfer_syntax_are_never_remapped() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = Deidentifier("basic", DeidSettings(secret=SECRET)).deidentify(ds)
    assert out is not None
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.SOPInstanceUID != ds.SOPInstanceUID and out.SOPInstanceUID.startswith("2.25.")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert ds.PatientName == "CompressedSamples^CT1"  # the input is not modified


def test_deid_profiles_list_builtins_and_reject_bad_files(tmp_path: Path) -> None:
    names = {p.name for p in builtin_profiles()}
    assert {"basic", "research", "dose-audit"} <= names
    research = load_profile("research")
    assert RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in research.options
    bad = tmp_path / "bad.toml"
    bad.write_text('options = ["retain-everything"]\nburned_in = "maybe"\npseudonymize = ["NotAKeyword"]\n')
    with pytest.raises(DeidError) as err:
        load_profile(bad)
    text = str(err.value)
    assert "retain-everything" in text and "maybe" in text and "NotAKeyword" in text  # all at once


def test_deid_age_bands_and_generalisers() -> None:
    from dataclasses import replace

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientAge = "047Y"
    ds.PatientAddress = "1 Main St, London SW1A 1AA"
    profile = replace(load_profile("research"), age_band_years=5)
    out = Deidentifier(profile, DeidSettings(secret=SECRET)).deidentify(ds)
    assert out is not None and out.PatientAge == "045Y" and out.PatientAddress == "SW1A"
    assert postcode_area("sw1a 1aa") == "SW" and postcode_district("N4 4QT") == "N4" and zip3("02139") == "021"


def test_deid_scrubber_removes_names_ids_and_shifts_dates() -> None:
    s = Scrubber(["Smithers", "Wayland", "MRN12345"], lambda d: d - timedelta(days=14))
    out = s.scrub("Mr WAYLAND smithers MRN12345 seen 2021-03-15 and 15/03/2021, mail a@b.org")
    assert "smithers" not in out.lower() and "MRN12345" not in out and "a@b.org" not in out
    assert "2021-03-01" in out and "01/03/2021" in out


def test_deid_vault_reidentifies_only_with_its_key_and_logs(tmp_path: Path) -> None:
    vault_path = tmp_path / "vault" / "pairs.db"
    vault = Vault(vault_path, bytes.fromhex(VAULT_KEY))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with Deidentifier("basic", DeidSettings(secret=SECRET), vault=vault) as engine:
        out = engine.deidentify(ds)
    assert out is not None
    raw = vault_path.read_bytes()
    assert b"1CT1" not in raw and b"CompressedSamples" not in raw  # originals only encrypted
    with pytest.raises(DeidError):
        Vault(vault_path, bytes.fromhex("22" * 32))
    env = {**os.environ, "DICOMLAKE_DEID__VAULT_KEY": VAULT_KEY}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomlake.cli.main",
            "reidentify",
            str(out.PatientID),
            "--vault",
            str(vault_path),
            "--purpose",
            "update case 7",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "1CT1" in res.stdout and "CompressedSamples^CT1" in res.stdout
    log = Path(f"{vault_path}.access.log").read_text()
    assert "update case 7" in log and "1CT1" not in log
    env.pop("DICOMLAKE_DEID__VAULT_KEY")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomlake.cli.main",
            "reidentify",
            str(out.PatientID),
            "--vault",
            str(vault_path),
            "--purpose",
            "x",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 2 and "VAULT_KEY" in res.stderr


def test_deid_external_map_replaces_derivation(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    table = tmp_path / "map.csv"
    table.write_text(
        "kind,original,replacement\n"
        f"PatientID,1CT1,CHALLENGE-0042\nUID,{ds.StudyInstanceUID},1.2.3.4.5.42\nDateOffset,1CT1,-700\n"
    )
    out = Deidentifier("research", DeidSettings(secret=SECRET, map_file=table)).deidentify(ds)
    assert out is not None
    assert out.PatientID == "CHALLENGE-0042" and out.StudyInstanceUID == "1.2.3.4.5.42"
    assert out.StudyDate == (date(2004, 1, 19) - timedelta(days=700)).strftime("%Y%m%d")
    with pytest.raises(DeidError):
        Deidentifier("basic", DeidSettings(secret=SECRET, map_file=table, map_strict=True)).deidentify(ds)


def test_deid_double_pseudonymisation_gives_an_unlinkable_consistent_extract() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    first = Deidentifier("research", DeidSettings(secret=SECRET)).deidentify(ds)
    assert first is not None
    third_party = Deidentifier("research", DeidSettings(secret="third-party-key-0123456789abcdef"))
    second = third_party.deidentify(first)
    again = third_party.deidentify(first)
    assert second is not None and again is not None
    assert second.PatientID != first.PatientID and second.StudyInstanceUID != first.StudyInstanceUID
    assert second.PatientID == again.PatientID and second.SOPInstanceUID == again.SOPInstanceUID
    d0, d1, d2 = (
        date.fromisoformat(f"{x[:4]}-{x[4:6]}-{x[6:]}") for x in (ds.StudyDate, first.StudyDate, second.StudyDate)
    )
    s0, s2 = (date.fromisoformat(f"{x[:4]}-{x[4:6]}-{x[6:]}") for x in (ds.SeriesDate, second.SeriesDate))
    assert (d0 - s0) == (d2 - s2)  # intervals survive both stages
    assert d0.weekday() == d1.weekday() == d2.weekday()


def test_deid_cli_lists_profiles_and_fails_on_non_dicom(tmp_path: Path) -> None:
    env = {**os.environ, "DICOMLAKE_DEID__SECRET": SECRET}
    res = subprocess.run(
        [sys.executable, "-m", "dicomlake.cli.main", "deid", "profiles"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0 and "research" in res.stdout and "dose-audit" in res.stdout
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    (tmp_path / "in" / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())  # type: ignore[arg-type]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomlake.cli.main",
            "deid",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--profile",
            "basic",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 1 and "notes.txt" in res.stderr and "de-identified 1" in res.stdout
    (written,) = (tmp_path / "out").rglob("*.dcm")  # named from the new UIDs, not the input's name
    ds = pydicom.dcmread(written)
    assert written.relative_to(tmp_path / "out").parts == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        f"{ds.SOPInstanceUID}.dcm",
    )
