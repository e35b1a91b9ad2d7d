"""Read non-DICOM inputs (JPEG, PNG, TIFF, BMP, PDF): format, pixels, EXIF, ICC, resolution."""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dicomlake.errors import WriteError


class InputFormat(Enum):
    """File formats ``wrap`` accepts, detected from the first bytes, not the file name."""

    JPEG = "jpeg"
    PNG = "png"
    TIFF = "tiff"
    BMP = "bmp"
    PDF = "pdf"


_MAGIC: list[tuple[bytes, InputFormat]] = [
    (b"\xff\xd8\xff", InputFormat.JPEG),
    (b"\x89PNG\r\n\x1a\n", InputFormat.PNG),
    (b"II*\x00", InputFormat.TIFF),
    (b"MM\x00*", InputFormat.TIFF),
    (b"BM", InputFormat.BMP),
    (b"%PDF-", InputFormat.PDF),
]

SUPPORTED = "JPEG, PNG, TIFF, BMP and PDF"


def detect_format(path: Path) -> InputFormat:
    """Return the format of *path* from its signature; raise :class:`WriteError` otherwise."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise WriteError(f"{path}: cannot read the input ({exc.strerror}); check the path") from exc
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[128:132] == b"DICM":
        raise WriteError(
            f"{path}: is already DICOM; use 'dicomlake derive' or 'dicomlake correct' on it instead of wrap"
        )
    raise WriteError(
        f"{path}: unsupported format (first bytes {head[:8]!r}); wrap accepts {SUPPORTED}; "
        "convert the file to one of these (e.g. PNG) and try again"
    )


@dataclass(frozen=True)
class JpegInfo:
    """What the JPEG headers say (ISO/IEC 10918-1 markers), read without decoding."""

    process: int
    """SOF marker number: 0 baseline, 1 extended, 2 progressive, 3 lossless, ≥ 9 arithmetic."""
    precision: int
    rows: int
    columns: int
    component_ids: tuple[int, ...]
    sampling: tuple[tuple[int, int], ...]
    """(horizontal, vertical) sampling factors per component."""
    adobe_transform: int | None
    """APP14 'Adobe' colour transform flag (0 none/RGB or CMYK, 1 YCbCr, 2 YCCK)."""
    jfif: bool
    lossless_predictor: int | None = None


def parse_jpeg_headers(data: bytes, where: Path) -> JpegInfo:
    """Walk the marker segments up to the first SOS and return :class:`JpegInfo`."""
    if not data.startswith(b"\xff\xd8"):
        raise WriteError(f"{where}: not a JPEG (no SOI marker); re-export the image as JPEG")
    pos, n = 2, len(data)
    sof: tuple[int, int, int, int, tuple[int, ...], tuple[tuple[int, int], ...]] | None = None
    adobe: int | None = None
    jfif = False
    predictor: int | None = None
    while pos < n:
        if data[pos] != 0xFF:
            raise WriteError(
                f"{where}: corrupt JPEG (expected a marker at byte {pos}, found 0x{data[pos]:02X}); "
                "re-export the image from its source"
            )
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:
            break
        if pos + 2 > n:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        segment = data[pos + 2 : pos + length]
        if len(segment) != length - 2:
            raise WriteError(f"{where}: corrupt JPEG (segment 0xFF{marker:02X} runs past the end of the file)")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            precision, rows, cols, ncomp = struct.unpack(">BHHB", segment[:6])
            ids: list[int] = []
            samp: list[tuple[int, int]] = []
            for i in range(ncomp):
                cid, hv, _tq = segment[6 + 3 * i : 9 + 3 * i]
                ids.append(cid)
                samp.append((hv >> 4, hv & 0x0F))
            sof = (marker - 0xC0, precision, rows, cols, tuple(ids), tuple(samp))
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        elif marker == 0xE0 and segment.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xDA:
            if sof is not None and sof[0] == 3:
                ns = segment[0]
                predictor = segment[1 + 2 * ns]
            break
        pos += length
    if sof is None:
        raise WriteError(f"{where}: corrupt JPEG (no frame header SOF before the scan data); re-export it")
    return JpegInfo(sof[0], sof[1], sof[2], sof[3], sof[4], sof[5], adobe, jfif, predictor)


def jpeg_colour_transformed(info: JpegInfo) -> bool:
    """Whether a 3-component JPEG holds YCbCr (True) or untransformed RGB (False).

    Decided as libjpeg's decoder decides it (jdapimin.c), so the label matches what every
    reader will decode: a JFIF APP0 marker means YCbCr; else an Adobe APP14 marker's
    transform flag (0 = RGB, 1 = YCbCr); else component IDs 'R','G','B' mean RGB; else YCbCr.
    """
    if info.jfif:
        return True
    if info.adobe_transform is not None:
        return info.adobe_transform != 0
    return info.component_ids != (0x52, 0x47, 0x42)


def jpeg_chroma_subsampled(info: JpegInfo) -> bool:
    """Whether the chrominance components are sampled below the luminance (4:2:2, 4:2:0, …)."""
    luma, *chroma = info.sampling
    return any(c != luma for c in chroma)


def jpeg_photometric(info: JpegInfo) -> str:
    """Photometric Interpretation of a JPEG bitstream kept as is (PS3.5 8.2.1, Table 8.2.1-1).

    1 component → MONOCHROME2. 3 components without a colour transform (see
    :func:`jpeg_colour_transformed`) → RGB. YCbCr in a lossy stream (baseline, extended) →
    YBR_FULL_422 whatever the chroma sampling: Table 8.2.1-1 allows only YBR_FULL_422 and
    RGB for lossy JPEG, and PS3.3 C.7.6.3.1.2 notes that for JPEG bitstreams the
    subsampling in the stream may differ from that description (decoders take it from the
    frame header's sampling factors). So a 4:4:4 stream is labelled YBR_FULL_422 too:
    ``dciodvfy`` rejects YBR_FULL with the JPEG Baseline transfer syntax, and VL
    Photographic Image (C.8.12.4.1.5) requires YBR_FULL_422 for lossy compression. YCbCr in
    a lossless stream → YBR_FULL (the table's value for lossless JPEG).
    """
    ncomp = len(info.component_ids)
    if ncomp == 1:
        return "MONOCHROME2"
    if ncomp != 3:
        raise ValueError(ncomp)
    if not jpeg_colour_transformed(info):
        return "RGB"
    if info.process == 3 and not jpeg_chroma_subsampled(info):
        return "YBR_FULL"
    return "YBR_FULL_422"


@dataclass(frozen=True)
class ImageFrame:
    """One decoded page/frame, with what the file said about it."""

    pixels: np.ndarray
    """(rows, columns) or (rows, columns, 3), dtype uint8 or uint16, exactly the stored pixels."""
    photometric: str
    """MONOCHROME2 or RGB."""
    bits_stored: int


@dataclass
class ImageSource:
    """A decoded non-DICOM image input and its metadata."""

    path: Path
    format: InputFormat
    frames: list[ImageFrame]
    jpeg: JpegInfo | None = None
    jpeg_bytes: bytes | None = None
    exif: dict[str, str] = field(default_factory=dict)
    """Selected EXIF tags by name (Make, Model, Software, DateTimeOriginal, …)."""
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def acquisition_datetime(self) -> datetime | None:
        """EXIF DateTimeOriginal (with SubsecTimeOriginal and OffsetTimeOriginal) if present."""
        text = self.exif.get("DateTimeOriginal")
        if not text:
            return None
        try:
            moment = datetime.strptime(text.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            self.notes.append(f"EXIF DateTimeOriginal {text!r} is not 'YYYY:MM:DD HH:MM:SS'; ignored")
            return None
        sub = self.exif.get("SubsecTimeOriginal", "").strip("\x00 ")
        if sub.isdigit():
            moment = moment.replace(microsecond=int(sub[:6].ljust(6, "0")))
        offset = self.exif.get("OffsetTimeOriginal", "").strip("\x00 ")
        match = re.fullmatch(r"([+-])(\d\d):(\d\d)", offset)
        if match:
            sign = 1 if match.group(1) == "+" else -1
            delta = timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
            moment = moment.replace(tzinfo=timezone(sign * delta))
        return moment

    @property
    def has_camera_exif(self) -> bool:
        """``True`` when EXIF names a camera or a capture time (a photograph)."""
        return bool(self.exif.get("Make") or self.exif.get("Model") or self.exif.get("DateTimeOriginal"))


_EXIF_IFD0 = {0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x0112: "Orientation", 0x0132: "DateTime"}
_EXIF_SUB = {0x9003: "DateTimeOriginal", 0x9291: "SubsecTimeOriginal", 0x9011: "OffsetTimeOriginal"}


def _read_exif(img: Image.Image) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        exif = img.getexif()
    except Exception:
        return out
    for tag, name in _EXIF_IFD0.items():
        if tag in exif:
            out[name] = str(exif[tag]).strip("\x00 ")
    try:
        sub = exif.get_ifd(0x8769)
    except Exception:
        sub = {}
    for tag, name in _EXIF_SUB.items():
        if tag in sub:
            out[name] = str(sub[tag]).strip("\x00 ")
    return out


def _frame_from_pil(page: Image.Image, path: Path, index: int, notes: list[str], convert: bool) -> ImageFrame:
    mode = page.mode
    where = f"{path} (page {index + 1})" if index else str(path)
    if mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(page, dtype=np.uint16)
        return ImageFrame(arr, "MONOCHROME2", 16)
    if mode == "I":
        arr = np.asarray(page)
        if arr.min() < 0 or arr.max() > 65535:
            raise WriteError(f"{where}: 32-bit integer pixels outside 0…65535; rescale to 16 bits and retry")
        return ImageFrame(arr.astype(np.uint16), "MONOCHROME2", 16)
    if mode == "L":
        return ImageFrame(np.asarray(page, dtype=np.uint8), "MONOCHROME2", 8)
    if mode == "1":
        notes.append(f"{where}: 1-bit image stored as 8-bit MONOCHROME2 with values 0 and 255")
        return ImageFrame(np.asarray(page.convert("L"), dtype=np.uint8), "MONOCHROME2", 8)
    if mode == "RGB":
        return ImageFrame(np.asarray(page, dtype=np.uint8), "RGB", 8)
    if mode in ("RGBA", "LA"):
        alpha = np.asarray(page.getchannel("A"))
        base = "RGB" if mode == "RGBA" else "L"
        if alpha.min() == 255:
            notes.append(f"{where}: alpha channel is fully opaque; dropped")
        else:
            if not convert:
                raise WriteError(
                    f"{where}: has transparent pixels, which DICOM cannot store; pass --convert "
                    "to composite it onto white (stated in the output), or flatten it first"
                )
            notes.append(f"{where}: transparent pixels composited onto white")
            background = Image.new(mode, page.size, (255,) * len(mode))
            page = Image.alpha_composite(background.convert("RGBA"), page.convert("RGBA"))
        conv = page.convert(base)
        photometric = "RGB" if base == "RGB" else "MONOCHROME2"
        return ImageFrame(np.asarray(conv, dtype=np.uint8), photometric, 8)
    if mode in ("P", "PA"):
        rgb = page.convert("RGBA" if "transparency" in page.info or mode == "PA" else "RGB")
        notes.append(f"{where}: palette image stored as RGB (the palette colours, exactly)")
        return _frame_from_pil(rgb, path, index, notes, convert)
    if mode == "CMYK":
        if not convert:
            raise WriteError(
                f"{where}: CMYK colour, which DICOM images cannot hold (CMYK was retired); pass "
                "--convert to store an RGB conversion (stated in the output), or export as RGB"
            )
        notes.append(f"{where}: CMYK converted to RGB by Pillow (naive conversion, colours may shift)")
        return ImageFrame(np.asarray(page.convert("RGB"), dtype=np.uint8), "RGB", 8)
    raise WriteError(f"{where}: pixel mode {mode!r} is not supported; convert it to RGB or grayscale")


def read_image(path: Path, fmt: InputFormat, *, convert: bool = False) -> ImageSource:
    """Decode an image input completely (a damaged file fails here, before anything is written).

    Parameters
    ----------
    path
        The input file.
    fmt
        Its detected format.
    convert
        Allow stated conversions: CMYK → RGB, transparency composited onto white,
        JPEG that cannot be encapsulated as is → decoded pixels stored losslessly.
    """
    data = path.read_bytes()
    notes: list[str] = []
    jpeg: JpegInfo | None = None
    if fmt is InputFormat.JPEG:
        jpeg = parse_jpeg_headers(data, path)
        if b"\xff\xd9" not in data[-16:]:
            raise WriteError(
                f"{path}: corrupt JPEG (truncated: no end-of-image marker); copy the file again from its source"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise WriteError(
            f"{path}: corrupt or unreadable {fmt.value.upper()} ({exc}); re-export it from its source"
        ) from exc
    frames: list[ImageFrame] = []
    n_frames = getattr(img, "n_frames", 1)
    for index in range(n_frames):
        try:
            img.seek(index)
            img.load()
        except (OSError, EOFError, ValueError) as exc:
            raise WriteError(f"{path}: page {index + 1} cannot be decoded ({exc}); re-export it") from exc
        frames.append(_frame_from_pil(img.copy(), path, index, notes, convert))
    img.seek(0)
    dpi = img.info.get("dpi")
    dpi_value = (float(dpi[0]), float(dpi[1])) if dpi and dpi[0] and dpi[1] else None
    return ImageSource(
        path=path,
        format=fmt,
        frames=frames,
        jpeg=jpeg,
        jpeg_bytes=data if fmt is InputFormat.JPEG else None,
        exif=_read_exif(img),
        icc_profile=img.info.get("icc_profile") or None,
        dpi=dpi_value,
        notes=notes,
    )


@dataclass(frozen=True)
class PdfSource:
    """A PDF input: its bytes and what a cheap look at it tells."""

    path: Path
    data: bytes
    pages: int
    title: str | None
    has_fonts: bool
    """Text rendered from fonts (made by software) rather than only page images (a scan)."""


def read_pdf(path: Path) -> PdfSource:
    """Check that *path* looks like a complete PDF and return :class:`PdfSource`."""
    data = path.read_bytes()
    if not data.startswith(b"%PDF-"):
        raise WriteError(f"{path}: not a PDF (no %PDF- header)")
    if b"%%EOF" not in data[-1024:]:
        raise WriteError(f"{path}: truncated PDF (no %%EOF trailer); copy the file again from its source")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    title_match = re.search(rb"/Title\s*\(((?:[^()\\]|\\.){0,400})\)", data, re.DOTALL)
    title = _pdf_text(title_match.group(1)) if title_match else None
    return PdfSource(path, data, pages, title, b"/Font" in data)


def _pdf_text(raw: bytes) -> str | None:
    """Decode a PDF literal string (PDFDocEncoding or UTF-16BE with BOM), printable chars only."""
    raw = re.sub(rb"\\([()\\])", rb"\1", raw)
    if raw.startswith(b"\xfe\xff"):
        text = raw[2:].decode("utf-16-be", errors="replace")
    else:
        text = raw.decode("latin-1", errors="replace")
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    return text or None
