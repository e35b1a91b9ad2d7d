"""Radiation dose: Radiation Dose SRs and dose-bearing image headers → ``dose_events`` rows.

Two entry points, both returning a list of rows (dicts keyed by
:data:`DOSE_EVENT_COLUMNS`, ``None`` where a value is absent):

- :func:`dose_events` reads a Radiation Dose SR: the X-Ray Radiation Dose SR (CT,
  PS3.16 TID 10011; projection X-ray incl. fluoroscopy, radiography and mammography,
  TID 10001), an Enhanced/Comprehensive SR carrying those templates, the
  Radiopharmaceutical Radiation Dose SR (TID 10021), and the Siemens ARCADIS "Radiation
  Summary Report" (a private template). It gives one ``record='event'`` row per
  irradiation event container (TID 10003 "Irradiation Event X-Ray Data", TID 10013 "CT
  Acquisition") or radiopharmaceutical administration (TID 10022), and one
  ``record='accumulated'`` row per accumulated container (TID 10002 per acquisition
  plane, TID 10012 for CT; for mammography, TID 10005, one row per breast).
- :func:`dose_events_from_image` reads the dose an image header carries (``source =
  'header'``): mammography (Organ Dose as average glandular dose, compression),
  DX/CR/RF/XA (Image and Fluoroscopy Area Dose Product, entrance dose), CT (CTDIvol;
  one row per Exposure Dose Sequence item of a dose-information image), NM/PET
  (administered activity).

Concepts are matched by code, never by meaning; the table of NUM concepts, their
template units and the unit conversions lives in ``dicomlake/data/dose_codes.toml``.
A value in a unit that cannot be converted to its column's unit is left out (and
logged), never stored in the wrong unit.

Columns (name, type, unit, meaning)
-----------------------------------
===================================== ========= ========= ==========================================
column                                type      unit      meaning
===================================== ========= ========= ==========================================
SOPInstanceUID                        string              the SR or image the row comes from
StudyInstanceUID                      string              its study
PatientID                             string              its patient
source                                string              'rdsr' (a dose SR) or 'header' (an image)
template                              string              '10011', '10001', '10021' or '99SMS_RADSUM'
record                                string              'event' or 'accumulated'
modality_family                       string              'CT', 'DX', 'RF', 'MG', 'NM' or 'XA'
IrradiationEventUID                   string              event UID (113769; for NM 113503)
event_datetime                        timestamp local     DateTime Started (111526) / acquisition time
irradiation_event_type                string              113721 meaning, e.g. 'Fluoroscopy'
acquisition_protocol                  string              125203 (header: ProtocolName)
target_region                         string              123014 meaning (header: BodyPartExamined)
acquisition_plane                     string              113764 meaning, e.g. 'Single Plane'
reference_point_definition            string              113780 text or meaning
ct_acquisition_type                   string              113820 meaning, e.g. 'Spiral Acquisition'
CTDIvol_mGy                           double    mGy       Mean CTDIvol (113830), first value
DLP_mGycm                             double    mGy.cm    DLP (113838), first value
phantom                               string              CTDIw phantom: '16' (head) or '32' (body) cm
scanning_length_mm                    double    mm        Scanning Length (113825)
pitch_factor                          double    ratio     Pitch Factor (113828)
total_collimation_width_mm            double    mm        Nominal Total Collimation Width (113827)
number_of_xray_sources                int64               Number of X-Ray Sources (113823)
exposure_time_per_rotation_s          double    s         Exposure Time per Rotation (113834), mean
kvp                                   double    kV        KVP (113733), mean over pulses/sources
kvp_values                            string    kV        every KVP value of the event, '\\'-joined (RDSR)
tube_current_mA                       double    mA        X-Ray Tube Current (113734), mean
tube_current_mA_values                string    mA        every X-Ray Tube Current value, '\\'-joined (RDSR)
exposure_time_ms                      double    ms        Exposure Time (113824, retired 113735), sum
exposure_mAs                          double    mAs       Exposure (113736), sum over pulses
pulse_rate                            double    1/s       Pulse Rate (113791), mean
pulse_width_ms                        double    ms        Pulse Width (113793), mean
number_of_pulses                      int64               Number of Pulses (113768), sum
irradiation_duration_s                double    s         Irradiation Duration (113742), sum
half_value_layer_mm                   double    mm        Half Value Layer (111634), mean
anode_target                          string              Anode Target Material, e.g. 'TUNGSTEN'
filter_material                       string              X-Ray Filter Material(s), '\\'-joined
dap_Gym2                              double    Gy.m2     Dose Area Product (122130), first value
dose_rp_Gy                            double    Gy        Dose (RP) (113738), first value
entrance_exposure_mGy                 double    mGy       Entrance Exposure at RP (111636) / entrance dose, first value
distance_source_to_rp_mm              double    mm        Distance Source to Reference Point (113737)
agd_mGy                               double    mGy       Average Glandular Dose (111631), first value
compressed_breast_thickness_mm        double    mm        Compression Thickness (111633)
compression_force_N                   double    N         Compression Force (111647)
laterality                            string              'R', 'L', 'B' (or header 'U')
view                                  string              mammography view as ACR MQCM: 'CC', 'MLO', ...
exposure_index                        double              Exposure Index (113845; IEC 62494-1)
target_exposure_index                 double              Target Exposure Index (113846)
deviation_index                       double              Deviation Index (113847)
effective_dose_mSv                    double    mSv       Effective Dose (113839)
device_observer_uid                   string              Device Observer UID (121012)
device_observer_name                  string              Device Observer Name (121013)
device_observer_manufacturer          string              Device Observer Manufacturer (121014)
device_observer_model                 string              Device Observer Model Name (121015)
device_observer_serial_number         string              Device Observer Serial Number (121016)
start_of_xray_irradiation             timestamp local     Start of X-Ray Irradiation (113809)
end_of_xray_irradiation               timestamp local     End of X-Ray Irradiation (113810)
ct_dose_length_product_total_mGycm    double    mGy.cm    CT Dose Length Product Total (113813)
ct_effective_dose_total_mSv           double    mSv       CT Effective Dose Total (113814)
total_number_of_events                int64               Total Number of Irradiation Events (113812)
dap_total_Gym2                        double    Gy.m2     Dose Area Product Total (113722)
dose_rp_total_Gy                      double    Gy        Dose (RP) Total (113725)
fluoro_dap_total_Gym2                 double    Gy.m2     Fluoro Dose Area Product Total (113726)
fluoro_dose_rp_total_Gy               double    Gy        Fluoro Dose (RP) Total (113728)
acquisition_dap_total_Gym2            double    Gy.m2     Acquisition Dose Area Product Total (113727)
acquisition_dose_rp_total_Gy          double    Gy        Acquisition Dose (RP) Total (113729)
total_fluoro_time_s                   double    s         Total Fluoro Time (113730)
total_acquisition_time_s              double    s         Total Acquisition Time (113855)
total_number_of_radiographic_frames   int64               Total Number of Radiographic Frames (113731)
agd_total_mGy                         double    mGy       Accumulated AGD (111637) of the row's breast
radiopharmaceutical                   string              Radiopharmaceutical agent (TID 10022)
radionuclide                          string              Radionuclide
administered_activity_MBq             double    MBq       Administered activity (113507)
route_of_administration               string              Route of administration
radiopharmaceutical_start_datetime    timestamp local     Radiopharmaceutical Start DateTime (123003)
===================================== ========= ========= ==========================================

Where a template gives several values for one event (per pulse, per CT X-ray source,
or a multi-valued NumericValue) a row holds their mean (kVp, tube current, pulse
width, rotation time, HVL) or their sum (exposure, exposure time, number of pulses,
irradiation duration); doses take the first value. The kVp and tube current values
themselves are kept too, in document order (``kvp_values``, ``tube_current_mA_values``:
e.g. the per-pulse values of a GE Pristina or a tomosynthesis sweep), so the mean is
never the only record of them. Projection RDSRs are ``'MG'`` for
mammography, ``'RF'`` when they record fluoroscopy (a Fluoroscopy event or a non-zero
fluoro total), else ``'DX'``; ``'XA'`` only comes from XA image headers, and CR/PX/IO
headers count as ``'DX'``. Not extracted: CT Dose Check alerts, per-organ NM doses,
size-specific dose estimates; TID 10012 has no CTDIvol total, so there is no such column.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
from pydicom.dataset import Dataset

from dicomlake.errors import ExtractionError
from dicomlake.extract.sr import (
    Code,
    ContentItem,
    content_tree,
    number_values,
    parse_datetime,
    sequence_items,
    template_identifier,
    text_value,
    text_values,
)
from dicomlake.lakeschema import DOSE_COLUMNS, DOSE_EVENT_COLUMNS

__all__ = ["DOSE_EVENT_COLUMNS", "dose_events", "dose_events_from_image"]

log = logging.getLogger(__name__)


_COLUMN_UNIT = {c.name: c.unit for c in DOSE_COLUMNS if c.unit is not None}
_INT_COLUMNS = frozenset(c.name for c in DOSE_COLUMNS if pa.types.is_integer(c.type))

# --- concept codes (PS3.16), as "SCHEME:VALUE" ------------------------------------------
_XRAY_DOSE_REPORT = "DCM:113701"  # TID 10001 / TID 10011 root
_RADIOPHARMACEUTICAL_DOSE_REPORT = "DCM:113500"  # TID 10021 root
_SIEMENS_RADIATION_SUMMARY = "99SMS_RADSUM:C-10"  # Siemens ARCADIS, private
_IRRADIATION_EVENT_XRAY_DATA = "DCM:113706"  # TID 10003
_CT_ACQUISITION = "DCM:113819"  # TID 10013
_EVENT_CONTAINERS = frozenset({_IRRADIATION_EVENT_XRAY_DATA, _CT_ACQUISITION})
_ACCUMULATED_XRAY_DOSE = "DCM:113702"  # TID 10002
_CT_ACCUMULATED_DOSE = "DCM:113811"  # TID 10012
_ACCUMULATED_CONTAINERS = frozenset({_ACCUMULATED_XRAY_DOSE, _CT_ACCUMULATED_DOSE})
_RADIOPHARMACEUTICAL_ADMINISTRATION = "DCM:113502"  # TID 10022
_ACCUMULATED_AGD = "DCM:111637"  # TID 10005
_PROCEDURE_REPORTED = "DCM:121058"
_IRRADIATION_EVENT_UID = "DCM:113769"
_DATETIME_STARTED = "DCM:111526"
_IRRADIATION_EVENT_TYPE = "DCM:113721"
_ACQUISITION_PROTOCOL = "DCM:125203"
_TARGET_REGION = "DCM:123014"
_ACQUISITION_PLANE = "DCM:113764"
_REFERENCE_POINT_DEFINITION = "DCM:113780"
_CT_ACQUISITION_TYPE = "DCM:113820"
_CTDIW_PHANTOM_TYPE = "DCM:113835"
_ANODE_TARGET_MATERIAL = "DCM:111632"
_XRAY_FILTER_MATERIAL = "DCM:113757"
_IMAGE_VIEW = "DCM:111031"
_IMAGE_LATERALITY = "DCM:111027"
_LATERALITY = frozenset({"SRT:G-C171", "SCT:272741003"})
_START_OF_IRRADIATION = "DCM:113809"
_END_OF_IRRADIATION = "DCM:113810"
_OBSERVER = {
    "DCM:121012": "device_observer_uid",
    "DCM:121013": "device_observer_name",
    "DCM:121014": "device_observer_manufacturer",
    "DCM:121015": "device_observer_model",
    "DCM:121016": "device_observer_serial_number",
}
_RADIOPHARMACEUTICAL_AGENT = frozenset({"SRT:F-61FDB"})  # SCT: matched by meaning below
_RADIONUCLIDE = frozenset({"SRT:C-10072", "SCT:89457008"})
_ROUTE_OF_ADMINISTRATION = frozenset({"SRT:G-C340", "SCT:410675002"})
_ADMINISTRATION_EVENT_UID = "DCM:113503"
_RADIOPHARMACEUTICAL_START = "DCM:123003"
_SIEMENS_EXAM_START = "99SMS_RADSUM:C-206"
_SIEMENS_EXAM_END = "99SMS_RADSUM:C-208"

# Procedure reported (TID 10001 row 1, CID 10000): SRT and SCT forms.
_PROCEDURE_CT = frozenset({"SRT:P5-08000", "SCT:77477000"})
_PROCEDURE_MAMMOGRAPHY = frozenset({"SRT:P5-40010", "SCT:71651007"})
_FLUOROSCOPY = frozenset({"SRT:P5-06000", "SCT:44491008"})  # CID 10002 Irradiation Event Type
_FLUORO_TOTALS = ("fluoro_dap_total_Gym2", "fluoro_dose_rp_total_Gy", "total_fluoro_time_s")

# CID 4031/244 lateralities (and breast sites used as laterality by TID 10005) → DICOM
# Image Laterality (0020,0062) enumerated values. Codes checked against pydicom's SNOMED map.
_LATERALITY_VALUES = {
    "SRT:G-A100": "R", "SCT:24028007": "R", "SRT:T-04020": "R", "SCT:73056007": "R",
    "SRT:G-A101": "L", "SCT:7771000": "L", "SRT:T-04030": "L", "SCT:80248007": "L",
    "SRT:G-A102": "B", "SCT:51440002": "B",
}  # fmt: skip
# CID 4014 View for Mammography → ACR MQCM abbreviation (as in ViewPosition of MG images).
_MAMMOGRAPHY_VIEWS = {
    "SRT:R-10242": "CC", "SCT:399162004": "CC",
    "SRT:R-10226": "MLO", "SCT:399368009": "MLO",
    "SRT:R-10224": "ML", "SCT:399260004": "ML",
    "SRT:R-10228": "LM", "SCT:399352003": "LM",
    "SRT:R-10230": "LMO", "SCT:399099002": "LMO",
    "SRT:R-1024A": "XCCL", "SCT:399192008": "XCCL",
    "SRT:R-1024B": "XCCM", "SCT:399101009": "XCCM",
    "SRT:R-102D0": "SIO", "SCT:399188001": "SIO",
    "SRT:R-40AAA": "ISO", "SCT:441555000": "ISO",
    "SRT:R-10244": "FB", "SCT:399196006": "FB",
}  # fmt: skip
# CTDIw Phantom Type (CID 4052): IEC head phantom is 16 cm, IEC body phantom 32 cm across.
_PHANTOMS = {"DCM:113690": "16", "DCM:113691": "32"}
# CT Acquisition Type (0018,9302) defined terms → CID 10013 meanings, so that header rows
# and SR rows use one vocabulary.
_CT_ACQUISITION_TYPES = {
    "SEQUENCED": "Sequenced Acquisition",
    "SPIRAL": "Spiral Acquisition",
    "CONSTANT_ANGLE": "Constant Angle Acquisition",
    "STATIONARY": "Stationary Acquisition",
    "FREE": "Free Acquisition",
}


# --- dose_codes.toml ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Concept:
    column: str
    unit: str
    how: str


@dataclass(frozen=True, slots=True)
class _Codes:
    event: Mapping[str, _Concept]
    accumulated: Mapping[str, _Concept]
    aliases: Mapping[str, str]
    units: Mapping[str, tuple[str, float]]


@functools.cache
def _codes() -> _Codes:
    text = importlib.resources.files("dicomlake.data").joinpath("dose_codes.toml").read_text()
    raw = tomllib.loads(text)

    def concepts(table: Mapping[str, Any]) -> dict[str, _Concept]:
        return {k: _Concept(v["column"], v.get("unit", ""), v["how"]) for k, v in table.items()}

    return _Codes(
        event=concepts(raw["event"]),
        accumulated=concepts(raw["accumulated"]),
        aliases=dict(raw.get("aliases", {})),
        units={k: (v[0], float(v[1])) for k, v in raw["units"].items()},
    )


def _normalise_unit(unit: str) -> str:
    return unit.strip().replace("^", "").replace("*", ".")


def convert(value: float, unit: str, column: str) -> float | None:
    """Convert ``value`` given in ``unit`` (a UCUM code) to the unit of ``column``.

    Returns ``None`` when either unit is unknown or they measure different quantities.

    >>> convert(126.596, "dGy.cm2", "dap_Gym2")
    0.00126596
    """
    target = _COLUMN_UNIT[column]
    source = _normalise_unit(unit)
    if source == target:
        return value
    units = _codes().units
    if source not in units or target not in units:
        return None
    (quantity, factor), (target_quantity, target_factor) = units[source], units[target]
    if quantity != target_quantity:
        return None
    return float(f"{value * factor / target_factor:.15g}")


# --- rows -----------------------------------------------------------------------------------
def _empty_row() -> dict[str, object]:
    return dict.fromkeys(DOSE_EVENT_COLUMNS)


def _header_identity(ds: Dataset) -> dict[str, object]:
    return {
        "SOPInstanceUID": text_value(ds, 0x00080018),
        "StudyInstanceUID": text_value(ds, 0x0020000D),
        "PatientID": text_value(ds, 0x00100020),
    }


def _finish(row: dict[str, object]) -> dict[str, object]:
    for name in _INT_COLUMNS:
        value = row[name]
        if isinstance(value, float):
            row[name] = round(value)
    return row


def _code_key(code: Code | None) -> str:
    """``"SCHEME:VALUE"`` with SNOMED's old designator SNM3 read as SRT (same code values)."""
    if code is None:
        return ""
    return f"SRT:{code.value}" if code.scheme == "SNM3" else code.key


