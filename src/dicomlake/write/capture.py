"""Secondary Capture, VL Photographic and Encapsulated PDF objects from photos, scans and PDFs.

JPEG inputs are encapsulated without re-encoding (the bitstream is byte-identical and
the Photometric Interpretation and sampling come from the JPEG headers); other images
are stored losslessly as native pixels; PDFs become Encapsulated PDF. A multi-page TIFF
becomes one series of single-frame instances (the SC Image SOP Class is single frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
)

from dicomlake import __version__
from dicomlake.errors import WriteError
from dicomlake.write._common import (
    MANUFACTURER,
    WriteReport,
    WrittenFile,
    da,
    dt,
    encode,
    needs_unicode,
    new_uid,
    now,
    set_file_meta,
    tm,
    tz_offset,
    write_atomically,
)
from dicomlake.write.codes import (
    KIND_DEFAULTS,
    SOP_CLASS_UID,
    CaptureIOD,
    ConversionType,
    SourceKind,
)
from dicomlake.write.sources import (
    ImageSource,
    InputFormat,
    PdfSource,
    detect_format,
    jpeg_photometric,
    read_image,
    read_pdf,
)

# Patient and General Study module attributes taken from an existing instance (--like).
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
)


@dataclass(frozen=True)
class PatientStudy:
    """Patient and study the new objects belong to (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study).

    Empty strings are written as empty Type 2 values. A ``None`` Study Instance UID means
    a new study, dated by the earliest content date of what is written.
    """

    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    issuer_of_patient_id: str | None = None
    study_instance_uid: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_id: str = ""
    accession_number: str = ""
    study_description: str | None = None
    referring_physician_name: str = ""
    template: Dataset | None = field(default=None, compare=False, repr=False)
    """Patient/study attributes copied verbatim from ``--like`` (sequences included)."""

    @classmethod
    def like(cls, path: Path) -> PatientStudy:
        """Patient and study of an existing DICOM instance (``--like EXISTING.dcm``)."""
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            raise WriteError(f"--like {path}: not a readable DICOM file ({exc}); give an existing .dcm") from exc
        if "StudyInstanceUID" not in ds:
            raise WriteError(f"--like {path}: has no Study Instance UID; give an image or document instance")
        template = Dataset()
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in ds:
                template[keyword] = ds[keyword]
        if "SpecificCharacterSet" in ds:
            template.SpecificCharacterSet = ds.SpecificCharacterSet
        return cls(
            patient_id=str(ds.get("PatientID", "") or ""),
            patient_name=str(ds.get("PatientName", "") or ""),
            patient_birth_date=str(ds.get("PatientBirthDate", "") or ""),
            patient_sex=str(ds.get("PatientSex", "") or ""),
            issuer_of_patient_id=ds.get("IssuerOfPatientID"),
            study_instance_uid=str(ds.StudyInstanceUID),
            study_date=str(ds.get("StudyDate", "") or ""),
            study_time=str(ds.get("StudyTime", "") or ""),
            study_id=str(ds.get("StudyID", "") or ""),
            accession_number=str(ds.get("AccessionNumber", "") or ""),
            study_description=ds.get("StudyDescription"),
            referring_physician_name=str(ds.get("ReferringPhysicianName", "") or ""),
            template=template,
        )


@dataclass(frozen=True)
class WrapOptions:
    """Choices for ``wrap``; ``None`` means "decide from the input"."""

    iod: CaptureIOD | None = None
    kind: SourceKind | None = None
    conversion_type: ConversionType | None = None
    burned_in_annotation: bool | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    modality: str | None = None
    document_title: str | None = None
    laterality: str | None = None
    """Laterality (0020,0060) of the body part: R or L."""
    convert: bool = False
    """Allow stated conversions (CMYK → RGB, transparency, JPEG kinds DICOM cannot carry)."""
    one_series: bool = False
    """Put every input of the call in one series instead of one series per input."""


@dataclass
class _Planned:
    source: Path
    datasets: list[Dataset]
    names: list[str]
    notes: list[str]


def default_kind(fmt: InputFormat, src: ImageSource | None) -> SourceKind:
    """Guess what the input is: photo (camera EXIF), scan (TIFF), document (PDF), else screenshot."""
    if fmt is InputFormat.PDF:
        return SourceKind.DOCUMENT
    if src is not None and src.has_camera_exif:
        return SourceKind.PHOTO
    if fmt is InputFormat.TIFF:
        return SourceKind.SCAN
    if fmt is InputFormat.JPEG:
        return SourceKind.IMAGE
    return SourceKind.SCREENSHOT


def default_iod(fmt: InputFormat, kind: SourceKind, src: ImageSource | None = None) -> CaptureIOD:
    """PDF → Encapsulated PDF; a JPEG photograph VL Photographic can hold → VL Photographic; else SC."""
    if fmt is InputFormat.PDF:
        return CaptureIOD.PDF
    if fmt is InputFormat.JPEG and kind is SourceKind.PHOTO:
        reason = _jpeg_can_be_kept(src, CaptureIOD.VL_PHOTO) if src is not None else None
        if reason is None or reason.startswith(AUTO_DECODE):
            return CaptureIOD.VL_PHOTO
    return CaptureIOD.SC


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def _base(
    iod: CaptureIOD,
    patient: PatientStudy,
    study_uid: str,
    study_moment: datetime,
    series_uid: str,
    series_number: int,
    modality: str,
    options: WrapOptions,
    created: datetime,
) -> Dataset:
    ds = Dataset()
    # SOP Common (C.12.1)
    ds.SOPClassUID = SOP_CLASS_UID[iod]
    ds.SOPInstanceUID = new_uid()
    ds.InstanceCreationDate = da(created)
    ds.InstanceCreationTime = tm(created)
    offset = tz_offset(created)
    if offset:
        ds.TimezoneOffsetFromUTC = offset
    # Patient (C.7.1.1) and General Study (C.7.2.1)
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.patient_birth_date
    ds.PatientSex = patient.patient_sex
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = patient.study_date if patient.study_date is not None else da(study_moment)
    ds.StudyTime = patient.study_time if patient.study_time is not None else tm(study_moment)
    ds.ReferringPhysicianName = patient.referring_physician_name
    ds.StudyID = patient.study_id
    ds.AccessionNumber = patient.accession_number
    if patient.study_description:
        ds.StudyDescription = patient.study_description
    if patient.template is not None:
        for elem in patient.template:
            if elem.keyword != "SpecificCharacterSet":
                ds[elem.tag] = elem
    # General Series (C.7.3.1) / Encapsulated Document Series (C.24.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    if options.series_description:
        ds.SeriesDescription = options.series_description
    if options.body_part_examined:
        ds.BodyPartExamined = options.body_part_examined.upper()
    if iod is not CaptureIOD.PDF:
        # Type 2C (C.7.3.1): empty is right when laterality is actually unknown, as for
        # a wrapped photo or scan, unless the user gives it.
        from dicomlake.write.correct import PAIRED_BODY_PARTS

        body = (options.body_part_examined or "").upper()
        if options.laterality or not body or body in PAIRED_BODY_PARTS:
            ds.Laterality = options.laterality or ""  # (absent beside an unpaired body part)
    # General Equipment (C.7.5.1)
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__
    return ds


def _set_charset(ds: Dataset, patient: PatientStudy) -> None:
    texts = [e.value for e in ds.iterall() if isinstance(e.value, str)]
    texts += [str(e.value) for e in ds.iterall() if e.VR == "PN" and e.value is not None]
    template_charset = patient.template.get("SpecificCharacterSet") if patient.template else None
    if needs_unicode(texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif template_charset:
        ds.SpecificCharacterSet = template_charset


def _sc_equipment(ds: Dataset, conversion: ConversionType, src: ImageSource | None) -> None:
    # SC Equipment (C.8.6.1): Conversion Type is Type 1; the capture device is Type 3.
    ds.ConversionType = conversion.value
    if src is not None:
        if src.exif.get("Make"):
            ds.SecondaryCaptureDeviceManufacturer = src.exif["Make"][:64]
        if src.exif.get("Model"):
            ds.SecondaryCaptureDeviceManufacturerModelName = src.exif["Model"][:64]
        if src.exif.get("Software"):
            ds.SecondaryCaptureDeviceSoftwareVersions = src.exif["Software"][:64]


def _content_moment(src: ImageSource | None, created: datetime) -> tuple[datetime, bool]:
    """Content date-time: EXIF DateTimeOriginal when the file has it, else the creation time."""
    if src is not None:
        moment = src.acquisition_datetime
        if moment is not None:
            return moment, True
    return created, False


def _image_pixels_native(ds: Dataset, src: ImageSource, index: int) -> None:
    frame = src.frames[index]
    set_file_meta(ds, ExplicitVRLittleEndian)
    ds.set_pixel_data(frame.pixels, frame.photometric, frame.bits_stored, generate_instance_uid=False)
    if frame.photometric == "MONOCHROME2":
        # The full stored range displays the image as the source viewer showed it.
        top = (1 << frame.bits_stored) - 1
        ds.WindowCenter = _ds(top / 2 + 0.5)
        ds.WindowWidth = _ds(top + 1)


def _image_pixels_jpeg(ds: Dataset, src: ImageSource, iod: CaptureIOD) -> None:
    info, data = src.jpeg, src.jpeg_bytes
    assert info is not None and data is not None
    if info.process == 0:
        ts = JPEGBaseline8Bit
    elif info.process == 1:
        ts = JPEGExtended12Bit
    elif info.process == 3:
        ts = JPEGLosslessSV1 if info.lossless_predictor == 1 else JPEGLossless
    else:
        raise AssertionError(info.process)
    photometric = jpeg_photometric(info)
    set_file_meta(ds, ts)
    ds.SamplesPerPixel = len(info.component_ids)
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = info.rows
    ds.Columns = info.columns
    ds.BitsAllocated = 8 if info.precision <= 8 else 16
    ds.BitsStored = info.precision
    ds.HighBit = info.precision - 1
    ds.PixelRepresentation = 0
    # The JPEG bitstream, byte for byte; pydicom pads an odd length with one 0x00 after EOI.
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if info.process != 3:
        uncompressed = info.rows * info.columns * len(info.component_ids) * ds.BitsAllocated // 8
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = _ds(uncompressed / len(data))
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    if photometric == "MONOCHROME2":
        top = (1 << info.precision) - 1
        ds.WindowCenter = _ds(top / 2 + 0.5)
        ds.WindowWidth = _ds(top + 1)


AUTO_DECODE = "auto: "


def _jpeg_can_be_kept(src: ImageSource, iod: CaptureIOD) -> str | None:
    """Why this JPEG cannot be encapsulated as is, or ``None`` when it can."""
    info = src.jpeg
    assert info is not None
    if info.process not in (0, 1, 3):
        name = {2: "progressive", 6: "progressive"}.get(info.process, f"SOF{info.process} (arithmetic/hierarchical)")
        return f"{name} JPEG has no DICOM transfer syntax"
    if len(info.component_ids) not in (1, 3):
        return f"{len(info.component_ids)}-component (CMYK/YCCK) JPEG cannot be stored in a DICOM image"
    if iod is CaptureIOD.VL_PHOTO and info.precision != 8:
        return f"{info.precision}-bit JPEG: VL Photographic Image needs 8 bits (use --as sc)"
    # A 4:4:4 YCbCr stream is kept too, labelled YBR_FULL_422 (see jpeg_photometric).
    return None


def build_image_instances(
    src: ImageSource,
    *,
    iod: CaptureIOD,
    kind: SourceKind,
    patient: PatientStudy,
    study_uid: str,
    study_moment: datetime,
    series_uid: str,
    series_number: int,
    first_instance_number: int,
    options: WrapOptions,
    created: datetime,
) -> list[Dataset]:
    """One SC or VL Photographic instance per page of *src* (all in one series)."""
    conversion, burned_default = KIND_DEFAULTS[kind]
    conversion = options.conversion_type or conversion
    burned = burned_default if options.burned_in_annotation is None else options.burned_in_annotation
    modality = options.modality or (
        "XC" if iod is CaptureIOD.VL_PHOTO else ("DOC" if kind in (SourceKind.SCAN, SourceKind.DOCUMENT) else "OT")
    )
    content, from_exif = _content_moment(src, created)
    if from_exif:
        # Timezone Offset From UTC (C.12.1.1.8) covers every date and time of the instance:
        # express our times in the camera's offset, or write none if the camera gave none.
        created = created.astimezone(content.tzinfo) if content.tzinfo else created.replace(tzinfo=None)
    keep_jpeg = src.format is InputFormat.JPEG
    if keep_jpeg:
        reason = _jpeg_can_be_kept(src, iod)
        if reason is not None and reason.startswith(AUTO_DECODE):
            keep_jpeg = False
            src.notes.append(f"{src.path}: {reason.removeprefix(AUTO_DECODE)}; stored the decoded pixels losslessly")
        elif reason is not None:
            if not options.convert or (iod is CaptureIOD.VL_PHOTO and "use --as sc" in reason):
                raise WriteError(
                    f"{src.path}: {reason}; pass --convert to store the decoded pixels losslessly "
                    "(stated in the output), or re-export the image as baseline RGB JPEG"
                    if "use --as sc" not in reason
                    else f"{src.path}: {reason}"
                )
            keep_jpeg = False
            src.notes.append(f"{src.path}: {reason}; stored the decoded pixels losslessly instead")
    if iod is CaptureIOD.VL_PHOTO and not keep_jpeg:
        bad = [f for f in src.frames if f.bits_stored != 8]
        if bad:
            raise WriteError(
                f"{src.path}: {bad[0].bits_stored}-bit pixels; VL Photographic Image needs 8 bits; "
                "use --as sc (Secondary Capture keeps 16-bit values)"
            )
    out: list[Dataset] = []
    for index in range(len(src.frames)):
        ds = _base(iod, patient, study_uid, study_moment, series_uid, series_number, modality, options, created)
        if iod is CaptureIOD.VL_PHOTO:
            # A photograph's equipment is the camera (General Equipment is Mandatory in VL).
            if src.exif.get("Make"):
                ds.Manufacturer = src.exif["Make"][:64]
            if src.exif.get("Model"):
                ds.ManufacturerModelName = src.exif["Model"][:64]
            if src.exif.get("Software"):
                ds.SoftwareVersions = src.exif["Software"][:64]
        else:
            _sc_equipment(ds, conversion, src)
        # General Acquisition (C.7.10.1): when the picture was taken, if the file says.
        if from_exif:
            ds.AcquisitionDateTime = dt(content)
            ds.AcquisitionDate = da(content)
            ds.AcquisitionTime = tm(content)
        # General Image (C.7.6.1) / VL Image (C.8.12.1)
        ds.InstanceNumber = first_instance_number + index
        ds.PatientOrientation = ""
        ds.ContentDate = da(content)
        ds.ContentTime = tm(content)
        if iod is CaptureIOD.VL_PHOTO or kind is SourceKind.PHOTO:
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
        elif kind is SourceKind.SCREENSHOT:
            ds.ImageType = ["DERIVED", "SECONDARY"]
        else:
            ds.ImageType = ["ORIGINAL", "SECONDARY"]
        ds.BurnedInAnnotation = "YES" if burned else "NO"
        if keep_jpeg:
            _image_pixels_jpeg(ds, src, iod)
        else:
            _image_pixels_native(ds, src, index)
            ds.LossyImageCompression = "01" if src.format is InputFormat.JPEG else "00"
        if iod is CaptureIOD.VL_PHOTO:
            ds.AcquisitionContextSequence = DicomSequence()  # Type 2 (C.7.6.14)
        else:
            # SC Image (C.8.6.2)
            ds.DateOfSecondaryCapture = da(created)
            ds.TimeOfSecondaryCapture = tm(created)
            if src.dpi and kind in (SourceKind.SCAN, SourceKind.FILM):
                row_mm, col_mm = 25.4 / src.dpi[1], 25.4 / src.dpi[0]
                ds.NominalScannedPixelSpacing = [_ds(row_mm), _ds(col_mm)]
        stated = [n.split(": ", 1)[1] if n.startswith(f"{src.path}") else n for n in src.notes]
        if stated:
            # What the writer changed is stated in the object itself, not only in the report.
            ds.ImageComments = ("dicomlake wrap: " + "; ".join(stated))[:10240]
        # ICC Profile (C.11.15): only meaningful for colour pixels.
        if src.icc_profile and ds.SamplesPerPixel == 3:
            ds.ICCProfile = src.icc_profile
        _set_charset(ds, patient)
        out.append(ds)
    return out


def build_pdf_instance(
    pdf: PdfSource,
    *,
    patient: PatientStudy,
    study_uid: str,
    study_moment: datetime,
    series_uid: str,
    series_number: int,
    instance_number: int,
    options: WrapOptions,
    created: datetime,
) -> Dataset:
    """An Encapsulated PDF instance (PS3.3 A.45.1) holding *pdf* byte for byte."""
    kind = options.kind or SourceKind.DOCUMENT
    conversion, burned_default = KIND_DEFAULTS[kind]
    if options.conversion_type is None and options.kind is None:
        # Text drawn from fonts → made by software on a workstation; images only → a scan.
        conversion = ConversionType.WSD if pdf.has_fonts else ConversionType.SD
    conversion = options.conversion_type or conversion
    burned = burned_default if options.burned_in_annotation is None else options.burned_in_annotation
    ds = _base(CaptureIOD.PDF, patient, study_uid, study_moment, series_uid, series_number, "DOC", options, created)
    _sc_equipment(ds, conversion, None)
    # Encapsulated Document (C.24.2)
    ds.InstanceNumber = instance_number
    ds.ContentDate = da(created)
    ds.ContentTime = tm(created)
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "YES" if burned else "NO"
    ds.DocumentTitle = (options.document_title or pdf.title or pdf.path.stem)[:64]
    ds.ConceptNameCodeSequence = DicomSequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = pdf.data
    ds.EncapsulatedDocumentLength = len(data)
    # OB values have even length: pad with one NUL, the length above keeps the original.
    ds.EncapsulatedDocument = data + (b"\x00" if len(data) % 2 else b"")
    set_file_meta(ds, ExplicitVRLittleEndian)
    _set_charset(ds, patient)
    return ds


def _output_names(stem: str, count: int) -> list[str]:
    if count == 1:
        return [f"{stem}.dcm"]
    return [f"{stem}-p{n:03d}.dcm" for n in range(1, count + 1)]


def wrap_paths(
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    patient: PatientStudy | None = None,
    options: WrapOptions | None = None,
    overwrite: bool = False,
    created: datetime | None = None,
) -> WriteReport:
    """Wrap each input into DICOM under *out_dir*; one bad input never stops the others.

    Parameters
    ----------
    inputs
        JPEG, PNG, TIFF, BMP or PDF files (format detected from content).
    out_dir
        Where ``<input stem>.dcm`` (or ``<stem>-pNNN.dcm`` per page) is written.
    patient
        Patient and study; a new study when its Study Instance UID is ``None``.
    options
        IOD, kind, Conversion Type, Burned In Annotation and descriptive attributes.
    overwrite
        Replace existing output files.
    created
        Instance Creation date-time (default: now).

    Returns
    -------
    WriteReport
        Files written (with the decisions taken, in ``notes``) and failed inputs with
        the reason. Each input's files are written all-or-nothing.
    """
    patient = patient or PatientStudy()
    options = options or WrapOptions()
    created = created or now()
    report = WriteReport()
    study_uid = patient.study_instance_uid or new_uid()
    planned: list[tuple[Path, InputFormat, ImageSource | PdfSource]] = []
    for path in inputs:
        path = Path(path)
        try:
            fmt = detect_format(path)
            if options.iod is CaptureIOD.PDF and fmt is not InputFormat.PDF:
                raise WriteError(f"{path}: --as pdf needs a PDF input; this is {fmt.value.upper()} (use --as sc)")
            if fmt is InputFormat.PDF and options.iod not in (None, CaptureIOD.PDF):
                raise WriteError(
                    f"{path}: a PDF can only be wrapped as Encapsulated PDF (--as pdf); render its "
                    "pages to PNG first to make images"
                )
            src: ImageSource | PdfSource = (
                read_pdf(path) if fmt is InputFormat.PDF else read_image(path, fmt, convert=options.convert)
            )
            planned.append((path, fmt, src))
        except WriteError as exc:
            report.failed.append((str(path), str(exc)))
    # A new study is dated by the earliest content it holds.
    moments = [m for _, _, s in planned if isinstance(s, ImageSource) and (m := s.acquisition_datetime) is not None]
    study_moment = min(moments, key=lambda m: m.timestamp()) if moments else created
    series_uid_shared = new_uid()
    series_number = 0
    instance_number = 1
    shared_modality: str | None = None
    for path, fmt, src in planned:
        try:
            if not options.one_series:
                series_number += 1
                series_uid, instance_number = new_uid(), 1
            else:
                series_number, series_uid = 1, series_uid_shared
            if isinstance(src, PdfSource):
                datasets = [
                    build_pdf_instance(
                        src,
                        patient=patient,
                        study_uid=study_uid,
                        study_moment=study_moment,
                        series_uid=series_uid,
                        series_number=series_number,
                        instance_number=instance_number,
                        options=options,
                        created=created,
                    )
                ]
                notes: list[str] = []
            else:
                kind = options.kind or default_kind(fmt, src)
                iod = options.iod or default_iod(fmt, kind, src)
                datasets = build_image_instances(
                    src,
                    iod=iod,
                    kind=kind,
                    patient=patient,
                    study_uid=study_uid,
                    study_moment=study_moment,
                    series_uid=series_uid,
                    series_number=series_number,
                    first_instance_number=instance_number,
                    options=options,
                    created=created,
                )
                notes = list(src.notes)
                orientation = src.exif.get("Orientation")
                if orientation and orientation != "1":
                    notes.append(
                        f"{path}: EXIF Orientation={orientation}; pixels are kept as captured, "
                        "so viewers show the image rotated or mirrored"
                    )
            if options.one_series:
                modality = str(datasets[0].Modality)
                if shared_modality not in (None, modality):
                    raise WriteError(
                        f"{path}: --one-series mixes Modality {shared_modality} and {modality}; "
                        "wrap these inputs in separate calls or give --modality"
                    )
                shared_modality = modality
            instance_number += len(datasets)
            names = _output_names(path.stem, len(datasets))
            payloads = [(out_dir / name, encode(ds, str(path))) for ds, name in zip(datasets, names, strict=True)]
            write_atomically(payloads, overwrite=overwrite)
            for ds, (target, _) in zip(datasets, payloads, strict=True):
                report.written.append(
                    WrittenFile(
                        target,
                        str(ds.SOPClassUID),
                        str(ds.SOPInstanceUID),
                        str(ds.SeriesInstanceUID),
                        str(ds.StudyInstanceUID),
                        path,
                        tuple(notes),
                    )
                )
        except WriteError as exc:
            report.failed.append((str(path), str(exc)))
    return report


def wrap_file(path: Path, out_dir: Path, **kwargs: object) -> list[WrittenFile]:
    """Wrap one input and return its files, raising :class:`WriteError` if it failed."""
    report = wrap_paths([path], out_dir, **kwargs)  # type: ignore[arg-type]
    if report.failed:
        raise WriteError(report.failed[0][1])
    return report.written


__all__ = [
    "PatientStudy",
    "WrapOptions",
    "build_image_instances",
    "build_pdf_instance",
    "default_iod",
    "default_kind",
    "wrap_file",
    "wrap_paths",
]
