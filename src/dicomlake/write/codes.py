"""Enumerated values and coded concepts the writers use, named as the standard names them."""

from __future__ import annotations

from enum import Enum

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomlake.errors import WriteError


class CaptureIOD(Enum):
    """Which IOD ``wrap`` writes (``--as``)."""

    SC = "sc"
    """Secondary Capture Image (PS3.3 A.8.1), SOP Class 1.2.840.10008.5.1.4.1.1.7."""
    VL_PHOTO = "vl-photo"
    """VL Photographic Image (PS3.3 A.32.4), SOP Class 1.2.840.10008.5.1.4.1.1.77.1.4."""
    PDF = "pdf"
    """Encapsulated PDF (PS3.3 A.45.1), SOP Class 1.2.840.10008.5.1.4.1.1.104.1."""


SOP_CLASS_UID = {
    CaptureIOD.SC: "1.2.840.10008.5.1.4.1.1.7",
    CaptureIOD.VL_PHOTO: "1.2.840.10008.5.1.4.1.1.77.1.4",
    CaptureIOD.PDF: "1.2.840.10008.5.1.4.1.1.104.1",
}


class ConversionType(Enum):
    """PS3.3 C.8.6.1 SC Equipment Module, Conversion Type (0008,0064) defined terms."""

    DV = "DV"
    """Digital Video"""
    DI = "DI"
    """Digital Interface"""
    DF = "DF"
    """Digitized Film"""
    WSD = "WSD"
    """Workstation"""
    SD = "SD"
    """Scanned Document"""
    SI = "SI"
    """Scanned Image"""
    DRW = "DRW"
    """Drawing"""
    SYN = "SYN"
    """Synthetic Image"""


class SourceKind(Enum):
    """What a non-DICOM input is, which decides the defaults of ``wrap``."""

    PHOTO = "photo"
    """A camera photograph (EXIF camera make/model or capture time present)."""
    SCAN = "scan"
    """A page from a flatbed or sheet-feed scanner (TIFF, or a resolution in dpi)."""
    SCREENSHOT = "screenshot"
    """A screen capture of an application (PNG/BMP without camera metadata)."""
    DOCUMENT = "document"
    """A document file (PDF)."""
    FILM = "film"
    """A digitised film."""
    SYNTHETIC = "synthetic"
    """An image made by software (charts, renderings)."""
    IMAGE = "image"
    """An image of unknown origin (no camera metadata): Burned In Annotation assumed YES."""


# Defaults by kind: Conversion Type, Burned In Annotation (PS3.3 C.7.6.1.1.11: YES when
# the image carries enough burned-in text to identify the patient; scans and
# screenshots usually do, so YES unless the user says otherwise).
KIND_DEFAULTS: dict[SourceKind, tuple[ConversionType, bool]] = {
    SourceKind.PHOTO: (ConversionType.DI, False),
    SourceKind.SCAN: (ConversionType.SD, True),
    SourceKind.SCREENSHOT: (ConversionType.WSD, True),
    SourceKind.DOCUMENT: (ConversionType.SD, True),
    SourceKind.FILM: (ConversionType.DF, True),
    SourceKind.SYNTHETIC: (ConversionType.SYN, False),
    SourceKind.IMAGE: (ConversionType.DI, True),
}


class ModificationReason(Enum):
    """PS3.3 C.12.1.1.9.2 Reason for the Attribute Modification (0400,0565), the two terms a correction uses."""

    CORRECT = "CORRECT"
    """Replace incorrect values, e.g. a wrong worklist item was chosen or an operator typo."""
    COERCE = "COERCE"
    """Replace values such as Patient ID on import or reconciliation with a master patient index."""


PURPOSE_OF_REFERENCE_CID = 7202
"""CID 7202 Source Image Purposes of Reference."""
DERIVATION_CID = 7203
"""CID 7203 Image Derivation."""


def _cid_codes(cid: int) -> dict[str, Code]:
    """Code value → Code for one CID, from pydicom's tables generated from PS3.16."""
    collection = getattr(codes, f"cid{cid}")
    out: dict[str, Code] = {}
    for name in collection.dir():
        code = getattr(collection, name)
        out[str(code.value)] = code
    return out


def cid_code(cid: int, value: str | Code) -> Code:
    """Return the coded concept *value* of context group *cid*, or raise :class:`WriteError`.

    Parameters
    ----------
    cid
        Context group number, e.g. 7203.
    value
        A code value (``"113088"``), a keyword of pydicom's code dictionary
        (``"GaussianBlur"``) or a :class:`~pydicom.sr.coding.Code`. A ``Code`` from outside
        the group is accepted as is (both CIDs are extensible).
    """
    if isinstance(value, Code):
        return value
    table = _cid_codes(cid)
    if value in table:
        return table[value]
    for code in table.values():
        if value.replace(" ", "").lower() == str(code.meaning).replace(" ", "").lower():
            return code
    collection = getattr(codes, f"cid{cid}")
    if value in collection.dir():
        found: Code = getattr(collection, value)
        return found
    known = ", ".join(f"{c.value} {c.meaning}" for c in sorted(table.values(), key=lambda c: c.value))
    raise WriteError(
        f"code {value!r} is not in CID {cid}; use one of: {known} (or pass a pydicom Code for an extension)"
    )
