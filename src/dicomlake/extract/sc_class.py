"""What a Secondary Capture shows: clinical photo, dose screenshot, scanned document, outside image.

Seed 000: SC objects wrap screenshots, scans, photographs and imported studies with little
acquisition metadata. The class is decided from the cheapest signal that is sure enough:

1. the header — SOP Class, Conversion Type (PS3.3 C.8.6.1), Modality, descriptions,
   Image Type, Photometric Interpretation and bit depth;
2. pixel statistics — colourfulness (Hasler and Süsstrunk 2003), how much of the image
   is a few flat values (screens) or texture (photos, scans, anatomy), white and dark share;
3. OCR keywords — CTDIvol/DLP for dose screens, form words for documents, window/level
   and technique for annotated images.

Each stage adds evidence to the classes; the first stage after which the leading class
scores at least :data:`DECIDE_SCORE` and leads by :data:`DECIDE_MARGIN` decides, and is
recorded with a confidence. When none does, the class is ``unknown`` and the instance
goes to review.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from pydicom.dataset import Dataset

DECIDE_SCORE = 0.7
"""Evidence the leading class needs to decide. Default: 0.7."""
DECIDE_MARGIN = 0.3
"""Lead over the second class needed to decide. Default: 0.3."""


class ContentClass(Enum):
    """What a Secondary Capture (or VL Photographic, Encapsulated PDF) instance shows."""

    PHOTO = "photo"
    """A clinical photograph: wound, skin lesion, surgical site (seed 000)."""
    DOSE_REPORT = "dose_report"
    """A screenshot of a modality's dose report page (CTDIvol, DLP)."""
    DOCUMENT = "document"
    """A scanned or encapsulated document: consent form, request, outside report."""
    OUTSIDE_IMAGE = "outside_image"
    """An imported outside study or annotated image (film digitised, CD import, screen grab of an image)."""
    SCREENSHOT = "screenshot"
    """A screen capture of an application that is not a dose page: RIS/PACS worklist, order
    or booking screen (other patients' names and IDs: all its text is removed)."""
    UNKNOWN = "unknown"
    """No signal was sure enough: review."""


class DecidedBy(Enum):
    """Which signal decided the class."""

    HEADER = "header"
    """SOP Class, Conversion Type, Modality, descriptions, Image Type, photometric, bit depth."""
    PIXELS = "pixels"
    """Colourfulness, distinct colours, flat share, white and dark share."""
    OCR = "ocr"
    """Words read from the pixels."""
    NONE = "none"
    """Nothing decided (class unknown)."""


SC_LIKE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}
"""SOP Classes analysed by ``dicomlake sc analyse``."""

VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

_C = ContentClass
_DESCRIPTION_KEYWORDS: tuple[tuple[re.Pattern[str], ContentClass, float], ...] = (
    (
        re.compile(
            r"\bdose\b.*\b(report|info|summary|screen)|patient protocol|radiation|ctdi|\bdlp\b|exposure (summary|report)",
            re.IGNORECASE,
        ),
        _C.DOSE_REPORT,
        0.8,
    ),
    (
        re.compile(
            r"consent|\bform\b|letter|referral|request|questionnaire|document|scanned|\breport\b|paperwork",
            re.IGNORECASE,
        ),
        _C.DOCUMENT,
        0.7,
    ),
    (
        re.compile(
            r"photo|wound|skin|lesion|derm|clinical (image|picture)|camera|surgical site|pressure (ulcer|sore)",
            re.IGNORECASE,
        ),
        _C.PHOTO,
        0.7,
    ),
    (
        re.compile(
            r"outside|external|import|prior|comparison|\bcd\b|foreign|other (hospital|trust)|film", re.IGNORECASE
        ),
        _C.OUTSIDE_IMAGE,
        0.7,
    ),
)
_DESCRIPTION_KEYWORDS_ORDERED = True  # a dose "report" is a dose report, not a document: first match wins