def _concept_key(item: ContentItem) -> str | None:
    key = _code_key(item.concept)
    if not key:
        return None
    return _codes().aliases.get(key, key)


# columns whose every value is kept beside the statistic (a string column, '\'-joined)
_LISTED = {"kvp": "kvp_values", "tube_current_mA": "tube_current_mA_values"}


def _num_columns(items: Iterable[ContentItem], table: Mapping[str, _Concept], where: str) -> dict[str, object]:
    """Fill columns from the NUM items among ``items`` that ``table`` maps."""
    collected: dict[str, list[float]] = {}
    how: dict[str, str] = {}
    for item in items:
        if item.value_type != "NUM" or not item.numbers:
            continue
        key = _concept_key(item)
        concept = table.get(key or "")
        if concept is None:
            continue
        unit = item.unit.value if item.unit is not None and item.unit.value else concept.unit
        if not unit:
            log.warning("%s: %s has no unit and the template gives none; left out", where, key)
            continue
        for number in item.numbers:
            value = convert(number, unit, concept.column)
            if value is None:
                log.warning(
                    "%s: %s = %s in unit %r cannot be converted to %s; left out",
                    where, key, number, unit, concept.column,
                )  # fmt: skip
                continue
            collected.setdefault(concept.column, []).append(value)
            how[concept.column] = concept.how
    out: dict[str, object] = {}
    for column, values in collected.items():
        listed = _LISTED.get(column)
        if listed is not None:
            out[listed] = "\\".join(f"{v:.12g}" for v in values)
        if how[column] == "mean":
            out[column] = float(f"{math.fsum(values) / len(values):.15g}")
        elif how[column] == "sum":
            out[column] = float(f"{math.fsum(values):.15g}")
        else:
            out[column] = values[0]
    return out


