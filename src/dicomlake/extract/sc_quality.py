"""Image quality of Secondary Captures: resolution, blur, noise, JPEG blocking, orientation, skew.

Seed 000: SC images vary from phone photos to 75 dpi scans and screen grabs; users need to
know which are "insufficient for diagnosis", "rotated" or "heavily compressed". Every
measure is plain numpy on an 8-bit grey image:

- blur: variance of the 4-neighbour Laplacian (Pech-Pacheco et al. 2000), with a
  threshold per content class (:data:`BLUR_MIN`);
- noise: Immerkær's fast estimate of the standard deviation of Gaussian noise (1996);
- JPEG blocking: how much larger grey steps are across 8-pixel block edges than inside
  blocks (0 for uncompressed images);
- skew: the angle that makes text rows sharpest in the projection profile;
- orientation: tesseract's own detection, passed in from :mod:`dicomlake.extract.ocr`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from dicomlake.extract.ocr import Orientation, is_dark

BLUR_MIN = {
    "photo": 30.0,
    "document": 150.0,
    "dose_report": 150.0,
    "outside_image": 20.0,
    "unknown": 30.0,
}
"""Variance of the Laplacian below which an image of that class is blurred. Default: as listed."""
MIN_PIXELS = {
    "photo": 300_000,
    "document": 250_000,
    "dose_report": 150_000,
    "outside_image": 65_536,
    "unknown": 65_536,
}
"""Fewest pixels (Rows × Columns) useful for each class (photo: 640 × 480; outside image: 256²)."""
BLOCKING_HEAVY = 0.35
"""JPEG blockiness above which an image is heavily compressed. Default: 0.35."""
COMPRESSION_RATIO_HEAVY = 20.0
"""Lossy Image Compression Ratio (0028,2112) above which an image is heavily compressed. Default: 20."""
SKEW_ROTATED = 1.5
"""Skew in degrees from which an image counts as rotated. Default: 1.5."""


class QualityFlag:
    """Flags a quality check raises (plain strings in the lake)."""

    INSUFFICIENT = "insufficient_for_diagnosis"
    """Too few pixels or too blurred for its class."""
    ROTATED = "rotated"
    """Not upright (tesseract orientation) or skewed by :data:`SKEW_ROTATED` degrees or more."""
    HEAVILY_COMPRESSED = "heavily_compressed"
    """JPEG blocking or a declared compression ratio above the limits."""


@dataclass(frozen=True)
class Quality:
    """Quality measures of one image."""

    rows: int
    columns: int
    aspect_ratio: float
    megapixels: float
    blur_laplacian_var: float
    noise_sigma: float
    jpeg_blockiness: float
    skew_degrees: float | None
    """Counter-clockwise angle of the text rows, degrees; ``None`` where there is no text-like structure."""
    orientation_rotate: int | None
    orientation_confidence: float | None
    flags: tuple[str, ...]


def gray8(arr: np.ndarray) -> np.ndarray:
    """8-bit grey of stored values (RGB by luminance; deeper grey stretched over its range)."""
    from dicomlake.extract.ocr import to_gray8

    return to_gray8(arr)


def laplacian_variance(g: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of an 8-bit grey image."""
    f = g.astype(np.float64)
    lap = -4 * f[1:-1, 1:-1] + f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:]
    return float(lap.var()) if lap.size else 0.0


def noise_sigma(g: np.ndarray) -> float:
    """Immerkær's estimate of the noise standard deviation (grey levels)."""
    f = g.astype(np.float64)
    h, w = f.shape
    if h < 3 or w < 3:
        return 0.0
    conv = (
        f[:-2, :-2]
        - 2 * f[:-2, 1:-1]
        + f[:-2, 2:]
        - 2 * f[1:-1, :-2]
        + 4 * f[1:-1, 1:-1]
        - 2 * f[1:-1, 2:]
        + f[2:, :-2]
        - 2 * f[2:, 1:-1]
        + f[2:, 2:]
    )
    return float(np.sqrt(np.pi / 2) * np.abs(conv).sum() / (6 * (w - 2) * (h - 2)))


