"""Benchmark corpus, part 1: compile real headers into templates and render instances from them.

A template is a real file read once with pydicom, cleaned (no pixels, overlays, group
lengths or leftover PHI), given its clones' pixel matrix, and serialised with a marker
value in every slot that varies per instance; the bytes are then cut at the markers.
Rendering an instance joins the static pieces with freshly encoded elements. Sequences
and items are written with undefined length, so no enclosing length ever changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_corpus_dir() -> Path:
    """Folder of the real files kept with the repository: ``$BENCH_CORPUS`` or ``tests/data/corpus``."""
    return Path(os.environ.get("BENCH_CORPUS", REPO_ROOT / "tests" / "data" / "corpus"))


EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLEMENTATION_CLASS_UID = "2.25.302311430938407219011916213914163626905"
IMPLEMENTATION_VERSION_NAME = "DLBENCH_1"

# ---------------------------------------------------------------------------------------------
# Templates: which real files, and the pixel matrix each instance claims
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateSpec:
    """A real file to clone, with the image matrix its clones get (``rows=0``: no pixels)."""

    key: str
    source: str
    """``pydicom:NAME`` (pydicom test files and pydicom-data) or ``corpus:REL/PATH``."""
    rows: int = 0
    columns: int = 0
    bits_allocated: int = 16
    samples_per_pixel: int = 1
    frames: int = 1
    modality: str | None = None
    """Set when the source has no Modality."""

    @property
    def pixel_length(self) -> int:
        n = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8
        n *= self.frames
        return n + (n & 1)


_T = TemplateSpec
TEMPLATES: dict[str, TemplateSpec] = {
    t.key: t
    for t in [
        # CT: a CQ500 head CT (pydicom-data), a GE CT, a Philips dose screen (SC in CT studies)
        _T("ct_cq500", "pydicom:693_UNCR.dcm", 512, 512),
        _T("ct_ge", "pydicom:CT_small.dcm", 512, 512),
        _T("ct_sc_philips", "corpus:openrem/CT-SC-Philips_Brilliance16P.dcm", 512, 512),
        # MR: Philips 1024² (2 MB), Siemens Avanto, Toshiba
        _T("mr_philips", "pydicom:MR2_UNCR.dcm", 1024, 1024),
        _T("mr_siemens", "pydicom:MR-SIEMENS-DICOM-WithOverlays.dcm", 512, 512),
        _T("mr_toshiba", "pydicom:MR_small.dcm", 512, 512),
        # MG: GE Senographe DS. The 2294×1914 detector would give 8.8 MB; the matrix is
        # reduced to stay within the 0.5–4 MB range this corpus is specified for.
        _T("mg_ge_pres", "corpus:openrem/MG-Im-GE_Seno_1_ForPresentation.dcm", 1536, 1248),
        _T("mg_ge_pres2", "corpus:openrem/MG-Im-GE_Seno_2_ForPresentation.dcm", 1536, 1248),
        _T("mg_ge_proc", "corpus:openrem/MG-Im-GE_Seno_1_ForProcessing.dcm", 1536, 1248),
        _T("mg_ge_scaled", "corpus:openrem/MG-Im-GE-SenDS-scaled.dcm", 1152, 960),
        # US
        _T("us_ge", "pydicom:US1_UNCR.dcm", 480, 640, 8, 3),
        _T("us_philips", "pydicom:OBXXXX1A_2frame.dcm", 600, 800, 8, 1, 2),
        _T("us_aloka", "pydicom:gdcm-US-ALOKA-16.dcm", 480, 640, 16),
        _T("us_siemens", "corpus:deid-data/ultrasounds/RGB_IMAGE.dcm", 768, 1024, 8, 3),
        _T("us_philips_epiq", "corpus:deid-data/ultrasounds/GREYSCALE_IMAGE.dcm", 768, 1024, 8),
        # SC: scanned documents and photographs
        _T("sc_cookie", "corpus:deid-data/dicom-cookies/image1.dcm", 1024, 768, 8, 3, modality="OT"),
        _T("sc_rgb", "pydicom:SC_rgb.dcm", 1000, 1200, 8, 3),
        # SR: Radiation Dose SRs and a comprehensive SR report
        _T("sr_ct_siemens", "corpus:openrem/CT-RDSR-Siemens-Multi-2.dcm"),
        _T("sr_ct_ge", "corpus:openrem/CT-RDSR-GEPixelMed.dcm"),
        _T("sr_ct_toshiba", "corpus:openrem/CT-RDSR-ToshibaPixelMed.dcm"),
        _T("sr_mg_ge", "corpus:openrem/MG-RDSR-GEPristina-2D.dcm"),
        _T("sr_mg_hologic", "corpus:openrem/MG-RDSR-Hologic_2D.dcm"),
        _T("sr_text", "pydicom:test-SR.dcm"),
    ]
}


def template_path(spec: TemplateSpec) -> Path:
    """Locate the real file a template is cloned from, or say how to get it."""
    kind, _, name = spec.source.partition(":")
    if kind == "pydicom":
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
        if found is None:
            raise FileNotFoundError(
                f"template {spec.key}: {name} is neither in pydicom's test files nor in "
                "pydicom-data; install it with `pip install pydicom-data` (make install does)."
            )
        return Path(found)
    path = shared_corpus_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"template {spec.key}: {path} not found; the corpus is expected at "
            "tests/data/corpus in the repository (set BENCH_CORPUS to override)."
        )
    return path


# ---------------------------------------------------------------------------------------------
# Compiling a template: pydicom once, then static byte pieces and slots
# ---------------------------------------------------------------------------------------------

# fmt: off
# Attributes replaced per instance wherever they occur in the header (nested too).
SLOT_KEYWORDS = {
    # patient
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight",
    # study
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName", "InstitutionName", "InstitutionalDepartmentName",
    "StationName", "OperatorsName", "PerformingPhysicianName", "DeviceSerialNumber",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription",
    # series
    "SeriesDate", "SeriesTime", "SeriesNumber", "SeriesDescription", "ProtocolName",
    "BodyPartExamined",
    # instance
    "InstanceNumber", "AcquisitionNumber", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate",
    "InstanceCreationTime", "ImagePositionPatient", "SliceLocation", "SliceThickness",
    # technique and dose
    "KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "ExposureInuAs", "CTDIvol",
    "BodyPartThickness", "CompressionForce", "OrganDose", "EntranceDoseInmGy",
    "ViewPosition", "ImageLaterality", "Laterality", "PatientOrientation",
    "CodeValue", "CodeMeaning",  # only inside ViewCodeSequence
    "Manufacturer", "ManufacturerModelName",  # set per station when the template disagrees
}
# Added (empty) when the source lacks them, so every instance carries them.
REQUIRED_KEYWORDS = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName", "InstitutionName", "StationName", "OperatorsName",
    "SeriesDate", "SeriesTime", "SeriesNumber", "SeriesDescription", "InstanceNumber",
    "ContentDate", "ContentTime", "Manufacturer",
]
REQUIRED_BY_MODALITY = {
    "CT": ["KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "CTDIvol", "BodyPartExamined",
           "AcquisitionDate", "AcquisitionTime"],
    "MG": ["KVP", "BodyPartThickness", "CompressionForce", "OrganDose", "EntranceDoseInmGy",
           "AcquisitionDate", "AcquisitionTime"],
    "MR": ["AcquisitionDate", "AcquisitionTime"],
}
# Removed: identifying leftovers of the source patients.
DROP_KEYWORDS = {
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "PatientComments",
    "InstitutionAddress", "IconImageSequence", "PatientBirthName", "MedicalRecordLocator",
    # the sources were de-identified; their clones stand for original images
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
}
# UIDs that name a class, a syntax or a coding resource are kept; every other UID is remapped.
KEEP_UID_KEYWORDS = {
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
    "MappingResourceUID", "PrivateInformationCreatorUID", "ReferencedSOPClassUIDInFile",
    "ReferencedTransferSyntaxUIDInFile", "AffectedSOPClassUID", "RequestedSOPClassUID",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "CodingSchemeRegistry",
}
# RDSR NumericValue units (CodeValue of MeasurementUnitsCodeSequence) → factor family.
UNIT_FAMILY = {
    "mGy": "dose", "mGy.cm": "dose", "mGycm": "dose", "Gy.m2": "dose", "dGy.cm2": "dose",
    "Gy": "dose", "uGy": "dose", "cGy.cm2": "dose", "mGy.cm2": "dose", "Gym2": "dose",
    "mm": "length", "cm": "length", "N": "force", "daN": "force", "s": "time", "ms": "time",
    "mA": "current", "mAs": "current", "uAs": "current",
}
FAMILIES = ("dose", "length", "force", "time", "current")

# fmt: on
_TEXT_PAD = {"UI": b"\x00"}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
_DT_RE = re.compile(r"^(\d{14})(\.\d{1,6})?([+-]\d{4})?\s*$")


@dataclass(frozen=True)
class Slot:
    """A place in a template where an element is encoded per instance."""

    kind: str
    """``kw`` (value by keyword), ``uid`` (a role), ``num`` (scaled), ``dt`` (shifted)."""
    prefix: bytes
    """Tag and VR, the first 6 bytes of the element."""
    vr: str
    key: str = ""
    """Keyword (``kw``), role (``uid``: study, series, sop, for, ref) or family (``num``)."""
    index: int = 0
    number: float = 0.0
    """Original value (``num``) or offset in seconds from the earliest DateTime (``dt``)."""
    original: bytes = b""
    """The element as the source had it, used when an instance gives no value."""


@dataclass
class Template:
    """A compiled template: static pieces interleaved with slots, then the pixel header."""

    spec: TemplateSpec
    modality: str
    sop_class_uid: str
    codec: str
    parts: list[bytes | Slot]
    keywords: frozenset[str]
    pixel_header: bytes = b""
    counts: dict[str, int] = field(default_factory=dict)


def _marker(k: int, vr: str) -> object:
    if vr == "DS":
        return f"777{k:05d}.5"
    if vr == "IS":
        return f"777{k:05d}"
    if vr == "FD":
        return 7.77e9 + k
    if vr == "UI":
        return f"9.9.9.{k:06d}"
    return f"~{k:06d}~"


def _marker_bytes(marker: object, vr: str) -> bytes:
    if vr == "FD":
        return struct.pack("<d", marker)
    raw = str(marker).encode("ascii")
    return raw + (_TEXT_PAD.get(vr, b" ") if len(raw) & 1 else b"")


def _encode_element(elem: DataElement, encodings: list[str]) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _walk(ds: Dataset, parent_kw: str = "") -> Iterator[tuple[Dataset, DataElement, str]]:
    for elem in list(ds):
        yield ds, elem, parent_kw
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item, elem.keyword)


def _clean(ds: Dataset) -> None:
    """Drop what a clone must not carry: pixels, overlays, group lengths, stray meta, PHI."""
    for elem in list(ds):
        tag = elem.tag
        g = tag.group
        if tag.element == 0 or g <= 0x0007 or 0x6000 <= g <= 0x60FF or g >= 0x7FE0 or elem.keyword in DROP_KEYWORDS:
            del ds[tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item)


def _set_pixel_module(ds: Dataset, spec: TemplateSpec) -> None:
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.SamplesPerPixel = spec.samples_per_pixel
    ds.BitsAllocated = spec.bits_allocated
    stored = int(ds.get("BitsStored", spec.bits_allocated) or spec.bits_allocated)
    if stored > spec.bits_allocated or spec.bits_allocated == 8:
        stored = spec.bits_allocated
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    if "PixelRepresentation" not in ds:
        ds.PixelRepresentation = 0
    if spec.samples_per_pixel == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
            ds.PhotometricInterpretation = "MONOCHROME2"
        if "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
    if spec.frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = spec.frames
    for kw in (
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    ):
        if kw in ds:
            del ds[kw]


def compile_template(spec: TemplateSpec) -> Template:
    """Read the source once with pydicom and cut its serialised header at the slots."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(template_path(spec), stop_before_pixels=True, force=True)
        with pydicom_config.disable_value_validation():
            return _compile(ds, spec)