_CONVERSION = {
    "SD": {_C.DOCUMENT: 0.8},
    "DF": {_C.OUTSIDE_IMAGE: 0.7},
    "SI": {_C.DOCUMENT: 0.3, _C.OUTSIDE_IMAGE: 0.2},
    "DV": {_C.PHOTO: 0.5},
    "WSD": {_C.DOSE_REPORT: 0.3, _C.OUTSIDE_IMAGE: 0.1},
    "DRW": {_C.DOCUMENT: 0.2},
}
_MODALITY = {
    "XC": {_C.PHOTO: 0.8},
    "GM": {_C.PHOTO: 0.6},
    "DOC": {_C.DOCUMENT: 0.8},
    "CT": {_C.DOSE_REPORT: 0.2, _C.OUTSIDE_IMAGE: 0.2},
    "MR": {_C.OUTSIDE_IMAGE: 0.3},
    "CR": {_C.OUTSIDE_IMAGE: 0.3},
    "DX": {_C.OUTSIDE_IMAGE: 0.3},
    "US": {_C.OUTSIDE_IMAGE: 0.3},
    "XA": {_C.OUTSIDE_IMAGE: 0.2, _C.DOSE_REPORT: 0.1},
}


@dataclass
class Evidence:
    """Scores per class and the reasons, added stage by stage."""

    scores: dict[ContentClass, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def add(self, klass: ContentClass, weight: float, reason: str) -> None:
        self.scores[klass] = self.scores.get(klass, 0.0) + weight
        self.reasons.append(f"{klass.value}+{weight:.2f}: {reason}")

    def leader(self) -> tuple[ContentClass, float, float]:
        """(class, its score, the runner-up's score)."""
        ranked = sorted(((s, k) for k, s in self.scores.items() if k is not ContentClass.UNKNOWN), key=lambda t: -t[0])
        if not ranked:
            return ContentClass.UNKNOWN, 0.0, 0.0
        top, klass = ranked[0]
        second = ranked[1][0] if len(ranked) > 1 else 0.0
        return klass, top, second

    def decided(self) -> bool:
        _, top, second = self.leader()
        return top >= DECIDE_SCORE and top - second >= DECIDE_MARGIN

    def confidence(self) -> float:
        _, top, second = self.leader()
        return round(max(0.0, min(0.99, 0.5 + (top - second) / 2 + max(0.0, top - DECIDE_SCORE) / 4)), 3)


def header_evidence(ds: Dataset | Mapping[str, object], evidence: Evidence | None = None) -> Evidence:
    """Evidence from the header alone (works on a Dataset or a lake row keyed by keyword)."""
    ev = evidence or Evidence()

    def get(keyword: str) -> str:
        value = ds.get(keyword, "") if isinstance(ds, (Dataset, Mapping)) else ""
        if value is None:
            return ""
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
        return str(value)

    sop = get("SOPClassUID")
    if sop == VL_PHOTO:
        ev.add(_C.PHOTO, 0.9, "SOP Class VL Photographic Image")
    elif sop == ENCAPSULATED_PDF:
        ev.add(_C.DOCUMENT, 0.95, "SOP Class Encapsulated PDF")
    conversion = get("ConversionType").upper()
    for klass, weight in _CONVERSION.get(conversion, {}).items():
        ev.add(klass, weight, f"Conversion Type {conversion}")
    modality = get("Modality").upper()
    for klass, weight in _MODALITY.get(modality, {}).items():
        ev.add(klass, weight, f"Modality {modality}")
    for keyword in ("SeriesDescription", "StudyDescription", "DocumentTitle", "ImageComments", "ProtocolName"):
        text = get(keyword)
        if not text:
            continue
        for pattern, klass, weight in _DESCRIPTION_KEYWORDS:
            if pattern.search(text):
                ev.add(klass, weight, f"{keyword} {text!r}")
                break
    image_type = get("ImageType").upper()
    if "DOSE" in image_type:
        ev.add(_C.DOSE_REPORT, 0.6, f"Image Type {image_type}")
    elif "SCREEN SAVE" in image_type:
        ev.add(_C.DOSE_REPORT, 0.3, f"Image Type {image_type}")
    photometric = get("PhotometricInterpretation").upper()
    bits = get("BitsStored")
    if photometric.startswith("MONOCHROME") and bits.isdigit() and int(bits) > 8:
        ev.add(_C.OUTSIDE_IMAGE, 0.6, f"{photometric} with {bits} bits stored (a medical image, not a screen or scan)")
    return ev


# --- pixel statistics ------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelStats:
    """Cheap statistics of an image (8-bit grey or RGB, downsampled)."""

    colourfulness: float
    """Hasler–Süsstrunk M: 0 for grey, ~15 slightly colourful, >30 photo-like."""
    distinct_colours: int
    """Distinct colours after quantising to 5 bits per channel (grey: 8-bit levels)."""
    white_share: float
    """Share of pixels with luminance ≥ 200."""
    dark_share: float
    """Share of pixels with luminance ≤ 50."""
    flat_share: float
    """Share of pixels taken by the 8 most frequent values (screens ≈ 1; JPEG-flattened paper too)."""
    texture_share: float
    """Share of horizontal steps of 1…6 grey levels: noise, texture, anatomy, JPEG ringing.
    Screens ≈ 0 (flat or sharp), scans and radiographs ≈ 0.15, photographs ≈ 0.6."""
    mean: float


def _subsample(arr: np.ndarray, max_pixels: int = 250_000) -> np.ndarray:
    step = max(1, int(np.ceil(np.sqrt(arr.shape[0] * arr.shape[1] / max_pixels))))
    return arr[::step, ::step]


def pixel_stats(arr: np.ndarray) -> PixelStats:
    """Statistics of stored pixel values (grey of any depth, or RGB)."""
    a = _subsample(np.asarray(arr))
    if a.ndim == 3 and a.shape[2] >= 3:
        rgb = a[..., :3].astype(np.float64)
        if a.dtype != np.uint8:
            rgb = rgb * 255.0 / max(float(rgb.max()), 1.0)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        rg, yb = r - g, 0.5 * (r + g) - b
        colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
        luma = rgb @ np.array([0.299, 0.587, 0.114])
        q = rgb.astype(np.uint16) >> 3
        keys = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
        exact: np.ndarray = rgb.astype(np.uint32) @ np.array([65536, 256, 1], dtype=np.uint32)
    else:
        if a.ndim == 3:
            a = a[..., 0]
        f = a.astype(np.float64)
        if a.dtype != np.uint8:
            lo, hi = float(f.min()), float(f.max())
            f = (f - lo) * 255.0 / max(hi - lo, 1.0)
        luma = f
        colourfulness = 0.0
        keys = np.clip(f + 0.5, 0, 255).astype(np.uint16)
        exact = np.asarray(a).astype(np.int64)
    n = max(luma.size, 1)
    step = np.abs(np.diff(np.clip(luma + 0.5, 0, 255).astype(np.int16), axis=1)) if luma.shape[-1] > 1 else np.zeros(1)
    texture = float(((step > 0) & (step <= 6)).mean())
    distinct = int(np.unique(keys).size)
    _, counts = np.unique(np.asarray(exact).ravel(), return_counts=True)
    flat = float(np.sort(counts)[-8:].sum() / n) if counts.size else 1.0
    return PixelStats(
        colourfulness=round(colourfulness, 2),
        distinct_colours=distinct,
        white_share=round(float((luma >= 200).sum() / n), 4),
        dark_share=round(float((luma <= 50).sum() / n), 4),
        flat_share=round(flat, 4),
        texture_share=round(texture, 4),
        mean=round(float(luma.mean()), 2),
    )


def pixel_evidence(stats: PixelStats, evidence: Evidence | None = None) -> Evidence:
    """Evidence from :class:`PixelStats`."""
    ev = evidence or Evidence()
    s = stats
    if s.texture_share < 0.03:
        # a screen: flat areas and sharp edges, no noise
        ev.add(_C.DOSE_REPORT, 0.35, f"texture share {s.texture_share:.3f} (a screen capture)")
        return ev
    if s.colourfulness >= 12 and s.texture_share >= 0.25:
        ev.add(_C.PHOTO, 0.75, f"colourfulness {s.colourfulness:.0f}, {s.distinct_colours} colours, textured")
        return ev
    if s.colourfulness < 8 and s.white_share >= 0.5 and s.dark_share < 0.15:
        ev.add(_C.DOCUMENT, 0.75, f"grey paper: white share {s.white_share:.2f}, textured")
        return ev
    if s.colourfulness < 8 and s.dark_share >= 0.25:
        ev.add(_C.OUTSIDE_IMAGE, 0.75, f"grey on black: dark share {s.dark_share:.2f}, textured (anatomy)")
        return ev
    if s.colourfulness >= 8:
        ev.add(_C.PHOTO, 0.4, f"colourfulness {s.colourfulness:.0f}")
    return ev


# --- OCR keywords ----------------------------------------------------------------------------

_DOSE_WORDS = re.compile(r"ctdi|dlp|mgy|dose|protocol|mas\b|phantom", re.IGNORECASE)
_DOC_WORDS = re.compile(
    r"consent|signature|signed|agree|laboratory|referral|address|telephone|hospital|dear|sincerely|"
    r"patient|name|birth|number|report|risk|procedure|result",
    re.IGNORECASE,
)
_SCREEN_WORDS = re.compile(
    r"^(worklist|scheduled|schedule|accession|modality|status|requested|appointment|ward|ris|pacs|queue|"
    r"priority|booked|arrived|completed|reported|exam|examination|location|referrer|filter|search|refresh|"
    r"logout|user|station|room)[:]?$",
    re.IGNORECASE,
)
_ANNOTATION_WORDS = re.compile(r"^(W|L|WW|WL|kV|kVp|mA|mAs|mm|Slice|Acc|Im|Se|Ex|Zoom|FOV|C|R|A|P)[:]?$", re.IGNORECASE)


def ocr_evidence(
    words: Iterable[str], image_shape: tuple[int, ...] | None = None, evidence: Evidence | None = None
) -> Evidence:
    """Evidence from recognised words (text only; boxes are not needed)."""
    ev = evidence or Evidence()
    ws = [w for w in words if w.strip()]
    dose = sum(1 for w in ws if _DOSE_WORDS.search(w))
    doc = sum(1 for w in ws if _DOC_WORDS.search(w))
    annot = sum(1 for w in ws if _ANNOTATION_WORDS.match(w))
    alpha = sum(1 for w in ws if sum(c.isalpha() for c in w) >= 3)
    screen = sum(1 for w in ws if _SCREEN_WORDS.match(w))
    if screen >= 4 and dose < 2:
        ev.add(_C.SCREENSHOT, 0.5 + 0.08 * min(screen, 8), f"{screen} RIS/worklist words (Scheduled, Status, …)")
    if dose >= 2:
        ev.add(_C.DOSE_REPORT, 0.5 + 0.1 * min(dose, 5), f"{dose} dose words (CTDIvol, DLP, mGy, …)")
    if doc >= 3 and alpha >= 20:
        ev.add(_C.DOCUMENT, 0.4 + 0.05 * min(doc, 8), f"{doc} form words among {alpha} words")
    if annot >= 2:
        ev.add(_C.OUTSIDE_IMAGE, 0.3 + 0.1 * min(annot, 4), f"{annot} annotation words (W, L, kV, mA, mm)")
    if not ws:
        ev.add(_C.PHOTO, 0.2, "no text")
    return ev


@dataclass(frozen=True)
class Classification:
    """The decision and how it was reached."""

    klass: ContentClass
    decided_by: DecidedBy
    confidence: float
    reasons: tuple[str, ...] = ()

    @property
    def review(self) -> bool:
        return self.klass is ContentClass.UNKNOWN


def decide(evidence: Evidence, stage: DecidedBy, *, final: bool = False) -> Classification | None:
    """A classification when *evidence* decides (or, when *final*, the best guess or unknown)."""
    klass, top, _ = evidence.leader()
    if evidence.decided():
        return Classification(klass, stage, evidence.confidence(), tuple(evidence.reasons))
    if final:
        if klass is not ContentClass.UNKNOWN and top >= 0.5 and evidence.confidence() >= 0.6:
            return Classification(klass, stage, round(evidence.confidence() * 0.8, 3), tuple(evidence.reasons))
        return Classification(ContentClass.UNKNOWN, DecidedBy.NONE, 0.0, tuple(evidence.reasons))
    return None