def _first(item: ContentItem, keys: Iterable[str] | str, stop: Iterable[str] = ()) -> ContentItem | None:
    wanted = {keys} if isinstance(keys, str) else set(keys)
    for child in item.walk(stop=stop):
        if _concept_key(child) in wanted:
            return child
    return None


def _text(item: ContentItem | None) -> str | None:
    if item is None:
        return None
    text = item.value_text
    return text.strip() or None if text is not None else None


def _laterality(code: Code | None) -> str | None:
    if code is None:
        return None
    found = _LATERALITY_VALUES.get(_code_key(code))
    if found:
        return found
    meaning = code.meaning.lower()
    if "both" in meaning or "bilateral" in meaning or ("right" in meaning and "left" in meaning):
        return "B"
    if meaning.startswith("right"):
        return "R"
    if meaning.startswith("left"):
        return "L"
    return None


def _material(code: Code | None) -> str | None:
    """CID 10006/10016 material as the header's defined term ('TUNGSTEN', 'ALUMINUM')."""
    if code is None:
        return None
    if code.meaning:
        word = code.meaning.replace("AND/OR", "or").replace("and/or", "or").split(" or ")[0]
        term = word.split("(")[0].strip().upper().replace("ALUMINIUM", "ALUMINUM")
        return term.split()[0] if term else None
    return code.value or None