def _compile(ds: Dataset, spec: TemplateSpec) -> Template:
    _clean(ds)
    charset = ds.get("SpecificCharacterSet", "")
    if charset != "ISO_IR 192":
        ds.SpecificCharacterSet = "ISO_IR 100"
    codec = "utf-8" if ds.SpecificCharacterSet == "ISO_IR 192" else "latin-1"
    if spec.modality and not ds.get("Modality"):
        ds.Modality = spec.modality
    modality = str(ds.get("Modality", "OT"))
    if spec.rows:
        _set_pixel_module(ds, spec)
    for kw in REQUIRED_KEYWORDS + REQUIRED_BY_MODALITY.get(modality, []):
        if kw not in ds:
            ds.add_new(tag_for_keyword(kw), dictionary_VR(kw), None)
    encodings = [str(ds.SpecificCharacterSet)]

    own = {
        kw: str(ds.get(kw, ""))
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    }
    role_of = {
        own["StudyInstanceUID"]: "study",
        own["SeriesInstanceUID"]: "series",
        own["SOPInstanceUID"]: "sop",
        own["FrameOfReferenceUID"]: "for",
    }
    role_of.pop("", None)

    # Earliest RDSR DateTime: content DateTimes are kept relative to it.
    dts = []
    for _, elem, _ in _walk(ds):
        if elem.tag == 0x0040A120 and isinstance(elem.value, str) and _DT_RE.match(elem.value):
            dts.append(_parse_dt(elem.value))
    dt0 = min(dts) if dts else None

    slots: dict[bytes, Slot] = {}
    counts = {"kw": 0, "uid": 0, "num": 0, "dt": 0}
    k = 0
    for parent, elem, parent_kw in _walk(ds):
        vr, kw, value = elem.VR, elem.keyword, elem.value
        slot_args: dict[str, object] | None = None
        if (
            kw in SLOT_KEYWORDS
            and vr not in _LONG_VRS
            and (kw not in ("CodeValue", "CodeMeaning") or parent_kw == "ViewCodeSequence")
        ):
            slot_args = {"kind": "kw", "key": kw}
        elif vr == "UI" and kw not in KEEP_UID_KEYWORDS and isinstance(value, str) and value:
            if not value.startswith("1.2.840.10008."):
                slot_args = {"kind": "uid", "key": role_of.get(value, "ref"), "index": k}
        elif elem.tag == 0x0040A30A and "MeasurementUnitsCodeSequence" in parent:
            units = parent.MeasurementUnitsCodeSequence
            family = UNIT_FAMILY.get(str(units[0].get("CodeValue", ""))) if units else None
            number = _to_float(value)
            if family and number is not None:
                slot_args = {"kind": "num", "key": family, "number": number}
        elif (
            elem.tag in (0x0040A120, 0x0018A002) and dt0 is not None and isinstance(value, str) and _DT_RE.match(value)
        ):
            slot_args = {"kind": "dt", "number": (_parse_dt(value) - dt0).total_seconds()}
        if slot_args is None:
            continue
        original = _encode_element(elem, encodings)
        marker = _marker(k, vr)
        elem.value = marker
        prefix = struct.pack("<HH", elem.tag.group, elem.tag.element) + vr.encode("ascii")
        slots[_marker_bytes(marker, vr)] = Slot(
            prefix=prefix,
            vr=vr,
            original=original,
            **slot_args,  # type: ignore[arg-type]
        )
        counts[str(slot_args["kind"])] += 1
        k += 1

    for _, elem, _ in _walk(ds):
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    raw = fp.getvalue()

    # Cut at the markers: each marker value sits right after its 8-byte element header.
    found: list[tuple[int, int, Slot]] = []
    for marker_bytes, slot in slots.items():
        pos = raw.find(marker_bytes)
        hits = []
        while pos != -1:
            if raw[pos - 8 : pos - 2] == slot.prefix:
                hits.append(pos)
            pos = raw.find(marker_bytes, pos + 1)
        if len(hits) != 1:
            raise RuntimeError(f"template {spec.key}: marker {marker_bytes!r} found {len(hits)}×")
        start = hits[0] - 8
        (length,) = struct.unpack("<H", raw[hits[0] - 2 : hits[0]])
        found.append((start, hits[0] + length, slot))
    found.sort(key=lambda t: t[0])
    parts: list[bytes | Slot] = []
    at = 0
    for start, end, slot in found:
        parts.append(raw[at:start])
        parts.append(slot)
        at = end
    parts.append(raw[at:])
    parts = [p for p in parts if p != b""]

    pixel_header = b""
    if spec.rows:
        pixel_vr = b"OB" if spec.bits_allocated == 8 else b"OW"
        pixel_header = struct.pack("<HH", 0x7FE0, 0x0010) + pixel_vr + b"\0\0"
        pixel_header += struct.pack("<I", spec.pixel_length)
    keywords = frozenset(s.key for s in slots.values() if s.kind == "kw")
    return Template(spec, modality, str(ds.SOPClassUID), codec, parts, keywords, pixel_header, counts)


