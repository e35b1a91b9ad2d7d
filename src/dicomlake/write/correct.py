"""Header corrections in place, recorded in the Original Attributes Sequence (PS3.3 C.12.1.1.9).

The SOP Instance UID stays the same; an Item is appended to Original Attributes Sequence
(0400,0561) with the previous values in Modified Attributes Sequence (0400,0550), when,
by what and why the values changed. Existing Items are preserved, as C.12.1.1.9 requires.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from dicomlake.errors import WriteError
from dicomlake.write._common import (
    MODIFYING_SYSTEM,
    dt,
    encode,
    needs_unicode,
    now,
    write_atomically,
)
from dicomlake.write.codes import ModificationReason

# Attributes a correction must not touch: identity of the object, its encoding, its
# pixels and the audit trail itself. Changing these makes a different object (derive).
PROTECTED = frozenset(
    {
        "SOPInstanceUID",
        "SOPClassUID",
        "SpecificCharacterSet",
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "EncapsulatedDocument",
        "OriginalAttributesSequence",
        "InstanceCoercionDateTime",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "NumberOfFrames",
    }
)

_MULTI_SEP = "\\"

PAIRED_BODY_PARTS = frozenset(
    {
        "ACJOINT", "ANKLE", "ARM", "AXILLA", "BREAST", "CALCANEUS", "CLAVICLE", "ELBOW", "EAR", "EXTREMITY",
        "EYE", "FEMUR", "FIBULA", "FINGER", "FOOT", "FOREARM", "HAND", "HIP", "HUMERUS", "KIDNEY", "KNEE", "LEG",
        "LOWERLEG", "LUNG", "OVARY", "PATELLA", "RADIUS", "RIB", "SCAPULA", "SHOULDER", "SJOINT", "STERNOCLAVICULAR",
        "TESTIS", "THIGH", "TIBIA", "TMJ", "TOE", "ULNA", "UPRLIMB", "LOWLIMB", "UPPERARM", "WRIST", "ADRENAL",
        "BRACHIALA", "CAROTID", "CCA", "ICA", "ECA", "FEMORALA", "FEMORALV", "ILIACA", "ILIACV", "JUGULARV",
        "ORBIT", "PAROTID", "RENALA", "RENALV", "SUBCLAVA", "SUBCLAVV", "VERTEBRALA",
    }
)  # fmt: skip
"""Body Part Examined terms of paired structures: only for these is Laterality (0020,0060)
required (Type 2C, PS3.3 C.7.3.1); for any other body part it must be absent."""


def _body_part_problem(value: str) -> str | None:
    """Why *value* is not a Body Part Examined defined term (PS3.16 CID 4031 / Annex L), or None."""
    import difflib

    from dicomlake.curate.bodypart import defined_terms

    terms = defined_terms()
    if not value or value in terms:
        return None
    near = difflib.get_close_matches(value.upper(), list(terms), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return (
        f"BodyPartExamined={value!r} is not a defined term of PS3.16 CID 4031 / Annex L{hint}; "
        "use one of them (e.g. CHEST, ABDOMEN, HEAD)"
    )


_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})


@dataclass(frozen=True)
class Correction:
    """What one correction changed in one file."""

    path: Path
    sop_instance_uid: str
    changes: Mapping[str, tuple[str, str]]
    """keyword → (previous value, new value), as DICOM strings."""
    reason: ModificationReason
    modified_at: str
    """Attribute Modification DateTime written (DT)."""


def _element_text(elem: DataElement | None) -> str:
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return _MULTI_SEP.join(str(v) for v in value)
    return str(value)


def check_changes(
    changes: Mapping[str, str | Sequence[str]], where: str
) -> dict[str, tuple[int, str, str | list[str]]]:
    """Validate keywords and values; return keyword → (tag, VR, value) or raise once listing every problem."""
    problems: list[str] = []
    checked: dict[str, tuple[int, str, str | list[str]]] = {}
    for keyword, raw in changes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            problems.append(
                f"{keyword!r} is not a DICOM keyword (spelling is case-sensitive, e.g. PatientID, "
                "AccessionNumber); see PS3.6 or pydicom.datadict"
            )
            continue
        if keyword in PROTECTED or tag >> 16 == 0x0002:
            problems.append(
                f"{keyword} cannot be corrected in place (it identifies or encodes the object); "
                "use 'dicomlake derive' to make a new instance"
            )
            continue
        vr = dictionary_VR(tag)
        if vr == "SQ" or vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or " or " in vr:
            problems.append(f"{keyword} has VR {vr}; only text and number attributes can be set with --set")
            continue
        values: list[str] = (
            raw.split(_MULTI_SEP)
            if isinstance(raw, str) and vr not in ("LT", "ST", "UT", "UR")
            else ([raw] if isinstance(raw, str) else list(raw))
        )
        converted: list[object] = []
        for value in values:
            try:
                if vr in _INT_VRS:
                    converted.append(int(value))
                    continue
                if vr in _FLOAT_VRS:
                    converted.append(float(value))
                    continue
                if vr == "AT":
                    raise ValueError("AT values cannot be set from text")
                converted.append(value)
                pydicom.valuerep.validate_value(vr, value, pydicom_config.RAISE)
                if vr == "DA" and value:
                    datetime.strptime(value, "%Y%m%d")
                if vr in ("IS", "DS") and value:
                    float(value)
            except ValueError as exc:
                problems.append(f"{keyword}={value!r} is not a valid {vr} value ({exc}); fix the value")
                break
        else:
            if keyword == "BodyPartExamined" and (problem := _body_part_problem(str(converted[0]))):
                problems.append(problem)
                continue
            checked[keyword] = (tag, vr, converted if len(converted) > 1 else converted[0])  # type: ignore[assignment]
    if problems:
        raise WriteError(f"{where}: " + "; ".join(problems) + "; nothing was changed")
    return checked


def apply_correction(
    ds: Dataset,
    changes: Mapping[str, str | Sequence[str]],
    *,
    reason: str | ModificationReason,
    source_of_previous_values: str = "",
    modifying_system: str = MODIFYING_SYSTEM,
    when: datetime | None = None,
    where: str = "dataset",
) -> dict[str, tuple[str, str]]:
    """Change *ds* in memory and append the Original Attributes Sequence Item.

    Parameters
    ----------
    ds
        The dataset to correct (modified in place).
    changes
        Keyword → new value; multiple values separated by ``\\`` (or given as a list);
        ``""`` empties the attribute.
    reason
        Reason for the Attribute Modification (0400,0565): CORRECT or COERCE.
    source_of_previous_values
        Source of Previous Values (0400,0564), Type 2: e.g. the institution the
        instance came from; empty when unknown.
    modifying_system
        Modifying System (0400,0563).
    when
        Attribute Modification DateTime (default: now).
    where
        Name of the input, for messages.

    Returns
    -------
    dict
        keyword → (previous value, new value) for the attributes whose value changed.
    """
    try:
        reason = ModificationReason(reason.upper() if isinstance(reason, str) else reason)
    except ValueError as exc:
        raise WriteError(f"{where}: --reason {reason!r} is not CORRECT or COERCE (PS3.3 C.12.1.1.9.2)") from exc
    checked = check_changes(changes, where)
    moment = when or now()
    modified = Dataset()
    diff: dict[str, tuple[str, str]] = {}
    for keyword, (tag, vr, value) in checked.items():
        old = ds.get(tag)
        old_text = _element_text(old)
        new_text = _MULTI_SEP.join(str(v) for v in value) if isinstance(value, list) else str(value)
        if old is not None and old_text == new_text:
            continue
        # C.12.1.1.9.1: replaced Attributes go in with their prior values; Attributes that
        # were absent and are added go in with a zero-length value.
        modified[tag] = deepcopy(old) if old is not None else DataElement(tag, vr, None)
        diff[keyword] = (old_text, new_text)
    laterality = ds.get(0x00200060)
    if (
        "BodyPartExamined" in diff
        and "Laterality" not in checked
        and laterality is not None
        and not _element_text(laterality)
        and diff["BodyPartExamined"][1].upper() not in PAIRED_BODY_PARTS
    ):
        # C.7.3.1: Laterality (Type 2C) only for paired structures; an empty one left beside
        # an unpaired body part is an error (dciodvfy: present when condition unsatisfied).
        modified[0x00200060] = deepcopy(laterality)
        del ds[0x00200060]
        diff["Laterality"] = ("", "")
    if not diff:
        return diff
    if "PatientID" in diff and "IssuerOfPatientID" not in modified:
        # C.12.1.1.9: Issuer of Patient ID, even if unchanged or absent, places the old ID.
        issuer_tag = 0x00100021
        old_issuer = ds.get(issuer_tag)
        modified[issuer_tag] = deepcopy(old_issuer) if old_issuer is not None else DataElement(issuer_tag, "LO", None)
    text_values: list[object] = [v for _, v in diff.values()]
    if needs_unicode(text_values):
        charset = ds.get("SpecificCharacterSet")
        current = [charset] if isinstance(charset, str) else list(charset or [])
        if not current or current == ["ISO_IR 6"]:
            ds.SpecificCharacterSet = "ISO_IR 192"
        elif "ISO_IR 192" not in current:
            # Values are decoded text in memory, so re-encoding the whole set in UTF-8 is exact.
            ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, (tag, vr, value) in checked.items():
        if keyword in diff:
            ds[tag] = DataElement(tag, vr, value)
    item = Dataset()
    item.ModifiedAttributesSequence = DicomSequence([modified])
    item.AttributeModificationDateTime = dt(moment)
    item.ModifyingSystem = modifying_system[:64]
    item.SourceOfPreviousValues = source_of_previous_values[:64]
    item.ReasonForTheAttributeModification = reason.value
    if "OriginalAttributesSequence" not in ds:
        ds.OriginalAttributesSequence = DicomSequence()
    ds.OriginalAttributesSequence.append(item)
    # SOP Common: when the instance was last coerced or corrected (Type 3).
    ds.InstanceCoercionDateTime = dt(moment)
    return diff


def correct_file(
    path: Path,
    changes: Mapping[str, str | Sequence[str]],
    *,
    reason: str | ModificationReason,
    source_of_previous_values: str = "",
    modifying_system: str = MODIFYING_SYSTEM,
    when: datetime | None = None,
) -> Correction:
    """Correct *path* in place (atomically: temp file, then ``os.replace``)."""
    path = Path(path)
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise WriteError(f"{path}: not a readable DICOM file ({exc}); check the path") from exc
    moment = when or now()
    diff = apply_correction(
        ds,
        changes,
        reason=reason,
        source_of_previous_values=source_of_previous_values,
        modifying_system=modifying_system,
        when=moment,
        where=str(path),
    )
    if diff:
        write_atomically([(path, encode(ds, str(path)))], overwrite=True)
    return Correction(
        path,
        str(ds.get("SOPInstanceUID", "")),
        diff,
        ModificationReason(str(reason).upper() if isinstance(reason, str) else reason),
        dt(moment),
    )


@dataclass(frozen=True)
class CorrectionRow:
    """One row of a batch CSV: which file, what to set, and optionally why and from where."""

    path: Path
    changes: dict[str, str]
    reason: str | None
    source: str | None
    line: int


def read_correction_csv(csv_path: Path) -> list[CorrectionRow]:
    """Read a wide CSV: a ``path`` column, one column per keyword, optional ``reason`` and ``source``.

    An empty cell leaves that attribute unchanged; ``""`` (two double quotes inside the
    cell, i.e. the text ``""``) empties it. Relative paths are relative to the CSV's folder.
    """
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise WriteError(f"--csv {csv_path}: cannot read it ({exc.strerror})") from exc
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "path" not in fields:
        raise WriteError(
            f"--csv {csv_path}: needs a 'path' column (found {', '.join(fields) or 'no header'}); "
            "header example: path,PatientID,PatientName,reason,source"
        )
    keywords = [f for f in fields if f not in ("path", "reason", "source")]
    rows: list[CorrectionRow] = []
    for number, record in enumerate(reader, start=2):
        target = Path(record["path"] or "")
        if not target.is_absolute():
            target = csv_path.parent / target
        changes: dict[str, str] = {}
        for keyword in keywords:
            cell = record.get(keyword)
            if cell is None or cell == "":
                continue
            changes[keyword] = "" if cell == '""' else cell
        rows.append(CorrectionRow(target, changes, record.get("reason") or None, record.get("source") or None, number))
    return rows