def _observer_context(root: ContentItem) -> dict[str, object]:
    out: dict[str, object] = {}
    for child in root.children:
        column = _OBSERVER.get(child.key or "")
        if column is not None and column not in out:
            out[column] = _text(child)
    start = root.child(_START_OF_IRRADIATION)
    end = root.child(_END_OF_IRRADIATION)
    out["start_of_xray_irradiation"] = parse_datetime(start.text) if start else None
    out["end_of_xray_irradiation"] = parse_datetime(end.text) if end else None
    return out


def _containers(root: ContentItem, keys: frozenset[str]) -> list[ContentItem]:
    """Containers with one of ``keys`` anywhere under ``root``, not looking inside events."""
    stop = _EVENT_CONTAINERS | _ACCUMULATED_CONTAINERS | {_RADIOPHARMACEUTICAL_ADMINISTRATION}
    return [item for item in root.walk(stop=stop) if item.key in keys]


def _xray_event(event: ContentItem, where: str) -> dict[str, object]:
    """One TID 10003 or TID 10013 container → the event columns it fills."""
    codes = _codes()
    row: dict[str, object] = _num_columns(event.walk(), codes.event, where)
    uid = _first(event, _IRRADIATION_EVENT_UID)
    row["IrradiationEventUID"] = _text(uid)
    started = _first(event, _DATETIME_STARTED)
    row["event_datetime"] = parse_datetime(started.text) if started else None
    for column, key in (
        ("irradiation_event_type", _IRRADIATION_EVENT_TYPE),
        ("acquisition_protocol", _ACQUISITION_PROTOCOL),
        ("target_region", _TARGET_REGION),
        ("reference_point_definition", _REFERENCE_POINT_DEFINITION),
        ("ct_acquisition_type", _CT_ACQUISITION_TYPE),
    ):
        row[column] = _text(_first(event, key))
    plane = event.child(_ACQUISITION_PLANE)
    row["acquisition_plane"] = _text(plane)
    phantom = _first(event, _CTDIW_PHANTOM_TYPE)
    if phantom is not None and phantom.code is not None:
        row["phantom"] = _PHANTOMS.get(_code_key(phantom.code)) or _text(phantom)
    anode = _first(event, _ANODE_TARGET_MATERIAL)
    row["anode_target"] = _material(anode.code) if anode else None
    materials: list[str] = []
    for item in event.walk():
        if _concept_key(item) == _XRAY_FILTER_MATERIAL:
            material = _material(item.code)
            if material and material not in materials:
                materials.append(material)
    row["filter_material"] = "\\".join(materials) or None
    laterality = None
    for item in event.walk():
        if _concept_key(item) in _LATERALITY or _concept_key(item) == _IMAGE_LATERALITY:
            laterality = _laterality(item.code)
            if laterality:
                break
    row["laterality"] = laterality
    view = _first(event, _IMAGE_VIEW)
    if view is not None and view.code is not None:
        row["view"] = _MAMMOGRAPHY_VIEWS.get(_code_key(view.code)) or _text(view)
    event_type = _first(event, _IRRADIATION_EVENT_TYPE)
    row["_fluoroscopy"] = (
        event_type is not None and event_type.code is not None
        and _code_key(event_type.code) in _FLUOROSCOPY
    )  # fmt: skip
    return row


