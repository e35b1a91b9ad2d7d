"""Input files from the field, made by code: photos, scans, screenshots, PDFs, odd JPEGs.

Each factory writes one file under the directory it is given and returns its path. The
content is deterministic (seeded) so that pixel comparisons are repeatable. Nothing is
downloaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageFont

PHOTO_DATETIME = "2024:03:15 14:22:05"
"""EXIF DateTimeOriginal of :func:`phone_photo_jpeg`."""
PHOTO_SUBSEC = "250"
PHOTO_MAKE = "Acme Phones"
PHOTO_MODEL = "Pixelator 7"
SCAN_DPI = 75
SCAN_PAGES = 2
PDF_PAGES = 3


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile built by LittleCMS (through Pillow)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return bytes(profile.tobytes())


def _photo_pixels(width: int, height: int, seed: int = 1) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    green = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    blue = ((x + y) % 256).astype(np.uint8)
    img = np.stack([red, green, blue], axis=-1)
    noise = _rng(seed).integers(0, 24, size=img.shape, dtype=np.uint8)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def phone_photo_jpeg(directory: Path, name: str = "phone_photo.jpg") -> Path:
    """A baseline 4:2:0 JPEG like a phone's: EXIF (Make, Model, DateTimeOriginal) and sRGB ICC."""
    img = Image.fromarray(_photo_pixels(640, 480), "RGB")
    exif = Image.Exif()
    exif[0x010F] = PHOTO_MAKE  # Make
    exif[0x0110] = PHOTO_MODEL  # Model
    exif[0x0131] = "PhoneOS 14.2"  # Software
    exif[0x0112] = 1  # Orientation: top-left
    exif[0x0132] = "2024:03:15 14:22:06"  # DateTime (file change)
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x9003] = PHOTO_DATETIME  # DateTimeOriginal
    exif_ifd[0x9291] = PHOTO_SUBSEC  # SubsecTimeOriginal
    exif_ifd[0x9011] = "+01:00"  # OffsetTimeOriginal
    path = directory / name
    img.save(
        path,
        "JPEG",
        quality=88,
        subsampling="4:2:0",
        exif=exif.tobytes(),
        icc_profile=srgb_icc_profile(),
    )
    return path


def photo_jpeg_444(directory: Path, name: str = "photo_444.jpg") -> Path:
    """A baseline JPEG without chroma subsampling and without EXIF (a pasted image)."""
    img = Image.fromarray(_photo_pixels(320, 240, seed=5), "RGB")
    path = directory / name
    img.save(path, "JPEG", quality=92, subsampling="4:4:4")
    return path


def grayscale_jpeg(directory: Path, name: str = "gray.jpg") -> Path:
    """An 8-bit single-component baseline JPEG."""
    arr = _photo_pixels(200, 150, seed=6)[..., 0]
    path = directory / name
    Image.fromarray(arr, "L").save(path, "JPEG", quality=90)
    return path