def jpeg_blockiness(g: np.ndarray) -> float:
    """Mean step across 8-pixel block edges over the mean step inside blocks, minus one."""
    f = g.astype(np.float64)
    scores = []
    for a in (f, f.T):
        d = np.abs(np.diff(a, axis=1))
        if d.shape[1] < 16:
            continue
        cols = np.arange(d.shape[1])
        edge = (cols % 8) == 7
        inside = d[:, ~edge].mean()
        scores.append(d[:, edge].mean() / max(inside, 1e-6) - 1.0)
    return float(max(0.0, float(np.mean(scores)))) if scores else 0.0


def skew_angle(g: np.ndarray, max_degrees: float = 5.0) -> float | None:
    """Counter-clockwise angle of text rows (projection-profile search), or ``None`` without text."""
    grey = 255 - g if is_dark(g) else g
    h, w = grey.shape
    scale = min(1.0, 700 / max(h, w))
    small = Image.fromarray(grey)
    if scale < 1:
        small = small.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BILINEAR)
    s = np.asarray(small)
    background = float(np.median(s))
    ink = (s < background - 60).astype(np.uint8) * 255
    if ink.mean() / 255 < 0.002 or ink.mean() / 255 > 0.4:
        return None
    img = Image.fromarray(ink)

    def sharpness(angle: float) -> float:
        rot = np.asarray(img.rotate(-angle, resample=Image.Resampling.NEAREST, fillcolor=0), dtype=np.float64)
        profile = rot.sum(axis=1)
        return float(np.var(profile))

    coarse = np.arange(-max_degrees, max_degrees + 1e-9, 0.5)
    best = max(coarse, key=sharpness)
    fine = np.arange(best - 0.5, best + 0.5 + 1e-9, 0.1)
    best = max(fine, key=sharpness)
    return round(float(best), 2)


def assess(
    arr: np.ndarray,
    klass: str = "unknown",
    *,
    orientation: Orientation | None = None,
    compression_ratio: float | None = None,
    text_like: bool = True,
) -> Quality:
    """Measure one image and raise the flags its class calls for.

    Parameters
    ----------
    arr
        Stored pixel values of one frame.
    klass
        Content class value (``photo``, ``document``, ``dose_report``, ``outside_image``, ``unknown``).
    orientation
        Tesseract's orientation of the page, when OCR ran.
    compression_ratio
        Lossy Image Compression Ratio (0028,2112) from the header, if any.
    text_like
        Measure skew (documents, screens); photographs and anatomy have no text rows.
    """
    g = gray8(arr)
    rows, columns = g.shape
    blur = laplacian_variance(g)
    noise = noise_sigma(g)
    blocking = jpeg_blockiness(g)
    skew = skew_angle(g) if text_like else None
    flags: list[str] = []
    if rows * columns < MIN_PIXELS.get(klass, MIN_PIXELS["unknown"]) or blur < BLUR_MIN.get(klass, BLUR_MIN["unknown"]):
        flags.append(QualityFlag.INSUFFICIENT)
    turned = (
        orientation is not None and orientation.detected and orientation.rotate != 0 and orientation.confidence >= 2.0
    )
    if turned or (skew is not None and abs(skew) >= SKEW_ROTATED):
        flags.append(QualityFlag.ROTATED)
    if blocking > BLOCKING_HEAVY or (compression_ratio is not None and compression_ratio > COMPRESSION_RATIO_HEAVY):
        flags.append(QualityFlag.HEAVILY_COMPRESSED)
    return Quality(
        rows=rows,
        columns=columns,
        aspect_ratio=round(columns / max(rows, 1), 3),
        megapixels=round(rows * columns / 1e6, 3),
        blur_laplacian_var=round(blur, 1),
        noise_sigma=round(noise, 2),
        jpeg_blockiness=round(blocking, 3),
        skew_degrees=skew,
        orientation_rotate=orientation.rotate if orientation is not None and orientation.detected else None,
        orientation_confidence=round(orientation.confidence, 2)
        if orientation is not None and orientation.detected
        else None,
        flags=tuple(flags),
    )