def _accumulated(container: ContentItem, where: str) -> list[dict[str, object]]:
    """One TID 10002 / 10012 container → one row, or one per breast for TID 10005."""
    codes = _codes()
    common: dict[str, object] = {
        "acquisition_plane": _text(container.child(_ACQUISITION_PLANE)),
        "reference_point_definition": _text(_first(container, _REFERENCE_POINT_DEFINITION, stop=_EVENT_CONTAINERS)),
    }
    totals = _num_columns(container.walk(stop=_EVENT_CONTAINERS), codes.accumulated, where)
    rows: list[dict[str, object]] = []
    for item in container.walk(stop=_EVENT_CONTAINERS):
        if _concept_key(item) != _ACCUMULATED_AGD or not item.numbers:
            continue
        # TID 10005: one Accumulated Average Glandular Dose per breast, its laterality a
        # concept modifier of the NUM item.
        unit = item.unit.value if item.unit is not None and item.unit.value else "mGy"
        agd = convert(item.numbers[0], unit, "agd_total_mGy")
        if agd is None:
            log.warning("%s: accumulated AGD in unit %r left out", where, unit)
        laterality = next(
            (_laterality(c.code) for c in item.children if _concept_key(c) in _LATERALITY),
            None,
        )
        rows.append({**common, "agd_total_mGy": agd, "laterality": laterality})
    if totals or not rows:
        rows.append({**common, **totals})
    return rows


