"""Derived images: new pixels from one or more source images, referenced as the standard asks.

Follows PS3.3 C.7.6.1.1.2 (Image Type DERIVED\\SECONDARY, new SOP Instance UID when the
pixels differ), C.12.4 General Reference (Source Image Sequence with a CID 7202 purpose,
Derivation Code Sequence from CID 7203, Derivation Description) and C.12.1.1.5
(Contributing Equipment): the patient and study stay, the series, equipment and
instance are new, acquisition date/time are kept, private attributes are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from highdicom.sr import CodedConcept
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from dicomlake import __version__
from dicomlake.errors import WriteError
from dicomlake.write._common import (
    MANUFACTURER,
    WriteReport,
    WrittenFile,
    da,
    encode,
    new_uid,
    now,
    set_file_meta,
    tm,
    tz_offset,
    write_atomically,
)
from dicomlake.write.codes import DERIVATION_CID, PURPOSE_OF_REFERENCE_CID, cid_code

PixelFunction = Callable[..., np.ndarray]
"""Takes one stored-value array per source (rows × columns [× samples]) and returns one array."""

# Attributes that describe the source instance's pixels, encoding or signature and no
# longer hold for new pixels.
_DROP = (
    "IconImageSequence",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "EncryptedAttributesSequence",
    "OriginalAttributesSequence",
    "InstanceCoercionDateTime",
    "DerivationDescription",
    "DerivationCodeSequence",
    "SourceImageSequence",
    "ContributingEquipmentSequence",
    "ReferencedPerformedProcedureStepSequence",
    "PlanarConfiguration",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "PixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "DataSetTrailingPadding",
)


@dataclass(frozen=True)
class Derivation:
    """What was done: a CID 7203 code, a free-text description, and the CID 7202 purpose."""

    code: Code
    description: str
    purpose: Code = codes.cid7202.SourceImageForImageProcessingOperation

    @classmethod
    def of(cls, code: str | Code, description: str, purpose: str | Code | None = None) -> Derivation:
        """Build from code values (``"113088"``) or pydicom ``Code`` objects, checking the CIDs."""
        return cls(
            cid_code(DERIVATION_CID, code),
            description,
            cid_code(PURPOSE_OF_REFERENCE_CID, purpose)
            if purpose is not None
            else codes.cid7202.SourceImageForImageProcessingOperation,
        )


def _coded(code: Code) -> Dataset:
    item = CodedConcept(code.value, code.scheme_designator, code.meaning, code.scheme_version)
    return Dataset(item)


def _stored_array(ds: Dataset, where: str) -> np.ndarray:
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise WriteError(f"{where}: multi-frame sources are not supported by derive yet; split the frames first")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types
        raise WriteError(
            f"{where}: cannot decode its pixel data ({exc}); install the codec "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) and retry"
        ) from exc
    return np.asarray(arr)


def _fit_bits(arr: np.ndarray, where: str, template_bits: int) -> tuple[np.ndarray, int, int, int]:
    """Round and cast *arr*; return (array, BitsAllocated, BitsStored, PixelRepresentation)."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise WriteError(f"{where}: the pixel function returned NaN or infinite values; fix the function")
        arr = np.rint(arr)
    lo, hi = int(arr.min()), int(arr.max())
    signed = lo < 0
    needed = max((-lo - 1).bit_length(), max(hi, 0).bit_length()) + 1 if signed else max(1, hi.bit_length())
    if needed > 16:
        raise WriteError(
            f"{where}: derived values {lo}…{hi} need {needed} bits; more than 16 is not supported — "
            "rescale inside the pixel function"
        )
    allocated = 8 if needed <= 8 and template_bits <= 8 and not signed else 16
    stored = max(needed, min(template_bits, allocated))
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(allocated, signed)]
    return arr.astype(dtype), allocated, stored, 1 if signed else 0


