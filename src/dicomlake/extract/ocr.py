"""Text in pixels: a thin wrapper over the ``tesseract`` command line (TSV output).

Debian's ``tesseract-ocr`` with ``tesseract-ocr-eng`` and ``tesseract-ocr-osd`` (the
orientation data ``--psm 0`` needs). Before recognition an image is turned into 8-bit
grey (16-bit values stretched over their range, MONOCHROME1 inverted), inverted when its
background is dark (tesseract reads dark text on light paper), upscaled when small (its
models want glyphs some 20 px tall), and turned upright after tesseract's own
orientation detection. Word boxes are mapped back to the coordinates of the image that
was passed in, so a caller can fill them.

Tesseract runs with ``OMP_THREAD_LIMIT=1``: with its default OpenMP threading it was three
times slower on a shared two-core machine.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from PIL import Image, ImageFilter

from dicomlake.errors import ExtractionError

TESSERACT = "tesseract"
"""Executable; Debian installs ``/usr/bin/tesseract``. Default: ``tesseract``."""
TIMEOUT_S = 60.0
"""Seconds one tesseract call may take. Default: 60."""
TARGET_LONG_SIDE = 1600
"""Images whose long side is shorter are upscaled towards this (at most 3×). Default: 1600."""
MIN_ORIENTATION_CONFIDENCE = 2.0
"""Tesseract's orientation confidence below which a page is not turned. Default: 2.0."""


class Variant(Enum):
    """How colour becomes the grey image tesseract reads."""

    LUMA = "luma"
    """ITU-R BT.601 luminance: right for screenshots, scans and grey images."""
    MIN_CHANNEL = "min-channel"
    """Darkest channel of each pixel: orange camera date stamps and coloured ink stand out
    from skin and paper (their blue is low where the background's is not)."""


@dataclass(frozen=True)
class Word:
    """One recognised word with its box in the input image's pixel coordinates."""

    text: str
    conf: float
    """Tesseract's word confidence, 0…100."""
    left: int
    top: int
    width: int
    height: int
    line_key: tuple[int, int, int, int] = (0, 0, 0, 0)
    """(pass, block, paragraph, line) as tesseract numbered them."""
    upright: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """(x0, y0, x1, y1) in the upright page at the input's scale: for layout (rows, columns)."""

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive."""
        return self.left, self.top, self.left + self.width, self.top + self.height

    @property
    def cx(self) -> float:
        return self.left + self.width / 2

    @property
    def cy(self) -> float:
        return self.top + self.height / 2


@dataclass(frozen=True)
class Orientation:
    """Tesseract's orientation and script detection (``--psm 0``)."""

    rotate: int
    """Clockwise degrees (0, 90, 180, 270) that turn the page upright."""
    confidence: float
    """Tesseract's orientation confidence (roughly: above 2 is a decision)."""
    detected: bool
    """False when tesseract found too few characters to decide."""