def _template_and_family(
    ds: Dataset, root: ContentItem, events: list[dict[str, object]],
    accumulated: list[dict[str, object]],
) -> tuple[str, str]:  # fmt: skip
    tid = template_identifier(ds)
    if tid and tid.isdigit():
        tid = str(int(tid))  # "digits without leading zeros"; some private templates have them
    procedure = _first(root, _PROCEDURE_REPORTED, stop=_EVENT_CONTAINERS)
    procedure_key = _code_key(procedure.code) if procedure is not None else ""
    has_ct = bool(_containers(root, frozenset({_CT_ACQUISITION, _CT_ACCUMULATED_DOSE})))
    if procedure_key in _PROCEDURE_CT or has_ct or tid == "10011":
        return "10011", "CT"
    template = "10001"  # also for reports without Content Template Sequence (GE OEC)
    if (
        procedure_key in _PROCEDURE_MAMMOGRAPHY
        or any(r.get("agd_mGy") is not None for r in events)
        or any(r.get("agd_total_mGy") is not None for r in accumulated)
    ):
        return template, "MG"
    # Dual-purpose rooms (Siemens Dual-RDSR-DX) write fluoro totals of 0 for radiography.
    fluoro = any(r.get("_fluoroscopy") for r in events) or any(r.get(c) for r in accumulated for c in _FLUORO_TOTALS)
    return template, "RF" if fluoro else "DX"


def _radiopharmaceutical_events(root: ContentItem, where: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for admin in _containers(root, frozenset({_RADIOPHARMACEUTICAL_ADMINISTRATION})):
        row: dict[str, object] = _num_columns(admin.walk(), _codes().event, where)
        agent = next(
            (
                item
                for item in admin.walk()
                if _concept_key(item) in _RADIOPHARMACEUTICAL_AGENT
                or (item.concept is not None
                    and item.concept.meaning.lower() == "radiopharmaceutical agent")
            ),
            None,
        )  # fmt: skip
        row["radiopharmaceutical"] = _text(agent)
        row["radionuclide"] = _text(_first(admin, _RADIONUCLIDE))
        row["route_of_administration"] = _text(_first(admin, _ROUTE_OF_ADMINISTRATION))
        row["IrradiationEventUID"] = _text(_first(admin, _ADMINISTRATION_EVENT_UID))
        start = _first(admin, _RADIOPHARMACEUTICAL_START)
        started = parse_datetime(start.text) if start else None
        row["radiopharmaceutical_start_datetime"] = started
        row["event_datetime"] = started
        rows.append(row)
    return rows


def dose_events(ds: Dataset, root: ContentItem | None = None) -> list[dict[str, object]]:
    """Return the ``dose_events`` rows of a Radiation Dose SR; ``[]`` for anything else.

    Parameters
    ----------
    root
        The SR's content tree when the caller has read it already
        (:func:`~dicomlake.extract.sr.content_tree_from_elements`); read from ``ds`` otherwise,
        and then ``ds`` needs no Content Sequence.
    ds
        Any dataset. X-Ray Radiation Dose SRs (CT TID 10011, projection X-ray TID 10001
        incl. RF/DX/MG), Enhanced or Comprehensive SRs whose root is one of those
        templates, Radiopharmaceutical Radiation Dose SRs (TID 10021) and Siemens
        ARCADIS Radiation Summary Reports give rows; other datasets give ``[]``.

    Returns
    -------
    list[dict[str, object]]
        One ``record='event'`` row per irradiation event (or radiopharmaceutical
        administration) in document order, then one ``record='accumulated'`` row per
        accumulated container (per breast for mammography). Every row has every key of
        :data:`DOSE_EVENT_COLUMNS`.

    Raises
    ------
    ExtractionError
        Only for an internal failure on an SR this module recognised as a dose report;
        the message names the SOP Instance UID. Malformed values never raise: they are
        left out.
    """
    if root is None:
        root = content_tree(ds)
    if root is None:
        return []
    root_key = root.key
    if root_key not in (
        _XRAY_DOSE_REPORT, _RADIOPHARMACEUTICAL_DOSE_REPORT, _SIEMENS_RADIATION_SUMMARY
    ):  # fmt: skip
        return []
    identity = _header_identity(ds)
    where = f"SR {identity['SOPInstanceUID']}"
    try:
        return _dose_report_rows(ds, root, identity, where)
    except Exception as exc:  # pragma: no cover - a bug, reported with the file's identity
        raise ExtractionError(
            f"{where}: reading the dose report (root {root_key}) failed: {exc!r}; the "
            f"SR was recognised but could not be turned into dose_events rows."
        ) from exc


def _dose_report_rows(
    ds: Dataset, root: ContentItem, identity: dict[str, object], where: str
) -> list[dict[str, object]]:
    base = {**_empty_row(), **identity, "source": "rdsr", **_observer_context(root)}
    if root.key == _SIEMENS_RADIATION_SUMMARY:
        totals = _num_columns(root.children, _codes().accumulated, where)
        start, end = root.child(_SIEMENS_EXAM_START), root.child(_SIEMENS_EXAM_END)
        return [_finish({
            **base, **totals, "template": "99SMS_RADSUM", "record": "accumulated",
            "modality_family": "RF",
            "start_of_xray_irradiation": parse_datetime(start.text) if start else None,
            "end_of_xray_irradiation": parse_datetime(end.text) if end else None,
        })]  # fmt: skip
    if root.key == _RADIOPHARMACEUTICAL_DOSE_REPORT:
        base.update(template="10021", modality_family="NM")
        return [_finish({**base, **row, "record": "event"}) for row in _radiopharmaceutical_events(root, where)]
    events = [_xray_event(e, where) for e in _containers(root, _EVENT_CONTAINERS)]
    accumulated = [
        row for container in _containers(root, _ACCUMULATED_CONTAINERS) for row in _accumulated(container, where)
    ]
    template, family = _template_and_family(ds, root, events, accumulated)
    base.update(template=template, modality_family=family)
    rows: list[dict[str, object]] = []
    for event in events:
        event.pop("_fluoroscopy", None)
        rows.append(_finish({**base, **event, "record": "event"}))
    for total in accumulated:
        rows.append(_finish({**base, **total, "record": "accumulated"}))
    return rows


# --- image headers ------------------------------------------------------------------------
_MODALITY_FAMILY = {
    "MG": "MG", "CR": "DX", "DX": "DX", "PX": "DX", "IO": "DX", "RF": "RF", "XA": "XA",
    "CT": "CT", "NM": "NM", "PT": "NM",
}  # fmt: skip
_HEADER_DOSE_COLUMNS = (
    "CTDIvol_mGy", "DLP_mGycm", "dap_Gym2", "dose_rp_Gy", "entrance_exposure_mGy",
    "agd_mGy", "administered_activity_MBq",
)  # fmt: skip
# PET Image Storage, Enhanced PET, Legacy Converted Enhanced PET (PS3.4 Table B.5-1).
_PET_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1"}
)