def derive_image(
    sources: Dataset | Sequence[Dataset],
    pixel_function: PixelFunction,
    derivation: Derivation,
    *,
    series_instance_uid: str | None = None,
    series_number: int | None = None,
    series_description: str | None = None,
    instance_number: int | None = None,
    created: datetime | None = None,
) -> Dataset:
    """Return a new derived instance computed by *pixel_function* from *sources*.

    Parameters
    ----------
    sources
        One dataset, or several of the same size (e.g. for a pixel-by-pixel mean). The
        first is the template: its SOP Class, patient, study and acquisition are kept.
    pixel_function
        Called with one stored-value array per source; returns the new stored values
        (same rows and columns; integer or float, rounded).
    derivation
        Derivation Code Sequence (CID 7203), Derivation Description, and the purpose of
        reference (CID 7202) of every Source Image Sequence Item.
    series_instance_uid
        The new series (default: a new UID); pass the same UID for every instance of one
        derived series.
    series_number
        Default: the source's Series Number + 1000.
    series_description
        Default: the source's Series Description with the derivation's meaning appended.
    instance_number
        Default: the source's Instance Number.
    created
        Instance Creation and Content date-time (default: now).
    """
    srcs = [sources] if isinstance(sources, Dataset) else list(sources)
    if not srcs:
        raise ValueError("derive_image needs at least one source dataset")
    template = srcs[0]
    where = str(getattr(template, "filename", None) or template.get("SOPInstanceUID", "source"))
    arrays = [_stored_array(s, str(getattr(s, "filename", "") or s.get("SOPInstanceUID", "source"))) for s in srcs]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise WriteError(f"{where}: sources differ in size {sorted(shapes)}; derive needs same-size images")
    try:
        result = np.asarray(pixel_function(*arrays))
    except WriteError:
        raise
    except Exception as exc:
        raise WriteError(f"{where}: the pixel function failed: {exc!r}") from exc
    if result.shape[:2] != arrays[0].shape[:2] and result.ndim not in (2, 3):
        raise WriteError(f"{where}: the pixel function returned shape {result.shape}; expected an image")
    samples = 1 if result.ndim == 2 else result.shape[2]
    if samples not in (1, 3):
        raise WriteError(f"{where}: the pixel function returned {samples} samples per pixel; need 1 or 3")
    moment = created or now()
    ds = deepcopy(template)
    ds.remove_private_tags()  # private meaning is unknown for new pixels (seed 004)
    for keyword in _DROP:
        if keyword in ds:
            del ds[keyword]
    # SOP Common: a new instance, created now.
    ds.SOPInstanceUID = new_uid()
    ds.InstanceCreationDate = da(moment)
    ds.InstanceCreationTime = tm(moment)
    offset = tz_offset(moment)
    if offset:
        ds.TimezoneOffsetFromUTC = offset
    # General Series: a new series.
    ds.SeriesInstanceUID = series_instance_uid or new_uid()
    base_number = int(template.get("SeriesNumber") or 0)
    ds.SeriesNumber = series_number if series_number is not None else base_number + 1000
    description = series_description or " ".join(
        part for part in (str(template.get("SeriesDescription", "") or ""), f"({derivation.code.meaning})") if part
    )
    ds.SeriesDescription = description[:64]
    if "SeriesDate" in ds:
        ds.SeriesDate, ds.SeriesTime = da(moment), tm(moment)
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    # General Equipment: we made these pixels; the source equipment is a contributor.
    contributor = Dataset()
    contributor.PurposeOfReferenceCodeSequence = DicomSequence([_coded(codes.cid7005.AcquisitionEquipment)])
    # Manufacturer is Type 1 in the Contributing Equipment Sequence.
    contributor.Manufacturer = str(template.get("Manufacturer", "") or "") or "UNKNOWN"
    for keyword in (
        "InstitutionName",
        "StationName",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "SoftwareVersions",
    ):
        if template.get(keyword):
            contributor[keyword] = deepcopy(template[keyword])
    ds.ContributingEquipmentSequence = DicomSequence([contributor])
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "dicomlake derive"
    ds.SoftwareVersions = __version__
    for keyword in ("DeviceSerialNumber", "StationName"):
        if keyword in ds:
            del ds[keyword]
    # General Image: C.7.6.1.1.2 Image Type value 1 DERIVED, value 2 SECONDARY; further
    # values (IOD-specific, e.g. AXIAL for CT) are kept.
    old_type = list(template.get("ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY", *[str(v) for v in old_type[2:]]]
    ds.ContentDate = da(moment)
    ds.ContentTime = tm(moment)
    # Acquisition Date/Time/DateTime are copied from the template unchanged.
    # General Reference (C.12.4)
    ds.DerivationDescription = derivation.description[:1024]
    ds.DerivationCodeSequence = DicomSequence([_coded(derivation.code)])
    items = []
    for src in srcs:
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        item.PurposeOfReferenceCodeSequence = DicomSequence([_coded(derivation.purpose)])
        items.append(item)
    ds.SourceImageSequence = DicomSequence(items)
    # Image Pixel: recomputed from the new values.
    lossy = any(str(s.get("LossyImageCompression", "00")) == "01" for s in srcs)
    photometric = "RGB" if samples == 3 else str(template.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
    pixels, allocated, stored, representation = _fit_bits(result, where, int(template.get("BitsStored", 8)))
    if representation and photometric == "RGB":
        raise WriteError(f"{where}: the pixel function returned negative colour values; clip them to 0…255")
    set_file_meta(ds, ExplicitVRLittleEndian)
    ds.set_pixel_data(pixels, photometric, stored, generate_instance_uid=False)
    if ds.BitsAllocated != allocated:
        raise AssertionError((ds.BitsAllocated, allocated))
    if samples == 1:
        lo, hi = int(pixels.min()), int(pixels.max())
        ds.SmallestImagePixelValue = lo
        ds.LargestImagePixelValue = hi
        ds["SmallestImagePixelValue"].VR = ds["LargestImagePixelValue"].VR = "SS" if representation else "US"
        if "WindowCenter" not in ds and stored > 8:
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            ds.WindowCenter = f"{(lo + hi) / 2 * slope + intercept:.6g}"
            ds.WindowWidth = f"{max(hi - lo, 1) * slope:.6g}"
    else:
        for keyword in (
            "WindowCenter",
            "WindowWidth",
            "WindowCenterWidthExplanation",
            "VOILUTSequence",
            "RescaleSlope",
            "RescaleIntercept",
            "RescaleType",
        ):
            if keyword in ds:
                del ds[keyword]
    # Once lossy, always lossy (C.7.6.1.1.5): the derived pixels inherit the history.
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        ratios = [s.get("LossyImageCompressionRatio") for s in srcs if s.get("LossyImageCompressionRatio")]
        methods = [s.get("LossyImageCompressionMethod") for s in srcs if s.get("LossyImageCompressionMethod")]
        if ratios and methods:
            ds.LossyImageCompressionRatio = deepcopy(ratios[0])
            ds.LossyImageCompressionMethod = deepcopy(methods[0])
    return ds


# -- built-in pixel functions for the CLI, keyed by their CID 7203 code --------------------


def _convolve_axis(arr: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    pad = len(kernel) // 2
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (pad, pad)
    padded = np.pad(arr.astype(np.float64), widths, mode="edge")
    out = np.zeros(arr.shape, dtype=np.float64)
    for i, weight in enumerate(kernel):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(i, i + arr.shape[axis])
        out += weight * padded[tuple(index)]
    return out


def gaussian_blur(arr: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian blur of the first two axes (edges replicated)."""
    radius = max(1, round(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    return _convolve_axis(_convolve_axis(arr, kernel, 0), kernel, 1)


def smoothing(arr: np.ndarray) -> np.ndarray:
    """3 × 3 box filter."""
    kernel = np.ones(3) / 3
    return _convolve_axis(_convolve_axis(arr, kernel, 0), kernel, 1)


def unsharp_mask(arr: np.ndarray, amount: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Original plus *amount* times (original − Gaussian blur), clipped to the input's range."""
    sharp = arr + amount * (arr.astype(np.float64) - gaussian_blur(arr, sigma))
    return np.asarray(np.clip(sharp, arr.min(), arr.max()))


BUILTIN: dict[str, tuple[Callable[..., np.ndarray], bool]] = {
    "113088": (gaussian_blur, False),  # Gaussian blur
    "113087": (smoothing, False),  # Smoothing
    "113089": (unsharp_mask, False),  # Unsharp mask
    "113049": (lambda *a: np.asarray(np.mean(np.stack(a), axis=0)), True),  # Pixel by pixel mean
    "113048": (lambda *a: np.asarray(np.max(np.stack(a), axis=0)), True),  # Pixel by pixel Maximum
    "113051": (lambda *a: np.asarray(np.min(np.stack(a), axis=0)), True),  # Pixel by pixel Minimum
}
"""CID 7203 code value → (pixel function, takes all sources at once)."""


def derive_files(
    paths: Sequence[Path],
    out_dir: Path,
    derivation: Derivation,
    *,
    pixel_function: PixelFunction | None = None,
    combine: bool | None = None,
    overwrite: bool = False,
    created: datetime | None = None,
) -> WriteReport:
    """Derive from DICOM files into *out_dir*: one new series for the whole call.

    Parameters
    ----------
    paths
        Source DICOM files.
    out_dir
        Where ``<source stem>-derived.dcm`` (or ``derived.dcm`` when combining) goes.
    derivation
        The CID 7203 code, description and CID 7202 purpose.
    pixel_function
        Default: the built-in function for the derivation code (see :data:`BUILTIN`).
    combine
        Pass all sources to one call (mean/max/min) instead of one output per source.
        Default: as the built-in function for the code says, else ``False``.
    """
    report = WriteReport()
    builtin = BUILTIN.get(str(derivation.code.value))
    if pixel_function is None:
        if builtin is None:
            known = ", ".join(sorted(BUILTIN))
            raise WriteError(
                f"derivation code {derivation.code.value} ({derivation.code.meaning}) has no built-in "
                f"pixel function; the CLI knows {known}; use the Python API derive_image() with your own"
            )
        pixel_function = builtin[0]
        combine = builtin[1] if combine is None else combine
    combine = bool(combine)
    created = created or now()
    loaded: list[tuple[Path, Dataset]] = []
    for path in paths:
        try:
            loaded.append((Path(path), dcmread(path)))
        except (InvalidDicomError, OSError) as exc:
            report.failed.append((str(path), f"{path}: not a readable DICOM file ({exc}); check the path"))
    series_uid = new_uid()
    groups = [loaded] if combine else [[item] for item in loaded]
    for group in groups:
        if not group:
            continue
        first_path = group[0][0]
        try:
            ds = derive_image(
                [d for _, d in group],
                pixel_function,
                derivation,
                series_instance_uid=series_uid,
                created=created,
            )
            name = "derived.dcm" if combine else f"{first_path.stem}-derived.dcm"
            target = out_dir / name
            write_atomically([(target, encode(ds, str(first_path)))], overwrite=overwrite)
            report.written.append(
                WrittenFile(
                    target,
                    str(ds.SOPClassUID),
                    str(ds.SOPInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.StudyInstanceUID),
                    first_path,
                )
            )
        except WriteError as exc:
            report.failed.append((str(first_path), str(exc)))
    return report