@dataclass
class OcrResult:
    """Words of one image, and what was done to read them."""

    words: list[Word] = field(default_factory=list)
    orientation: Orientation = Orientation(0, 0.0, False)
    inverted: bool = False
    scale: float = 1.0
    seconds: float = 0.0
    calls: int = 0

    def slope(self, pass_no: int | None = 0) -> float:
        """Median slope (dy/dx) of tesseract's own lines in the upright page: the residual skew."""
        groups: dict[tuple[int, int, int, int], list[Word]] = {}
        for w in self.words:
            if pass_no is None or w.line_key[0] == pass_no:
                groups.setdefault(w.line_key, []).append(w)
        slopes = []
        for g in groups.values():
            if len(g) < 2:
                continue
            xs = np.array([(w.upright[0] + w.upright[2]) / 2 for w in g])
            ys = np.array([(w.upright[1] + w.upright[3]) / 2 for w in g])
            if xs.max() - xs.min() < 3 * float(np.median([w.upright[3] - w.upright[1] for w in g])):
                continue
            slopes.append(float(np.polyfit(xs, ys, 1)[0]))
        return float(np.median(slopes)) if slopes else 0.0

    def lines(self, min_conf: float = -1.0, pass_no: int | None = 0) -> list[list[Word]]:
        """Words of one pass grouped into rows of the upright page, each sorted left to right.

        A word joins a row when its vertical centre, corrected for the page's residual
        skew (:meth:`slope`), lies within half the row's median word height of the row's
        centre; tesseract's own line numbers are not enough, because sparse-text mode
        (``--psm 11``) splits table rows into blocks.
        """
        k = self.slope(pass_no)
        words = [w for w in self.words if w.conf >= min_conf and (pass_no is None or w.line_key[0] == pass_no)]

        def centre(w: Word) -> float:
            return (w.upright[1] + w.upright[3]) / 2 - k * (w.upright[0] + w.upright[2]) / 2

        words.sort(key=centre)
        rows: list[list[Word]] = []
        centres: list[float] = []
        for w in words:
            cy = centre(w)
            h = w.upright[3] - w.upright[1]
            if rows:
                hs = sorted(x.upright[3] - x.upright[1] for x in rows[-1])
                if abs(cy - centres[-1]) <= max(hs[len(hs) // 2], h) * 0.5:
                    rows[-1].append(w)
                    centres[-1] = sum(centre(x) for x in rows[-1]) / len(rows[-1])
                    continue
            rows.append([w])
            centres.append(cy)
        return [sorted(r, key=lambda w: w.upright[0]) for r in rows]

    @property
    def text(self) -> str:
        return "\n".join(" ".join(w.text for w in line) for line in self.lines())


def find_tesseract() -> str | None:
    """Path of ``tesseract`` or ``None``."""
    return shutil.which(TESSERACT)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_THREAD_LIMIT"] = "1"
    return env


def _run(png: bytes, args: Sequence[str], where: str, *, may_fail: bool = False) -> str:
    exe = find_tesseract()
    if exe is None:
        raise ExtractionError(
            f"{where}: tesseract is not installed; apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd"
        )
    try:
        proc = subprocess.run(
            [exe, "stdin", "stdout", *args], input=png, capture_output=True, timeout=TIMEOUT_S, env=_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ExtractionError(f"{where}: tesseract took more than {TIMEOUT_S:.0f} s; the image may be huge") from exc
    out = proc.stdout.decode("utf-8", errors="replace")
    if proc.returncode != 0 and not out and not may_fail:
        err = proc.stderr.decode("utf-8", errors="replace").strip()
        raise ExtractionError(f"{where}: tesseract {' '.join(args)} failed (exit {proc.returncode}): {err[:300]}")
    return out


def to_gray8(arr: np.ndarray, photometric: str = "", variant: Variant = Variant.LUMA) -> np.ndarray:
    """An 8-bit grey image from stored pixel values (grey of any depth, or RGB)."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] >= 3:
        rgb = a[..., :3].astype(np.float64)
        if a.dtype != np.uint8:
            rgb = rgb * 255.0 / max(float(rgb.max()), 1.0)
        grey = rgb.min(axis=2) if variant is Variant.MIN_CHANNEL else rgb @ np.array([0.299, 0.587, 0.114])
        out: np.ndarray = np.clip(grey + 0.5, 0, 255).astype(np.uint8)
        return out
    if a.ndim == 3:
        a = a[..., 0]
    if a.dtype == np.uint8:
        grey8 = a
    else:
        f = a.astype(np.float64)
        lo, hi = float(np.percentile(f, 0.5)), float(f.max())
        grey8 = np.clip((f - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)
    if photometric.upper() == "MONOCHROME1":
        grey8 = 255 - grey8
    return grey8


def is_dark(grey: np.ndarray) -> bool:
    """A dark background: more than half the pixels below 100 (dark themes, radiographs)."""
    return bool(np.median(grey) < 100)


def _png(grey: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


_ROTATE = re.compile(r"Rotate:\s*(\d+)")
_CONF = re.compile(r"Orientation confidence:\s*([\d.]+)")


def detect_orientation(grey: np.ndarray, where: str = "image") -> Orientation:
    """Tesseract ``--psm 0`` on a prepared (dark-on-light, upscaled) grey image."""
    # "Too few characters. Skipping this page" ends tesseract with status 1: not detected.
    out = _run(_png(grey), ["--psm", "0", "--dpi", "150"], where, may_fail=True)
    rot, conf = _ROTATE.search(out), _CONF.search(out)
    if not rot or not conf:
        return Orientation(0, 0.0, False)
    return Orientation(int(rot.group(1)) % 360, float(conf.group(1)), True)


def _turn(grey: np.ndarray, clockwise: int) -> np.ndarray:
    turned: np.ndarray = np.ascontiguousarray(np.rot90(grey, k=-(clockwise // 90)))
    return turned


def parse_tsv(tsv: str, pass_no: int = 0) -> list[Word]:
    """Word rows (level 5) of tesseract's TSV output; empty words left out."""
    words: list[Word] = []
    for line in tsv.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 12 or parts[0] != "5":
            continue
        text = parts[11].strip()
        if not text:
            continue
        try:
            left, top, width, height = (int(v) for v in parts[6:10])
            conf = float(parts[10])
            key = (pass_no, int(parts[2]), int(parts[3]), int(parts[4]))
        except ValueError:
            continue
        words.append(Word(text, conf, left, top, width, height, key))
    return words


def _unmap(w: Word, turned: int, shape: tuple[int, int], scale: float, pad: int) -> Word:
    """Map a word box from the prepared image back to the input image."""
    x0, y0, x1, y1 = w.left - pad, w.top - pad, w.left + w.width - pad, w.top + w.height - pad
    h, wd = shape  # of the prepared image before turning (scaled, unpadded)
    # undo a clockwise turn by `turned` degrees
    if turned == 90:  # turned image (x', y') = (h-1-y, x)
        x0, y0, x1, y1 = y0, h - x1, y1, h - x0
    elif turned == 180:
        x0, y0, x1, y1 = wd - x1, h - y1, wd - x0, h - y0
    elif turned == 270:  # (x', y') = (y, w-1-x)
        x0, y0, x1, y1 = wd - y1, x0, wd - y0, x1
    fx0, fy0 = int(np.floor(x0 / scale)), int(np.floor(y0 / scale))
    fx1, fy1 = int(np.ceil(x1 / scale)), int(np.ceil(y1 / scale))
    up = (
        (w.left - pad) / scale,
        (w.top - pad) / scale,
        (w.left + w.width - pad) / scale,
        (w.top + w.height - pad) / scale,
    )
    return Word(w.text, w.conf, max(fx0, 0), max(fy0, 0), max(fx1 - fx0, 1), max(fy1 - fy0, 1), w.line_key, up)


def prepare(
    grey: np.ndarray,
    *,
    invert: bool | None = None,
    scale: float | None = None,
    max_scale: float = 3.0,
    denoise: bool = False,
) -> tuple[np.ndarray, bool, float]:
    """Dark-on-light and upscaled: (prepared image, inverted, scale)."""
    inv = is_dark(grey) if invert is None else invert
    g = 255 - grey if inv else grey
    if denoise:  # sensor noise and skin texture read as letters otherwise
        g = np.asarray(Image.fromarray(g).filter(ImageFilter.MedianFilter(3)))
        # Flatten the illumination: each pixel over its blurred surround, so one global
        # threshold (tesseract's Otsu) separates a stamp on skin as well as ink on a label.
        surround = np.asarray(Image.fromarray(g).filter(ImageFilter.GaussianBlur(12)), dtype=np.float64)
        # Only marked darkening is ink (ratio ≤ 0.35 black, ≥ 0.8 white): texture stays white.
        ratio = g.astype(np.float64) / np.maximum(surround, 1.0)
        g = np.clip((ratio - 0.35) / 0.45 * 255.0, 0, 255).astype(np.uint8)
    h, w = g.shape
    if scale is None:
        scale = min(max_scale, max(1.0, TARGET_LONG_SIDE / max(h, w)))
        scale = round(scale * 2) / 2  # 1, 1.5, 2, 2.5, 3
    if scale != 1.0:
        g = np.asarray(Image.fromarray(g).resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS))
    return g, inv, scale


def ocr(
    arr: np.ndarray,
    *,
    photometric: str = "",
    psm: int = 11,
    variants: Iterable[Variant] = (Variant.LUMA,),
    orientation: bool = True,
    denoise: bool = False,
    max_scale: float = 3.0,
    where: str = "image",
    scale: float | None = None,
) -> OcrResult:
    """Recognise the words of an image (stored values, grey or RGB).

    Parameters
    ----------
    arr
        Rows × Columns (× 3) stored pixel values.
    photometric
        Photometric Interpretation; MONOCHROME1 is inverted first.
    psm
        Tesseract page segmentation mode: 11 (sparse text, for screens, labels and
        corner annotations) or 3 (automatic, for pages of prose).
    variants
        Grey conversions to read; the words of all are returned (each keeps its pass
        number in ``line_key``). Colour images with coloured text need
        :attr:`Variant.MIN_CHANNEL` as well as :attr:`Variant.LUMA`.
    orientation
        Detect orientation (``--psm 0``) on the first variant and turn every variant upright.
    denoise
        A 3 × 3 median filter first: photographs, whose noise and texture tesseract
        otherwise reads as letters.
    max_scale
        Upper limit of the upscaling (photographs: 2).
    where
        The input's name, for error messages.
    scale
        A fixed upscaling instead of the automatic one (the second, independent pass over
        a redacted image reads it at another scale than the first).
    """
    t0 = time.perf_counter()
    result = OcrResult()
    turned = 0
    for n, variant in enumerate(variants):
        grey = to_gray8(arr, photometric, variant)
        prepared, inv, used = prepare(grey, max_scale=max_scale, denoise=denoise, scale=scale)
        if n == 0:
            result.inverted, result.scale = inv, used
            if orientation:
                result.orientation = detect_orientation(prepared, where)
                result.calls += 1
                o = result.orientation
                if o.detected and o.rotate and o.confidence >= MIN_ORIENTATION_CONFIDENCE:
                    turned = o.rotate
        shape = prepared.shape
        img = _turn(prepared, turned) if turned else prepared
        pad = 10  # tesseract misses glyphs touching the border
        img = np.pad(img, pad, mode="edge")  # a white frame makes tesseract drop photo-like pages
        tsv = _run(_png(img), ["--psm", str(psm), "--dpi", "150", "-l", "eng", "tsv"], where)
        result.calls += 1
        for w in parse_tsv(tsv, n):
            result.words.append(_unmap(w, turned, shape, used, pad))
    result.seconds = time.perf_counter() - t0
    return result
