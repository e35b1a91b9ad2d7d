"""Curation without a lake: normalisers, Body Part Examined, name clustering, rules files."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources

import pytest

from dicomlake.curate import bodypart, names
from dicomlake.curate.normalise import (
    SizeSystem,
    age_between,
    format_size,
    parse_age,
    parse_datetime,
    parse_person_name,
    parse_size,
    patient_age,
    to_utc,
)
from dicomlake.curate.rules import load_rules, parse_rules
from dicomlake.errors import ConfigError
from tests.factories_audit import NAME_VARIANTS


@pytest.mark.parametrize(
    ("text", "years", "canonical", "conformant"),
    [
        ("054Y", 54.0, "054Y", True),
        ("006M", 0.5, "006M", True),
        ("003W", 21 / 365.25, "003W", True),
        ("010D", 10 / 365.25, "010D", True),
        ("54", 54.0, "054Y", False),
        ("54Y", 54.0, "054Y", False),
        ("54 years", 54.0, "054Y", False),
        ("6 months", 0.5, "006M", False),
        (" 3 wks ", 21 / 365.25, "003W", False),
        ("10 days", 10 / 365.25, "010D", False),
    ],
)
def test_patient_age_read_in_every_written_form(text: str, years: float, canonical: str, conformant: bool) -> None:
    age = parse_age(text)
    assert age is not None
    assert age.years == pytest.approx(years)
    assert age.as_string == canonical
    assert age.conformant is conformant


def test_patient_age_absent_is_computed_from_birth_and_study_date() -> None:
    assert parse_age("") is None and parse_age("old") is None
    assert patient_age(None, dt.date(1970, 3, 2), dt.date(2024, 3, 1)).as_string == "053Y"
    assert patient_age(None, dt.date(1970, 3, 1), dt.date(2024, 3, 1)).as_string == "054Y"
    assert age_between(dt.date(2024, 1, 1), dt.date(2024, 1, 11)).as_string == "010D"
    assert age_between(dt.date(2024, 1, 1), dt.date(2024, 2, 19)).as_string == "007W"
    assert age_between(dt.date(2023, 1, 15), dt.date(2024, 1, 14)).as_string == "011M"
    assert age_between(dt.date(2024, 1, 2), dt.date(2024, 1, 1)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500 KB", 500_000), ("2 MB", 2_000_000), ("500 kB", 500_000), ("1.5 GB", 1_500_000_000),
        ("1.5 GiB", 1_610_612_736), ("512 KiB", 524_288), ("2 MiB", 2_097_152), ("1,024 KB", 1_024_000),
        ("1,5 MB", 1_500_000), ("12345", 12345), ("3 bytes", 3), ("500K", 500_000), ("1 TB", 10**12),
    ],
)  # fmt: skip
def test_file_sizes_as_humans_write_them_si_and_iec(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_bare_prefix_follows_the_chosen_system_and_formatting_round_trips() -> None:
    assert parse_size("500K", bare_prefix=SizeSystem.IEC) == 512_000
    assert parse_size("two MB") is None and parse_size("5 XB") is None
    for n in (999, 500_000, 2_000_000, 1_500_000_000):
        assert parse_size(format_size(n)) == n
    assert format_size(1_610_612_736, "iec") == "1.5 GiB"


def test_person_names_in_pn_comma_and_natural_order_share_a_key() -> None:
    forms = ["SMITH^JANE", "Smith^Jane", "smith^jane^^DR", "Smith, Jane", "Dr Jane Smith", "Jane Smith", "SMÏTH^JANE"]
    keys = {parse_person_name(f).key for f in forms}
    assert keys == {"SMITH^JANE"}
    assert parse_person_name("SMITH^JANE^^DR").display == "Smith, Jane"
    assert parse_person_name("Yamada^Tarou=山田^太郎").display == "Yamada, Tarou"
    assert parse_person_name("") is None


def test_datetimes_with_and_without_timezone_offsets() -> None:
    aware = parse_datetime("20240301101500.25+0100")
    assert aware.utcoffset() == dt.timedelta(hours=1) and aware.microsecond == 250000
    assert to_utc(aware) == dt.datetime(2024, 3, 1, 9, 15, 0, 250000)
    from_tag = parse_datetime("20240301101500", "-0500")
    assert to_utc(from_tag) == dt.datetime(2024, 3, 1, 15, 15)
    naive = parse_datetime("202403011015")
    assert naive == dt.datetime(2024, 3, 1, 10, 15) and naive.tzinfo is None
    assert to_utc(naive) is None  # a local time without an offset cannot be placed on UTC
    assert parse_datetime("20240301+2500") is None and parse_datetime("2024x") is None


def test_body_part_terms_are_generated_from_ps316_annex_l_with_their_codes() -> None:
    doc = json.loads(resources.files("dicomlake._standard").joinpath("body_parts.json").read_text("utf-8"))
    assert "generate_body_parts" in doc["_generated_by"] and "PS3.16" in doc["_edition"]
    terms = bodypart.defined_terms()
    assert len(terms) >= 95
    assert terms["BREAST"]["code"] == "76752008" and terms["CHEST"]["meaning"] == "Chest"
    assert terms["ABDOMENPELVIS"]["code"] == "818982008"  # CP 1962 code, not the old 416949008


@pytest.mark.parametrize(
    ("bpe", "modality", "descriptions", "rules", "proposed"),
    [
        ("CHEST", "MG", ["MAMMO L CC"], ["bpe-modality"], "BREAST"),
        ("BREAST", "MG", ["MAMMO L CC"], [], None),
        ("SKULL", "DX", ["PA CHEST"], ["bpe-description"], "CHEST"),
        ("THORAX", "DX", ["PA CHEST"], ["bpe-not-defined-term"], "CHEST"),
        ("CHESTABDPELVIS", "CT", ["CT Chest"], [], None),
        ("LSPINE", "DX", ["XR L-Spine 2 views"], [], None),
        ("HEAD", "CT", ["CT Chest/Abdo/Pelvis"], ["bpe-description"], "CHESTABDPELVIS"),
        (None, "MG", ["R MLO"], ["bpe-missing"], "BREAST"),
        ("Chest", "DX", ["Chest PA"], ["bpe-not-defined-term"], "CHEST"),
    ],
)
def test_body_part_checked_against_terms_modality_and_descriptions(
    bpe: str | None, modality: str, descriptions: list[str], rules: list[str], proposed: str | None
) -> None:
    found = bodypart.check_body_part(bpe, modality, descriptions)  # type: ignore[arg-type]
    assert [f.rule for f in found] == rules
    if rules:
        assert found[-1].proposed == proposed


def test_name_clustering_finds_the_true_groups(capsys: pytest.CaptureFixture[str]) -> None:
    values = [(v, 10 + i) for g in NAME_VARIANTS for i, v in enumerate(g)]
    predicted = [[v for v, _ in g] for g in names.cluster_names(values)]
    precision, recall = names.precision_recall(predicted, NAME_VARIANTS)
    with capsys.disabled():
        print(
            f"\nname clustering: {len(values)} variants, {len(NAME_VARIANTS)} true groups, "
            f"{len(predicted)} proposed; pairwise precision {precision:.3f}, recall {recall:.3f}"
        )
    assert precision >= 0.95 and recall >= 0.9
    by_variant = {v: g for g in predicted for v in g}
    assert set(by_variant["St Mary's"]) >= {"ST MARYS HOSP", "St. Mary's Hospital"}
    assert "RSCH" in by_variant["Royal Surrey County Hospital"]
    assert "St Thomas' Hospital" not in by_variant["St Mary's"]


def test_proposed_standard_name_is_the_most_used_full_variant() -> None:
    props = names.propose(
        "institution", [("RSCH", 50), ("Royal Surrey County Hospital", 20), ("ROYAL SURREY COUNTY HOSP", 5)]
    )
    assert {p.standard for p in props} == {"Royal Surrey County Hospital"}


def test_rules_file_errors_are_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules({"range": [{"id": "a"}, {"id": "b", "attribute": "KVP", "min": 1, "severity": "fatal"}],
                     "required": [{"id": "c", "type": 3, "keywords": []}]}, "my.toml")  # fmt: skip
    msg = str(err.value)
    assert "needs id and attribute" in msg and "severity 'fatal'" in msg and "type must be 1 or 2" in msg
    rules = load_rules()
    assert rules.version and {r.id for r in rules.ranges} >= {"mg-compression-force", "age-range", "rdsr-ctdivol"}