def _to_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _parse_dt(value: str) -> dt.datetime:
    m = _DT_RE.match(value)
    assert m
    base = dt.datetime.strptime(m.group(1), "%Y%m%d%H%M%S")
    if m.group(2):
        base += dt.timedelta(microseconds=int(m.group(2)[1:].ljust(6, "0")))
    return base


# ---------------------------------------------------------------------------------------------
# Rendering one instance
# ---------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """Everything that makes one file: where, which template, and its values."""

    path: str
    template: str
    study_uid: str
    series_uid: str
    sop_uid: str
    for_uid: str
    study_start: dt.datetime
    factors: dict[str, float]
    values: dict[str, object]


def derived_uid(key: str) -> str:
    """A UID under the 2.25 root (PS3.5 B.2) derived from ``key``: deterministic and unique."""
    return "2.25." + str(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=15).digest(), "big"))


def decimal_string(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 Table 6.2-1)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def _element(slot: Slot, value: bytes) -> bytes:
    if len(value) & 1:
        value += _TEXT_PAD.get(slot.vr, b" ")
    return slot.prefix + struct.pack("<H", len(value)) + value


def _meta(sop_class_uid: str, sop_uid: str, source_aet: str) -> bytes:
    def el(tag: int, vr: bytes, value: bytes, pad: bytes = b"\0") -> bytes:
        if len(value) & 1:
            value += pad
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
        if vr == b"OB":
            return head + b"\0\0" + struct.pack("<I", len(value)) + value
        return head + struct.pack("<H", len(value)) + value

    body = b"".join(
        [
            el(0x00020001, b"OB", b"\x00\x01"),
            el(0x00020002, b"UI", sop_class_uid.encode()),
            el(0x00020003, b"UI", sop_uid.encode()),
            el(0x00020010, b"UI", EXPLICIT_VR_LITTLE_ENDIAN.encode()),
            el(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            el(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode(), b" "),
            el(0x00020016, b"AE", source_aet.encode(), b" "),
        ]
    )
    # PS3.10 7.1: (0002,0000) File Meta Information Group Length counts the bytes after it.
    return b"\0" * 128 + b"DICM" + el(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def render(tpl: Template, inst: Instance) -> bytes:
    """The bytes of one Part-10 file up to and including the Pixel Data element header."""
    values = inst.values
    out = [_meta(tpl.sop_class_uid, inst.sop_uid, str(values.get("_aet", "")))]
    codec = tpl.codec
    for part in tpl.parts:
        if isinstance(part, bytes):
            out.append(part)
            continue
        kind = part.kind
        if kind == "kw":
            value = values.get(part.key, part)
            if value is part:
                out.append(part.original)
            elif value is None:
                out.append(_element(part, b""))
            elif part.vr == "FD":
                out.append(part.prefix + b"\x08\x00" + struct.pack("<d", value))
            else:
                out.append(_element(part, str(value).encode(codec, "replace")))
        elif kind == "uid":
            role = part.key
            if role == "study":
                uid = inst.study_uid
            elif role == "series":
                uid = inst.series_uid
            elif role == "sop":
                uid = inst.sop_uid
            elif role == "for":
                uid = inst.for_uid
            else:
                uid = derived_uid(f"{inst.sop_uid}/{part.index}")
            out.append(_element(part, uid.encode()))
        elif kind == "num":
            out.append(_element(part, decimal_string(part.number * inst.factors[part.key]).encode()))
        else:  # dt
            when = inst.study_start + dt.timedelta(seconds=part.number)
            out.append(_element(part, when.strftime("%Y%m%d%H%M%S").encode()))
    out.append(tpl.pixel_header)
    return b"".join(out)


def write_instance(root: Path, tpl: Template, inst: Instance) -> int:
    """Write one file; the Pixel Data value is a sparse hole. Returns the file size."""
    data = render(tpl, inst)
    size = len(data) + tpl.spec.pixel_length
    path = root / inst.path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if size > len(data):
            os.ftruncate(fd, size)  # the hole: no blocks are allocated for the pixel value
    finally:
        os.close(fd)
    return size