def _draw_text_page(width: int, height: int, lines: list[str], seed: int) -> Image.Image:
    page = Image.new("L", (width, height), 250)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    y = 40
    for line in lines:
        draw.text((50, y), line, fill=20, font=font)
        y += 22
    # paper texture and a fold line, as flatbed scans show
    arr = np.asarray(page, dtype=np.int16)
    arr = arr - _rng(seed).integers(0, 12, size=arr.shape)
    arr[height // 2 : height // 2 + 2, :] -= 40
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def skewed_scan_tiff(directory: Path, name: str = "scan_75dpi.tif", pages: int = SCAN_PAGES) -> Path:
    """A multi-page 75 dpi grayscale TIFF of a typed letter, rotated 2.5° as scans are."""
    width, height = int(8.27 * SCAN_DPI), int(11.69 * SCAN_DPI)  # A4 at 75 dpi
    images = []
    for n in range(pages):
        lines = [f"Referral letter - page {n + 1} of {pages}", "Patient: DOE^JANE  MRN 123456"]
        lines += [f"Line {i}: findings described in free text." for i in range(12)]
        page = _draw_text_page(width, height, lines, seed=10 + n)
        images.append(page.rotate(2.5, resample=Image.Resampling.BILINEAR, fillcolor=255, expand=False))
    path = directory / name
    images[0].save(
        path,
        "TIFF",
        save_all=True,
        append_images=images[1:],
        dpi=(SCAN_DPI, SCAN_DPI),
        compression="tiff_lzw",
        software="FlatScan 3.1",
    )
    return path


def screenshot_png(directory: Path, name: str = "screenshot.png") -> Path:
    """An RGBA (fully opaque) screen capture of a dose report window, with text."""
    img = Image.new("RGBA", (800, 500), (32, 36, 48, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.rectangle((0, 0, 800, 28), fill=(60, 90, 160, 255))
    draw.text((10, 8), "Dose Report - CT CHEST  Patient: DOE^JOHN  ID 987654", fill=(255, 255, 255, 255), font=font)
    for i, row in enumerate(["Series  CTDIvol  DLP", "1  12.4 mGy  402 mGy.cm", "2  3.1 mGy  95 mGy.cm"]):
        draw.text((20, 60 + 24 * i), row, fill=(220, 220, 220, 255), font=font)
    draw.ellipse((500, 120, 700, 320), outline=(250, 200, 0, 255), width=3)
    path = directory / name
    img.save(path, "PNG")
    return path


def png_16bit(directory: Path, name: str = "gray16.png") -> Path:
    """A 16-bit grayscale PNG using the full 0…65535 range."""
    y, x = np.mgrid[0:256, 0:300]
    arr = ((x * 218 + y * 3) % 65536).astype(np.uint16)
    arr[0, 0], arr[-1, -1] = 0, 65535
    path = directory / name
    Image.fromarray(arr).save(path, "PNG")
    return path


def bmp_rgb(directory: Path, name: str = "drawing.bmp") -> Path:
    """A 24-bit BMP (a hand drawing)."""
    img = Image.fromarray(_photo_pixels(120, 90, seed=7), "RGB")
    path = directory / name
    img.save(path, "BMP")
    return path


def tiff_rgb(directory: Path, name: str = "photo.tif") -> Path:
    """A single-page uncompressed RGB TIFF at 300 dpi."""
    img = Image.fromarray(_photo_pixels(160, 120, seed=8), "RGB")
    path = directory / name
    img.save(path, "TIFF", dpi=(300, 300))
    return path


def cmyk_jpeg(directory: Path, name: str = "print_cmyk.jpg") -> Path:
    """A CMYK JPEG (Adobe APP14), as print workflows produce."""
    rgb = Image.fromarray(_photo_pixels(160, 120, seed=9), "RGB")
    path = directory / name
    rgb.convert("CMYK").save(path, "JPEG", quality=90)
    return path


def progressive_jpeg(directory: Path, name: str = "progressive.jpg") -> Path:
    """A progressive JPEG (SOF2), which DICOM no longer has a transfer syntax for."""
    img = Image.fromarray(_photo_pixels(160, 120, seed=11), "RGB")
    path = directory / name
    img.save(path, "JPEG", quality=85, progressive=True)
    return path


def corrupt_jpeg(directory: Path, name: str = "corrupt.jpg") -> Path:
    """A JPEG cut off in the middle of its entropy-coded data."""
    buf = io.BytesIO()
    Image.fromarray(_photo_pixels(160, 120, seed=12), "RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = directory / name
    path.write_bytes(data[: len(data) // 2])
    return path


def three_page_pdf(directory: Path, name: str = "report.pdf", pages: int = PDF_PAGES) -> Path:
    """A valid multi-page PDF made by Pillow's PDF writer (pages are rendered text)."""
    images = []
    for n in range(pages):
        page = _draw_text_page(620, 877, [f"Outside report, page {n + 1} of {pages}", "Findings: none."], seed=20 + n)
        images.append(page.convert("RGB"))
    path = directory / name
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=75.0, title="Outside report")
    return path


def not_an_image(directory: Path, name: str = "notes.txt") -> Path:
    """A text file, which wrap cannot turn into DICOM."""
    path = directory / name
    path.write_text("this is not an image\n")
    return path