def _number(ds: Dataset, keyword: str, scale: float = 1.0) -> float | None:
    values = number_values(ds, keyword)
    return float(f"{values[0] * scale:.15g}") if values else None


def _first_number(ds: Dataset, *candidates: tuple[str, float]) -> float | None:
    for keyword, scale in candidates:
        value = _number(ds, keyword, scale)
        if value is not None:
            return value
    return None


def _header_datetime(ds: Dataset) -> datetime | None:
    found = parse_datetime(text_value(ds, "AcquisitionDateTime"))
    if found is None:
        found = parse_datetime(text_value(ds, "AcquisitionDate"), text_value(ds, "AcquisitionTime"))
    if found is None:
        found = parse_datetime(text_value(ds, "ContentDate"), text_value(ds, "ContentTime"))
    return found


def _xray_header(ds: Dataset, family: str | None) -> dict[str, object]:
    """The X-ray acquisition attributes of an image header or Exposure Dose Sequence item."""
    row: dict[str, object] = {
        "kvp": _number(ds, "KVP"),
        # PS3.3 C.8.7.2.1 / C.8.15.3.x: the most precise form the header gives wins.
        "tube_current_mA": _first_number(
            ds,
            ("XRayTubeCurrentInuA", 1e-3),
            ("XRayTubeCurrentInmA", 1.0),
            ("XRayTubeCurrent", 1.0),
        ),
        "exposure_time_ms": _first_number(
            ds, ("ExposureTimeInuS", 1e-3), ("ExposureTimeInms", 1.0), ("ExposureTime", 1.0)
        ),
        "exposure_mAs": _first_number(ds, ("ExposureInuAs", 1e-3), ("ExposureInmAs", 1.0), ("Exposure", 1.0)),
        # (0018,115E) Image and Fluoroscopy Area Dose Product is in dGy·cm² (PS3.3 C.8.7.8).
        "dap_Gym2": _number(ds, "ImageAndFluoroscopyAreaDoseProduct", 1e-5),
        # (0040,8302) Entrance Dose in mGy; (0040,0302) Entrance Dose is in dGy.
        "entrance_exposure_mGy": _first_number(ds, ("EntranceDoseInmGy", 1.0), ("EntranceDose", 100.0)),
        "half_value_layer_mm": _number(ds, "HalfValueLayer"),
        "exposure_index": _number(ds, "ExposureIndex"),
        "target_exposure_index": _number(ds, "TargetExposureIndex"),
        "deviation_index": _number(ds, "DeviationIndex"),
        "CTDIvol_mGy": _number(ds, "CTDIvol"),
        "anode_target": (text_value(ds, "AnodeTargetMaterial") or "").upper() or None,
        "acquisition_protocol": text_value(ds, "ProtocolName"),
        "target_region": text_value(ds, "BodyPartExamined"),
    }
    filters = [
        part.strip().upper() for value in text_values(ds, "FilterMaterial") for part in value.split(",") if part.strip()
    ]
    row["filter_material"] = "\\".join(filters) or None
    if family == "MG":
        # (0040,0316) Organ Dose is in dGy; for mammography it is the average glandular dose.
        row["agd_mGy"] = _number(ds, "OrganDose", 100.0)
        row["compressed_breast_thickness_mm"] = _number(ds, "BodyPartThickness")
        row["compression_force_N"] = _number(ds, "CompressionForce")
    phantoms = [
        _PHANTOMS.get(f"{(text_value(i, 0x00080102) or '').upper()}:{text_value(i, 0x00080100)}")
        for i in sequence_items(ds, 0x00189346)  # CTDI Phantom Type Code Sequence
    ]
    row["phantom"] = next((p for p in phantoms if p), None)
    acquisition_type = text_value(ds, "AcquisitionType")
    if family == "CT" and acquisition_type:
        row["ct_acquisition_type"] = _CT_ACQUISITION_TYPES.get(acquisition_type, acquisition_type)
    row["pitch_factor"] = _number(ds, "SpiralPitchFactor")
    row["total_collimation_width_mm"] = _number(ds, "TotalCollimationWidth")
    return row


