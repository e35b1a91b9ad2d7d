"""PS3.15 Table E.1-1 as generated from the standard: actions, options and IOD attribute types."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from importlib import resources
from typing import Any

from pydicom.tag import BaseTag


class Action(Enum):
    """PS3.15 Table E.1-1a action codes."""

    D = "D"
    """Replace with a non-zero length value that may be a dummy value and consistent with the VR."""
    Z = "Z"
    """Replace with a zero length value, or a non-zero length dummy value consistent with the VR."""
    X = "X"
    """Remove."""
    K = "K"
    """Keep (unchanged for non-sequence attributes, cleaned for sequences)."""
    C = "C"
    """Clean: replace with values of similar meaning known not to contain identifying information."""
    U = "U"
    """Replace with a non-zero length UID that is internally consistent within a set of Instances."""
    ZD = "Z/D"
    """Z unless D is required to maintain IOD conformance (Type 2 versus Type 1)."""
    XZ = "X/Z"
    """X unless Z is required to maintain IOD conformance (Type 3 versus Type 2)."""
    XD = "X/D"
    """X unless D is required to maintain IOD conformance (Type 3 versus Type 1)."""
    XZD = "X/Z/D"
    """X unless Z or D is required to maintain IOD conformance (Type 3 versus Type 2 versus Type 1)."""
    XZU = "X/Z/U*"
    """X unless Z or replacement of contained instance UIDs (U) is required (sequences of UID refs)."""


class RetainOption(Enum):
    """PS3.15 Table E.1-1 options, valued by their PS3.16 CID 7050 code."""

    RETAIN_SAFE_PRIVATE = "113111"
    """Retain Safe Private Option"""
    RETAIN_UIDS = "113110"
    """Retain UIDs Option"""
    RETAIN_DEVICE_IDENTITY = "113109"
    """Retain Device Identity Option"""
    RETAIN_INSTITUTION_IDENTITY = "113112"
    """Retain Institution Identity Option"""
    RETAIN_PATIENT_CHARACTERISTICS = "113108"
    """Retain Patient Characteristics Option"""
    RETAIN_LONGITUDINAL_FULL_DATES = "113106"
    """Retain Longitudinal Temporal Information Full Dates Option"""
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "113107"
    """Retain Longitudinal Temporal Information Modified Dates Option"""
    CLEAN_DESCRIPTORS = "113105"
    """Clean Descriptors Option"""
    CLEAN_STRUCTURED_CONTENT = "113104"
    """Clean Structured Content Option"""
    CLEAN_GRAPHICS = "113103"
    """Clean Graphics Option"""

    @classmethod
    def parse(cls, value: str | RetainOption) -> RetainOption:
        """Accept the enum, its code, its member name or a kebab/snake spelling of it."""
        if isinstance(value, RetainOption):
            return value
        text = str(value).strip()
        for member in cls:
            if text == member.value:
                return member
        norm = text.upper().replace("-", "_").replace(" ", "_")
        aliases = {
            "RETAIN_LONGITUDINAL_TEMPORAL_INFORMATION_FULL_DATES": "RETAIN_LONGITUDINAL_FULL_DATES",
            "RETAIN_LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED_DATES": ("RETAIN_LONGITUDINAL_MODIFIED_DATES"),
            "FULL_DATES": "RETAIN_LONGITUDINAL_FULL_DATES",
            "MODIFIED_DATES": "RETAIN_LONGITUDINAL_MODIFIED_DATES",
        }
        norm = aliases.get(norm, norm)
        try:
            return cls[norm]
        except KeyError:
            names = ", ".join(m.name.lower().replace("_", "-") for m in cls)
            raise ValueError(f"unknown PS3.15 option {value!r}; choose from: {names}") from None


# Table E.1-1 column → option, generated JSON uses the CID 7050 keyword.
_CID_KEYWORD = {
    "RetainSafePrivateOption": RetainOption.RETAIN_SAFE_PRIVATE,
    "RetainUidsOption": RetainOption.RETAIN_UIDS,
    "RetainDeviceIdentityOption": RetainOption.RETAIN_DEVICE_IDENTITY,
    "RetainInstitutionIdentityOption": RetainOption.RETAIN_INSTITUTION_IDENTITY,
    "RetainPatientCharacteristicsOption": RetainOption.RETAIN_PATIENT_CHARACTERISTICS,
    "RetainLongitudinalTemporalInformationFullDatesOption": (RetainOption.RETAIN_LONGITUDINAL_FULL_DATES),
    "RetainLongitudinalTemporalInformationModifiedDatesOption": (RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES),
    "CleanDescriptorsOption": RetainOption.CLEAN_DESCRIPTORS,
    "CleanStructuredContentOption": RetainOption.CLEAN_STRUCTURED_CONTENT,
    "CleanGraphicsOption": RetainOption.CLEAN_GRAPHICS,
}

# When several chosen options change one row, the one earlier here wins: retaining beats cleaning
# (the user asked for the value), full dates beat modified dates. Modified dates come next: a
# date is shifted whenever that option applies, even when another option would keep it (device
# calibration, installation and manufacture dates under Retain Device Identity): one date kept
# beside shifted ones gives away the patient's offset for every extract made with that key.
_PRECEDENCE = [
    RetainOption.RETAIN_LONGITUDINAL_FULL_DATES,
    RetainOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    RetainOption.RETAIN_UIDS,
    RetainOption.RETAIN_DEVICE_IDENTITY,
    RetainOption.RETAIN_INSTITUTION_IDENTITY,
    RetainOption.RETAIN_PATIENT_CHARACTERISTICS,
    RetainOption.RETAIN_SAFE_PRIVATE,
    RetainOption.CLEAN_STRUCTURED_CONTENT,
    RetainOption.CLEAN_GRAPHICS,
    RetainOption.CLEAN_DESCRIPTORS,
]


@dataclass(frozen=True)
class TableRow:
    """One row of PS3.15 Table E.1-1."""

    index: int
    tag: str
    """Eight lower-case hex digits, or a pattern with ``x`` (``50xxxxxx``), or ``private``."""
    name: str
    keyword: str
    in_std_iod: bool
    basic: Action
    options: dict[RetainOption, Action] = field(default_factory=dict)

    def action(self, options: Iterable[RetainOption]) -> tuple[Action, RetainOption | None]:
        """The action under the chosen options, and the option that decided it (if any)."""
        chosen = set(options)
        for opt in _PRECEDENCE:
            if opt in chosen and opt in self.options:
                return self.options[opt], opt
        return self.basic, None


@dataclass(frozen=True)
class StandardTables:
    """Everything generated from the standard that de-identification needs."""

    edition: str
    rows: tuple[TableRow, ...]
    by_tag: dict[int, TableRow]
    cid7050: dict[RetainOption | str, tuple[str, str, str]]
    sop_class_iod: dict[str, str]
    iod_types: dict[str, dict[int, str]]
    any_iod_types: dict[int, str]
    nested_types: dict[int, dict[int, str]]
    safe_private: dict[str, str]

    def row_for(self, tag: int) -> TableRow | None:
        """The row for a standard tag, including the overlay/curve group patterns."""
        row = self.by_tag.get(tag)
        if row is not None:
            return row
        group, elem = tag >> 16, tag & 0xFFFF
        if 0x6000 <= group <= 0x601E and group % 2 == 0:
            return self.by_tag.get(0x6000_0000 | elem | _PATTERN_60)
        if 0x5000 <= group <= 0x501E and group % 2 == 0:
            return self.by_tag.get(_PATTERN_50)
        return None

    @property
    def private_row(self) -> TableRow:
        """The row for all private attributes, ``(GGGG,EEEE) where GGGG is odd``."""
        return self.by_tag[_PATTERN_PRIVATE]

    def iod_type(self, sop_class_uid: str, tag: int, parent: int | None) -> str | None:
        """Type (1, 1C, 2, 2C, 3) of an attribute in the IOD, or None when the IOD lacks it.

        At the top level the SOP class decides; inside a sequence, the parent sequence does
        (the strictest Type found under that parent across all modules).
        """
        if parent is None:
            types = self.iod_types.get(self.sop_class_iod.get(sop_class_uid, ""), self.any_iod_types)
            return types.get(_iod_key(tag))
        return self.nested_types.get(parent, {}).get(_iod_key(tag))


# Sentinel keys for the pattern rows (cannot collide with real tags: bit 0 of the group is set).
_PATTERN_60 = 0x0001_0000
_PATTERN_50 = 0x5001_FFFF
_PATTERN_PRIVATE = 0xFFFF_FFFF


def _iod_key(tag: int) -> int:
    group = tag >> 16
    if 0x6000 <= group <= 0x601E and group % 2 == 0:
        return 0x6000_0000 | (tag & 0xFFFF)
    return tag


def _row_key(tag: str) -> int:
    if tag == "private":
        return _PATTERN_PRIVATE
    if tag.startswith("60xx"):
        return 0x6000_0000 | int(tag[4:], 16) | _PATTERN_60
    if tag.startswith("50xx"):
        return _PATTERN_50
    return int(tag, 16)


@cache
def standard_tables() -> StandardTables:
    """Load the generated tables once (``util/gen_deid_table.py`` writes them)."""
    text = resources.files("dicomlake._standard").joinpath("ps315_e1_1.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    rows = []
    for i, r in enumerate(doc["rows"]):
        opts = {_CID_KEYWORD[k]: Action(v) for k, v in r["options"].items()}
        rows.append(TableRow(i, r["tag"], r["name"], r["keyword"], r["in_std_iod"], Action(r["basic"]), opts))
    by_tag = {_row_key(r.tag): r for r in rows}
    cid: dict[RetainOption | str, tuple[str, str, str]] = {}
    for keyword, (value, scheme, meaning) in doc["cid7050"].items():
        cid[_CID_KEYWORD.get(keyword, keyword)] = (value, scheme, meaning)
    modules = {k: {int(t, 16): v for t, v in m.items()} for k, m in doc["module_types"].items()}
    rank = {"1": 4, "1C": 3, "2": 2, "2C": 1, "3": 0}
    iod_types: dict[str, dict[int, str]] = {}
    any_types: dict[int, str] = {}
    for iod, mods in doc["iod_modules"].items():
        merged: dict[int, str] = {}
        for m in mods:
            for tag, kind in modules.get(m, {}).items():
                if tag not in merged or rank[kind] > rank[merged[tag]]:
                    merged[tag] = kind
        iod_types[iod] = merged
        for tag, kind in merged.items():
            if tag not in any_types or rank[kind] > rank[any_types[tag]]:
                any_types[tag] = kind
    nested = {int(p, 16): {int(t, 16): v for t, v in m.items()} for p, m in doc["nested_types"].items()}
    return StandardTables(
        edition=doc["edition"],
        rows=tuple(rows),
        by_tag=by_tag,
        cid7050=cid,
        sop_class_iod=doc["sop_class_iod"],
        iod_types=iod_types,
        any_iod_types=any_types,
        nested_types=nested,
        safe_private=doc["safe_private"],
    )


def resolve_compound(action: Action, iod_type: str | None) -> Action:
    """Resolve X/Z, X/D, Z/D, X/Z/D, X/Z/U* by the attribute's Type in the IOD (PS3.15 E.1-1a).

    Type 1/1C needs a value (D, or U for sequences of references), Type 2/2C needs the attribute
    (Z), Type 3 or absent from the IOD allows removal (X). Where the IOD is stricter than the
    table anticipated (an X/D attribute of Type 2, e.g. RT Plan Date), Z keeps conformance and
    carries no information.
    """
    kind = iod_type or "3"
    if kind in ("1", "1C"):
        return Action.U if action is Action.XZU else Action.D
    if kind in ("2", "2C"):
        return Action.Z
    return Action.Z if action is Action.ZD else Action.X


def is_private(tag: int | BaseTag) -> bool:
    """True for private groups (odd group numbers above 0008)."""
    return bool((int(tag) >> 16) % 2 == 1)