def _elscint_dlp(item: Dataset) -> float | None:
    """Philips (ELSCINT1) private DLP in a CT dose-information Exposure Dose Sequence item."""
    try:
        block = item.private_block(0x00E1, "ELSCINT1")
    except (KeyError, ValueError):
        return None
    except Exception:
        return None
    values = number_values(item, block.get_tag(0x21))
    return values[0] if values else None


def _radiopharmaceutical_header_rows(ds: Dataset, base: dict[str, object]) -> list[dict[str, object]]:
    pet = (text_value(ds, "Modality") or "").upper() == "PT" or (text_value(ds, "SOPClassUID") in _PET_SOP_CLASSES)
    rows: list[dict[str, object]] = []
    for item in sequence_items(ds, "RadiopharmaceuticalInformationSequence"):
        # PS3.3 C.8.9.1 (PET Isotope): Radionuclide Total Dose in Bq;
        # C.8.4.10 (NM Isotope): in MBq.
        activity = _number(item, "RadionuclideTotalDose", 1e-6 if pet else 1.0)
        if activity is None:
            continue
        codes = sequence_items(item, "RadiopharmaceuticalCodeSequence")
        nuclides = sequence_items(item, "RadionuclideCodeSequence")
        routes = sequence_items(item, "AdministrationRouteCodeSequence")
        started = parse_datetime(text_value(item, "RadiopharmaceuticalStartDateTime"))
        rows.append({
            **base,
            "administered_activity_MBq": activity,
            "radiopharmaceutical": text_value(item, "Radiopharmaceutical")
            or (text_value(codes[0], 0x00080104) if codes else None),
            "radionuclide": text_value(nuclides[0], 0x00080104) if nuclides else None,
            "route_of_administration": (text_value(routes[0], 0x00080104) if routes else None)
            or text_value(item, "RadiopharmaceuticalRoute"),
            "radiopharmaceutical_start_datetime": started,
            "IrradiationEventUID": text_value(item, "RadiopharmaceuticalAdministrationEventUID"),
        })  # fmt: skip
    return rows


def dose_events_from_image(ds: Dataset) -> list[dict[str, object]]:
    """Return the dose an image header carries as ``dose_events`` rows (``source='header'``).

    Parameters
    ----------
    ds
        An image header. Mammography: Organ Dose (dGy, stored as ``agd_mGy``), Body Part
        Thickness, Compression Force, Entrance Dose, technique factors, anode, filter,
        view and laterality. DX/CR/PX/RF/XA: Image and Fluoroscopy Area Dose Product
        (dGy·cm², stored in Gy·m²), Entrance Dose. CT: CTDIvol. NM/PET: Radionuclide
        Total Dose per Radiopharmaceutical Information Sequence item.

    Returns
    -------
    list[dict[str, object]]
        One row for the image; one per Exposure Dose Sequence item instead for a CT dose
        information image (e.g. Philips Brilliance secondary captures, whose private
        ELSCINT1 DLP is read too, plus a ``record='accumulated'`` row with the
        exam's DLP total); one per administration for NM/PET. ``[]`` when the
        header holds no dose value (CTDIvol, DLP, DAP, entrance dose, AGD, activity),
        and for SR documents (see :func:`dose_events`).
    """
    if content_tree(ds) is not None:
        return []
    modality = (text_value(ds, "Modality") or "").upper()
    family = _MODALITY_FAMILY.get(modality)
    base = {
        **_empty_row(), **_header_identity(ds), "source": "header", "record": "event",
        "modality_family": family, "event_datetime": _header_datetime(ds),
        "IrradiationEventUID": text_value(ds, "IrradiationEventUID"),
    }  # fmt: skip
    if family == "NM":
        return [_finish(row) for row in _radiopharmaceutical_header_rows(ds, base)]
    laterality = text_value(ds, "ImageLaterality") or text_value(ds, "Laterality")
    base["laterality"] = laterality.upper() if laterality else None
    base["view"] = text_value(ds, "ViewPosition")
    rows: list[dict[str, object]] = []
    for item in sequence_items(ds, "ExposureDoseSequence"):
        row = {**base, **_xray_header(item, family), "DLP_mGycm": _elscint_dlp(item)}
        if row["acquisition_protocol"] is None:
            row["acquisition_protocol"] = text_value(item, "SeriesDescription")
        if row["scanning_length_mm"] is None:
            row["scanning_length_mm"] = _number(item, "ScanLength")
        if any(row[c] is not None for c in ("CTDIvol_mGy", "DLP_mGycm")):
            rows.append(_finish(row))
    if rows:
        # Philips Brilliance dose information: the top-level ELSCINT1 DLP is the total of
        # the Exposure Dose Sequence items (0 + 196.01 + 248.59 + 657.85 = 1102.45 mGy.cm).
        total = _elscint_dlp(ds)
        if total is not None:
            rows.append(_finish({
                **base, "record": "accumulated", "ct_dose_length_product_total_mGycm": total,
                "total_number_of_events": len(rows),
            }))  # fmt: skip
    row = {**base, **_xray_header(ds, family)}
    if any(row[c] is not None for c in _HEADER_DOSE_COLUMNS):
        rows.insert(0, _finish(row))
    return rows
