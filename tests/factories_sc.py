"""Secondary Capture objects made by code, with an answer key: class, PHI words, clinical numbers, doses.

The corpus follows seed 000 (Secondary Capture objects): CT dose screenshots (dark and
light themes, small fonts, one rotated 90°), scanned forms (75 dpi, skew up to 3°, noise,
JPEG quality 20), clinical photographs (a paper label, a camera date stamp, one with no
text), imported outside images with corner annotations, and an Encapsulated PDF.

Every word is drawn on its own, and its ink is written into a label image (one integer per
word, 0 for background) that goes through the same rotations as the pixels, so a test can
tell for each PHI word how much of its ink a redaction covered, and for each clinical
number that none was. Fonts are Debian's DejaVu (``fonts-dejavu-core``). Everything is
seeded: the same call writes the same pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom import dcmread

from dicomlake.write import CaptureIOD, ConversionType, PatientStudy, SourceKind, WrapOptions
from dicomlake.write.capture import wrap_paths

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
"""Where Debian's ``fonts-dejavu-core`` puts the fonts. Default: ``/usr/share/fonts/truetype/dejavu``."""

PHI, CLINICAL, OTHER = "phi", "clinical", "other"


def font(size: int, face: str = "DejaVuSans") -> ImageFont.FreeTypeFont:
    """A DejaVu face at *size* pixels."""
    path = FONT_DIR / f"{face}.ttf"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: apt-get install fonts-dejavu-core")
    return ImageFont.truetype(str(path), size)


def nhs_number(stem: str) -> str:
    """A 10-digit NHS number with a valid modulus-11 check digit, from a 9-digit stem."""
    total = sum(int(d) * w for d, w in zip(stem, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    if check == 10:
        raise ValueError(f"stem {stem} has no valid check digit")
    return f"{stem}{check}"


@dataclass(frozen=True)
class Patient:
    """Identifying values that go into a header and, printed in some way, into pixels."""

    family: str
    given: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    accession: str
    institution: str
    nhs: str
    phone: str
    address: str
    postcode: str
    study_date: str

    @property
    def dicom_name(self) -> str:
        return f"{self.family}^{self.given}"


PATIENTS = [
    Patient(
        "SMITH",
        "JOHN",
        "48213067",
        "19560403",
        "M",
        "A20240815",
        "St Elsewhere Hospital",
        nhs_number("943476591"),
        "0113 496 0123",
        "12 Acacia Avenue Leeds",
        "LS6 2AB",
        "20240815",
    ),
    Patient(
        "KOWALSKI",
        "ANNA",
        "RX0099812",
        "19820911",
        "F",
        "ACC771204",
        "Riverside General",
        nhs_number("485777345"),
        "0161 496 0456",
        "7 Mill Lane Salford",
        "M5 4WT",
        "20240816",
    ),
    Patient(
        "OKONKWO",
        "DAVID",
        "77120345",
        "19700128",
        "M",
        "R4410092",
        "Northgate Clinic",
        nhs_number("401023871"),
        "020 7946 0789",
        "3 Elm Road Hackney",
        "E8 1LA",
        "20240902",
    ),
    Patient(
        "BRENNAN",
        "CLAIRE",
        "H3392015",
        "19911230",
        "F",
        "XA558120",
        "Lakeside Infirmary",
        nhs_number("612734580"),
        "0117 496 0321",
        "44 Quay Street Bristol",
        "BS1 4DJ",
        "20240910",
    ),
]


@dataclass(frozen=True)
class TruthWord:
    """One drawn word: its label value in :attr:`SCCase.labels`, text and what it is."""

    id: int
    text: str
    kind: str
    """``phi`` (must be redacted), ``clinical`` (must stay) or ``other``."""


@dataclass(frozen=True)
class DoseTruth:
    """The dose table a screenshot shows."""

    series: tuple[tuple[int, float, float], ...]
    """(series number, CTDIvol mGy, DLP mGy·cm) for each irradiating series."""
    total_dlp: float
    legible: bool = True


@dataclass
class SCCase:
    """One corpus object and its answer key."""

    name: str
    klass: str
    """Expected content class value (``dose_report``, ``document``, ``photo``, ``outside_image``)."""
    path: Path
    labels: np.ndarray | None
    """Rows × Columns label image (0 = no text) or ``None`` for objects without pixels."""
    words: list[TruthWord] = field(default_factory=list)
    dose: DoseTruth | None = None
    rotated: int = 0
    """Clockwise rotation applied to the page, degrees."""
    skew: float = 0.0
    flags: tuple[str, ...] = ()
    """Quality flags the object should raise."""
    review: bool = False
    """Whether redaction should send the object to the review list."""

    @property
    def phi(self) -> list[TruthWord]:
        return [w for w in self.words if w.kind == PHI]

    @property
    def clinical(self) -> list[TruthWord]:
        return [w for w in self.words if w.kind == CLINICAL]


class Page:
    """A canvas that records each word's ink in a label image."""

    def __init__(self, size: tuple[int, int], background: int | tuple[int, int, int], mode: str = "RGB"):
        self.img = Image.new(mode, size, background)
        self.draw = ImageDraw.Draw(self.img)
        self.labels = np.zeros((size[1], size[0]), np.int32)
        self.words: list[TruthWord] = []

    def text(
        self,
        x: float,
        y: float,
        text: str,
        fnt: ImageFont.FreeTypeFont,
        fill: int | tuple[int, ...],
        kind: str = OTHER,
    ) -> float:
        """Draw *text* word by word from (x, y); return the x after it (one space included)."""
        space = fnt.getlength(" ")
        for word in text.split(" "):
            if word:
                self.word(x, y, word, fnt, fill, kind)
            x += fnt.getlength(word) + space
        return x

    def word(
        self, x: float, y: float, word: str, fnt: ImageFont.FreeTypeFont, fill: int | tuple[int, ...], kind: str
    ) -> None:
        wid = len(self.words) + 1
        left, top, right, bottom = (int(v) for v in fnt.getbbox(word))
        w, h = right - left + 2, bottom - top + 2
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((-left + 1, -top + 1), word, font=fnt, fill=255)
        ox, oy = round(x) + left - 1, round(y) + top - 1
        m = np.asarray(mask) > 100
        H, W = self.labels.shape
        ys, xs = np.nonzero(m)
        ys, xs = ys + oy, xs + ox
        keep = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        self.labels[ys[keep], xs[keep]] = wid
        self.draw.text((round(x), round(y)), word, font=fnt, fill=fill)
        self.words.append(TruthWord(wid, word, kind))

    def line(
        self, x: float, y: float, parts: list[tuple[str, str]], fnt: ImageFont.FreeTypeFont, fill: int | tuple[int, ...]
    ) -> float:
        """Draw ``(text, kind)`` parts one after the other on one line."""
        for text, kind in parts:
            x = self.text(x, y, text, fnt, fill, kind)
        return x


def _rotate_cw90(img: Image.Image, labels: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    return img.transpose(Image.Transpose.ROTATE_270), np.ascontiguousarray(np.rot90(labels, k=-1))


def _skew(img: Image.Image, labels: np.ndarray, degrees: float, fill: int) -> tuple[Image.Image, np.ndarray]:
    out = img.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=fill, expand=False)
    lab = Image.fromarray(labels.astype(np.int32), "I").rotate(degrees, resample=Image.Resampling.NEAREST, fillcolor=0)
    return out, np.asarray(lab, dtype=np.int32).copy()


def _noise(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    arr = arr + np.random.default_rng(seed).normal(0.0, sigma, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), img.mode)


# --- the objects -----------------------------------------------------------------------------


def _fmt_date(d: str, style: str) -> str:
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    y, m, dd = d[:4], d[4:6], d[6:8]
    return {
        "dmy/": f"{dd}/{m}/{y}",
        "dmy-mon": f"{dd}-{months[int(m) - 1]}-{y}",
        "iso": f"{y}-{m}-{dd}",
        "d mon y": f"{int(dd)} {months[int(m) - 1]} {y}",
        "dmy.": f"{dd}.{m}.{y}",
        "dmy/yy": f"{dd}/{m}/{y[2:]}",
        "ymd/": f"{y}/{m}/{dd}",
    }[style]


DOSE_THEMES: dict[str, tuple[tuple[int, int, int], ...]] = {
    # background, text, column heads, title bar, title
    "dark": ((12, 14, 20), (225, 228, 232), (120, 180, 255), (40, 60, 100), (255, 255, 255)),
    "light": ((236, 238, 242), (20, 22, 30), (30, 70, 160), (200, 210, 228), (10, 20, 60)),
    "blue": ((16, 38, 76), (236, 240, 248), (255, 206, 110), (8, 22, 48), (255, 255, 255)),
}
"""Colour themes of :func:`dose_ge` screens."""


def dose_ge(
    p: Patient,
    *,
    theme: str,
    size: int,
    seed: int,
    values: tuple[tuple[float, float], ...] | None = None,
    total_shown: float | None = None,
    face: str = "DejaVuSans",
) -> tuple[Page, DoseTruth]:
    """A GE-style "Dose Report" screen: identity header, series table, total exam DLP.

    *values* (CTDIvol, DLP per series) replace the random ones; *total_shown* prints a total
    that is not the series' sum (a screen cut off, a series missed by the reader: the sum
    check must fail and the reading go to review).
    """
    rng = np.random.default_rng(seed)
    bg, fg, accent, bar, title = DOSE_THEMES[theme]
    width = int(size * 60)
    page = Page((width, int(size * 30)), bg)
    f = font(size, face)
    fb = font(size + 2, "DejaVuSans-Bold")
    lh = int(size * 1.9)
    page.draw.rectangle((0, 0, width, lh + 4), fill=bar)
    page.text(10, 4, "CT Dose Report", fb, title)
    y = lh + 14
    x = page.line(14, y, [("Patient Name:", OTHER), (f"{p.family}, {p.given}", PHI)], f, fg)
    page.line(max(x + 30, width * 0.5), y, [("Patient ID:", OTHER), (p.patient_id, PHI)], f, fg)
    y += lh
    x = page.line(14, y, [("Accession:", OTHER), (p.accession, PHI)], f, fg)
    page.line(max(x + 30, width * 0.5), y, [("DOB:", OTHER), (_fmt_date(p.birth_date, "dmy-mon"), PHI)], f, fg)
    y += lh
    x = page.line(14, y, [("Exam Date:", OTHER), (_fmt_date(p.study_date, "dmy/"), PHI)], f, fg)
    page.line(max(x + 30, width * 0.5), y, [(p.institution, PHI)], f, fg)
    y += lh
    page.text(14, y, "Exam Description: CT CHEST ABDOMEN PELVIS WITH CONTRAST", f, fg)
    y += int(lh * 1.5)
    cols = [14, int(width * 0.10), int(width * 0.24), int(width * 0.50), int(width * 0.67), int(width * 0.84)]
    for cx, head in zip(
        cols, ["Series", "Type", "Scan Range (mm)", "CTDIvol (mGy)", "DLP (mGy-cm)", "Phantom"], strict=True
    ):
        page.text(cx, y, head, f, accent)
    y += lh
    page.draw.line((10, y - 6, width - 10, y - 6), fill=accent, width=1)
    for cx, cell in zip(cols, ["1", "Scout", "-", "-", "-", "-"], strict=True):
        page.text(cx, y, cell, f, fg)
    y += lh
    series = []
    n_series = int(rng.integers(2, 4)) if values is None else len(values)
    for i in range(n_series):
        ctdi = round(float(rng.uniform(4, 25)), 2)
        dlp = round(float(rng.uniform(150, 900)), 2)
        if values is not None:
            ctdi, dlp = values[i]
        number = i + 2
        series.append((number, ctdi, dlp))
        top, bottom = rng.uniform(5, 150), rng.uniform(300, 600)
        page.text(cols[0], y, str(number), f, fg)
        page.text(cols[1], y, "Helical", f, fg)
        page.text(cols[2], y, f"S{top:.1f}-I{bottom:.1f}", f, fg)
        page.text(cols[3], y, f"{ctdi:.2f}", f, fg, CLINICAL)
        page.text(cols[4], y, f"{dlp:.2f}", f, fg, CLINICAL)
        page.text(cols[5], y, "Body 32", f, fg)
        y += lh
    total = round(sum(s[2] for s in series), 2) if total_shown is None else total_shown
    page.text(cols[2], y + 4, "Total Exam DLP:", f, fg)
    page.text(cols[4], y + 4, f"{total:.2f}", f, fg, CLINICAL)
    return page, DoseTruth(tuple(series), total)


def dose_siemens(p: Patient, *, size: int, seed: int) -> tuple[Page, DoseTruth]:
    """A Siemens-style "Patient Protocol" page (dark): totals first, then the scan table."""
    rng = np.random.default_rng(seed)
    bg, fg = (0, 0, 0), (235, 235, 235)
    width = int(size * 52)
    page = Page((width, int(size * 26)), bg)
    f = font(size, "DejaVuSansMono")
    lh = int(size * 1.8)
    y = 10
    page.text(14, y, "Patient Protocol", font(size + 3, "DejaVuSans-Bold"), fg)
    y += int(lh * 1.4)
    x = page.line(14, y, [("Name:", OTHER), (f"{p.family} {p.given}", PHI)], f, fg)
    page.line(x + size * 2, y, [("ID:", OTHER), (p.patient_id, PHI)], f, fg)
    y += lh
    x = page.line(14, y, [("Birth:", OTHER), (_fmt_date(p.birth_date, "dmy."), PHI)], f, fg)
    page.line(x + size * 2, y, [("Study:", OTHER), (_fmt_date(p.study_date, "iso"), PHI), ("09:41", OTHER)], f, fg)
    y += int(lh * 1.4)
    ctdi_head = round(float(rng.uniform(40, 60)), 2)
    dlp_head = round(float(rng.uniform(600, 900)), 1)
    topo_ctdi, topo_dlp = 0.14, round(float(rng.uniform(3, 9)), 1)
    total = round(topo_dlp + dlp_head, 1)
    page.line(
        14, y, [("Total mAs 2310", OTHER), ("Total DLP", OTHER), (f"{total:.1f}", CLINICAL), ("mGycm", OTHER)], f, fg
    )
    y += int(lh * 1.4)
    cols = [
        14,
        int(width * 0.26),
        int(width * 0.36),
        int(width * 0.45),
        int(width * 0.62),
        int(width * 0.77),
        int(width * 0.89),
    ]
    for cx, head in zip(cols, ["", "Scan", "kV", "mAs", "CTDIvol", "DLP", "TI"], strict=True):
        if head:
            page.text(cx, y, head, f, fg)
    y += lh
    rows = [("Topogram", 1, 120, "35", topo_ctdi, topo_dlp, "6.9"), ("Head", 2, 120, "280", ctdi_head, dlp_head, "1.0")]
    for name, n, kv, mas, ctdi, dlp, ti in rows:
        page.text(cols[0], y, name, f, fg)
        page.text(cols[1], y, str(n), f, fg)
        page.text(cols[2], y, str(kv), f, fg)
        page.text(cols[3], y, mas, f, fg)
        page.text(cols[4], y, f"{ctdi:.2f}", f, fg, CLINICAL)
        page.text(cols[5], y, f"{dlp:.1f}", f, fg, CLINICAL)
        page.text(cols[6], y, ti, f, fg)
        y += lh
    return page, DoseTruth(((1, topo_ctdi, topo_dlp), (2, ctdi_head, dlp_head)), total)


def scanned_form(p: Patient, *, kind: str, seed: int) -> Page:
    """An A4 page at 75 dpi: a consent form or an outside report with typed identity and numbers."""
    rng = np.random.default_rng(seed)
    dpi = 75
    page = Page((int(8.27 * dpi), int(11.69 * dpi)), 248, mode="L")
    f = font(13, "DejaVuSerif")
    fb = font(15, "DejaVuSerif-Bold")
    ink = 25
    lh = 22
    y = 40
    page.text(40, y, p.institution.upper(), fb, ink, PHI)
    y += lh + 8
    title = "CONSENT FOR CONTRAST ENHANCED CT" if kind == "consent" else "OUTSIDE LABORATORY REPORT"
    page.text(40, y, title, fb, ink)
    y += lh + 12
    given, family = p.given.title(), p.family.title()
    page.line(40, y, [("Patient name:", OTHER), (f"{given} {family}", PHI)], f, ink)
    y += lh
    page.line(40, y, [("Date of birth:", OTHER), (_fmt_date(p.birth_date, "dmy/"), PHI)], f, ink)
    y += lh
    page.line(40, y, [("Hospital number:", OTHER), (p.patient_id, PHI)], f, ink)
    y += lh
    nhs = f"{p.nhs[:3]} {p.nhs[3:6]} {p.nhs[6:]}"
    page.line(40, y, [("NHS number:", OTHER), (nhs, PHI)], f, ink)
    y += lh
    page.line(40, y, [("Address:", OTHER), (f"{p.address} {p.postcode}", PHI)], f, ink)
    y += lh
    page.line(40, y, [("Telephone:", OTHER), (p.phone, PHI)], f, ink)
    y += lh + 12
    if kind == "consent":
        # the clinician who took consent: a person's name no header holds (label + title + name)
        label, title, name = CLINICIANS[seed % len(CLINICIANS)]
        page.line(40, y, [(label, OTHER), (title, OTHER), (name, PHI)], f, ink)
        y += lh
        body = [
            [("I agree to an intravenous contrast injection of", OTHER), ("100", CLINICAL), ("mL.", OTHER)],
            [
                ("My kidney function: eGFR", OTHER),
                ("72", CLINICAL),
                ("mL/min, creatinine", OTHER),
                ("88", CLINICAL),
                ("umol/L.", OTHER),
            ],
            [("Weight", OTHER), ("81", CLINICAL), ("kg. No known allergy to iodine.", OTHER)],
            [("The risks have been explained to me and I have", OTHER)],
            [("had the chance to ask questions.", OTHER)],
        ]
    else:
        hb = round(float(rng.uniform(110, 150)), 0)
        body = [
            [("Haemoglobin", OTHER), (f"{hb:.0f}", CLINICAL), ("g/L", OTHER)],
            [("Creatinine", OTHER), ("104", CLINICAL), ("umol/L", OTHER)],
            [("eGFR", OTHER), ("61", CLINICAL), ("mL/min", OTHER)],
            [("Potassium", OTHER), ("4.2", CLINICAL), ("mmol/L", OTHER)],
            [("Sodium", OTHER), ("139", CLINICAL), ("mmol/L", OTHER)],
        ]
    for parts in body:
        page.line(40, y, parts, f, ink)
        y += lh
    y += 20
    page.line(
        40,
        y,
        [("Signed:", OTHER), ("____________", OTHER), ("Date:", OTHER), (_fmt_date(p.study_date, "dmy/"), PHI)],
        f,
        ink,
    )
    # paper texture
    arr = np.asarray(page.img, dtype=np.int16) - rng.integers(0, 10, size=page.labels.shape)
    page.img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return page


CLINICIANS = [
    ("Clinician:", "Dr", "Priya Raman"),
    ("Consent taken by:", "Dr", "Tomasz Nowak"),
    ("Doctor:", "", "Helen Achterberg"),
    ("Signed by:", "Mr", "Oluwaseun Adeyemi"),
]
"""Label, title and name of the clinician on a consent form (the name is PHI, in no header)."""


def _skin(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([200 - 30 * y / height, 150 - 25 * y / height + 10 * np.sin(x / 37), 120 - 20 * x / width], -1)
    cx, cy = width * 0.42, height * 0.55
    lesion = np.exp(-(((x - cx) / (width * 0.12)) ** 2 + ((y - cy) / (height * 0.09)) ** 2))
    base += lesion[..., None] * np.array([-40.0, -90.0, -70.0])
    base += rng.normal(0, 6, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def photo(p: Patient | None, *, label: bool, stamp: bool, seed: int) -> Page:
    """A wound photograph, optionally with a paper label (name, MRN, date) and a camera date stamp."""
    width, height = 640, 480
    page = Page((width, height), (0, 0, 0))
    page.img = Image.fromarray(_skin(width, height, seed), "RGB")
    page.draw = ImageDraw.Draw(page.img)
    if label and p is not None:
        page.draw.rectangle((360, 40, 610, 150), fill=(246, 244, 236), outline=(180, 180, 170))
        f = font(20, "DejaVuSans-Bold")
        page.text(374, 52, f"{p.given[0]} {p.family}", f, (20, 20, 60), PHI)
        page.line(374, 84, [("MRN", OTHER), (p.patient_id, PHI)], f, (20, 20, 60))
        page.text(374, 116, _fmt_date(p.study_date, "dmy/yy"), f, (20, 20, 60), PHI)
    if stamp and p is not None:
        f = font(22, "DejaVuSansMono-Bold")
        page.text(430, 440, _fmt_date(p.study_date, "ymd/"), f, (255, 150, 20), PHI)
    return page


def outside_image(p: Patient, *, bits: int, seed: int) -> tuple[Page, np.ndarray]:
    """A CT-like slice from another hospital with identity and technique in the corners."""
    rng = np.random.default_rng(seed)
    size = 512
    page = Page((size, size), 0, mode="L")
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    body = (((x - 256) / 200) ** 2 + ((y - 270) / 150) ** 2) < 1
    organ = (((x - 300) / 60) ** 2 + ((y - 250) / 45) ** 2) < 1
    bone = (((x - 256) / 18) ** 2 + ((y - 370) / 18) ** 2) < 1
    grey = np.where(body, 95.0, 0.0) + np.where(organ, 25.0, 0.0) + np.where(bone, 110.0, 0.0)
    grey = grey + rng.normal(0, 7, grey.shape) * body
    page.img = Image.fromarray(np.clip(grey, 0, 230).astype(np.uint8), "L")
    page.draw = ImageDraw.Draw(page.img)
    f = font(13, "DejaVuSans")
    white = 255
    lh = 17
    page.text(6, 6, f"{p.family}, {p.given}", f, white, PHI)
    page.text(6, 6 + lh, p.patient_id, f, white, PHI)
    page.text(6, 6 + 2 * lh, _fmt_date(p.birth_date, "d mon y"), f, white, PHI)
    inst = p.institution
    page.text(size - 8 - f.getlength(inst), 6, inst, f, white, PHI)
    acc = f"Acc {p.accession}"
    x = size - 8 - f.getlength(acc)
    page.line(x, 6 + lh, [("Acc", OTHER), (p.accession, PHI)], f, white)
    d = _fmt_date(p.study_date, "d mon y")
    page.text(size - 8 - f.getlength(d), 6 + 2 * lh, d, f, white, PHI)
    page.text(6, size - 8 - 2 * lh, "kV 120 mA 250", f, white)
    page.text(6, size - 8 - lh, "Slice 3.0 mm", f, white)
    wl = "W 400 L 40"
    page.text(size - 8 - f.getlength(wl), size - 8 - lh, wl, f, white)
    arr = np.asarray(page.img, dtype=np.uint8)
    if bits > 8:
        arr = (arr.astype(np.uint32) * ((1 << bits) - 1) // 255).astype(np.uint16)
    return page, arr


# --- writing DICOM ---------------------------------------------------------------------------


def _wrap(
    directory: Path,
    name: str,
    image_file: Path,
    p: Patient,
    *,
    iod: CaptureIOD = CaptureIOD.SC,
    kind: SourceKind,
    conversion: ConversionType,
    burned_in: bool | None,
    series_description: str | None,
    modality: str | None,
    extra: dict[str, object] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    patient = PatientStudy(
        patient_id=p.patient_id,
        patient_name=p.dicom_name,
        patient_birth_date=p.birth_date,
        patient_sex=p.sex,
        study_date=p.study_date,
        study_time="101500",
        accession_number=p.accession,
        referring_physician_name="HOUSE^GREGORY",
    )
    options = WrapOptions(
        iod=iod,
        kind=kind,
        conversion_type=conversion,
        burned_in_annotation=burned_in,
        series_description=series_description,
        modality=modality,
    )
    out = directory / "dcm"
    report = wrap_paths([image_file], out, patient=patient, options=options, overwrite=True)
    if report.failed:
        raise RuntimeError(report.failed)
    path = report.written[0].path
    ds = dcmread(path)
    ds.InstitutionName = p.institution
    ds.PatientAddress = f"{p.address} {p.postcode}"
    ds.PatientTelephoneNumbers = p.phone
    ds.OtherPatientIDs = p.nhs
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    for keyword in drop:
        if keyword in ds:
            del ds[keyword]
    final = directory / f"{name}.dcm"
    ds.save_as(final, enforce_file_format=True)
    path.unlink()
    return final


def write_dose_screen(
    directory: Path,
    name: str,
    *,
    patient: int = 0,
    theme: str = "light",
    size: int = 15,
    seed: int = 7,
    values: tuple[tuple[float, float], ...] | None = None,
    total_shown: float | None = None,
) -> SCCase:
    """One GE-style dose screen as a CT Secondary Capture, with its answer key (see :func:`dose_ge`)."""
    directory = Path(directory)
    (directory / "src").mkdir(parents=True, exist_ok=True)
    p = PATIENTS[patient]
    page, truth = dose_ge(p, theme=theme, size=size, seed=seed, values=values, total_shown=total_shown)
    f = _save_png(page.img, directory / "src" / f"{name}.png")
    path = _wrap(
        directory,
        name,
        f,
        p,
        kind=SourceKind.SCREENSHOT,
        conversion=ConversionType.WSD,
        burned_in=True,
        series_description="Dose Report",
        modality="CT",
    )
    return SCCase(name, "dose_report", path, page.labels, page.words, truth)


def worklist_screen(p: Patient, *, size: int = 14, seed: int = 0) -> Page:
    """A RIS worklist screenshot (no dose numbers): the patient and three others, each row PHI."""
    rng = np.random.default_rng(seed)
    bg, fg, head = (246, 247, 250), (25, 28, 36), (30, 60, 120)
    width = int(size * 64)
    page = Page((width, int(size * 22)), bg)
    f, fb = font(size, "DejaVuSans"), font(size + 1, "DejaVuSans-Bold")
    lh = int(size * 1.9)
    page.draw.rectangle((0, 0, width, lh + 6), fill=(214, 222, 236))
    page.text(10, 5, "RIS Worklist", fb, head)
    page.text(width * 0.55, 5, "Station: CT1 User: radiographer Logout", f, head)
    y = lh + 16
    page.text(14, y, "Filter: Scheduled today Modality: CT Status: all Refresh", f, fg)
    y += int(lh * 1.4)
    cols = [14, int(width * 0.14), int(width * 0.36), int(width * 0.50), int(width * 0.64), int(width * 0.86)]
    for cx, h in zip(cols, ["Scheduled", "Patient", "ID", "Accession", "Examination", "Status"], strict=True):
        page.text(cx, y, h, fb, head)
    y += lh
    others = [q for q in PATIENTS if q is not p][:3]
    for n, q in enumerate([p, *others]):
        hh, mm = 9 + n, int(rng.integers(0, 6)) * 10
        page.text(cols[0], y, f"{hh:02d}:{mm:02d}", f, fg)
        page.text(cols[1], y, f"{q.family}, {q.given.title()}", f, fg, PHI)
        page.text(cols[2], y, q.patient_id, f, fg, PHI)
        page.text(cols[3], y, q.accession, f, fg, PHI)
        page.text(cols[4], y, ["CT HEAD", "CT CHEST", "CT ABDOMEN", "CT KUB"][n], f, fg)
        page.text(cols[5], y, ["Arrived", "Booked", "Completed", "Reported"][n], f, fg)
        y += lh
    return page


def write_worklist_screen(directory: Path, name: str, *, patient: int = 0, seed: int = 0) -> SCCase:
    """A RIS worklist screenshot as a Secondary Capture (no description: the class comes from the pixels)."""
    directory = Path(directory)
    (directory / "src").mkdir(parents=True, exist_ok=True)
    p = PATIENTS[patient]
    page = worklist_screen(p, seed=seed)
    f = _save_png(page.img, directory / "src" / f"{name}.png")
    path = _wrap(
        directory,
        name,
        f,
        p,
        kind=SourceKind.SCREENSHOT,
        conversion=ConversionType.WSD,
        burned_in=True,
        series_description=None,
        modality="OT",
    )
    return SCCase(name, "screenshot", path, page.labels, page.words)


def _save_png(img: Image.Image, path: Path) -> Path:
    img.save(path, "PNG")
    return path


def build_sc_corpus(directory: Path) -> list[SCCase]:
    """Write the corpus under *directory* and return each object with its answer key."""
    directory = Path(directory)
    (directory / "src").mkdir(parents=True, exist_ok=True)
    src = directory / "src"
    P1, P2, P3, P4 = PATIENTS
    cases: list[SCCase] = []

    def add_dose(
        name: str,
        page: Page,
        truth: DoseTruth,
        p: Patient,
        *,
        rotate: bool = False,
        description: str | None,
        modality: str,
        extra: dict[str, object] | None = None,
    ) -> None:
        img, labels = page.img, page.labels
        if rotate:
            img, labels = _rotate_cw90(img, labels)
        f = _save_png(img, src / f"{name}.png")
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.SCREENSHOT,
            conversion=ConversionType.WSD,
            burned_in=True,
            series_description=description,
            modality=modality,
            extra=extra,
        )
        cases.append(
            SCCase(
                name,
                "dose_report",
                path,
                labels,
                page.words,
                truth,
                rotated=90 if rotate else 0,
                flags=("rotated",) if rotate else (),
            )
        )

    page, truth = dose_ge(P1, theme="dark", size=15, seed=1)
    add_dose(
        "dose_ge_dark",
        page,
        truth,
        P1,
        description="Dose Report",
        modality="CT",
        extra={"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]},
    )
    page, truth = dose_ge(P2, theme="light", size=12, seed=2)
    add_dose("dose_ge_light_small", page, truth, P2, description=None, modality="OT")
    page, truth = dose_siemens(P3, size=12, seed=3)
    add_dose("dose_siemens_small", page, truth, P3, description="Patient Protocol", modality="CT")
    page, truth = dose_ge(P4, theme="light", size=14, seed=4)
    add_dose("dose_ge_rotated", page, truth, P4, rotate=True, description=None, modality="OT")

    def add_form(
        name: str, p: Patient, kind: str, skew: float, seed: int, *, conversion: ConversionType, description: str | None
    ) -> None:
        page = scanned_form(p, kind=kind, seed=seed)
        img, labels = _skew(page.img, page.labels, skew, 248)
        img = _noise(img, 6.0, seed)
        f = src / f"{name}.jpg"
        img.save(f, "JPEG", quality=20)
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.SCAN,
            conversion=conversion,
            burned_in=True,
            series_description=description,
            modality="OT",
        )
        cases.append(
            SCCase(
                name,
                "document",
                path,
                labels,
                page.words,
                skew=skew,
                flags=("heavily_compressed",) + (("rotated",) if abs(skew) >= 1.5 else ()),
            )
        )

    add_form("form_consent", P1, "consent", 2.5, 11, conversion=ConversionType.SD, description="Consent form")
    add_form("form_lab_report", P2, "report", -3.0, 12, conversion=ConversionType.DI, description=None)
    add_form("form_referral", P4, "consent", 1.0, 13, conversion=ConversionType.SI, description=None)

    def add_photo(
        name: str,
        p: Patient,
        *,
        label: bool,
        stamp: bool,
        seed: int,
        iod: CaptureIOD,
        description: str | None,
        modality: str | None,
        burned_in: bool,
    ) -> None:
        page = photo(p, label=label, stamp=stamp, seed=seed)
        f = src / f"{name}.png"
        _save_png(page.img, f)
        path = _wrap(
            directory,
            name,
            f,
            p,
            iod=iod,
            kind=SourceKind.PHOTO,
            conversion=ConversionType.DI,
            burned_in=burned_in,
            series_description=description,
            modality=modality,
        )
        cases.append(SCCase(name, "photo", path, page.labels, page.words, review=True))

    add_photo(
        "photo_label_vl",
        P1,
        label=True,
        stamp=True,
        seed=21,
        iod=CaptureIOD.VL_PHOTO,
        description="Wound left leg",
        modality="XC",
        burned_in=True,
    )
    add_photo(
        "photo_stamp_sc",
        P3,
        label=False,
        stamp=True,
        seed=22,
        iod=CaptureIOD.SC,
        description=None,
        modality="OT",
        burned_in=True,
    )
    add_photo(
        "photo_label_sc",
        P2,
        label=True,
        stamp=False,
        seed=24,
        iod=CaptureIOD.SC,
        description="Clinical photo",
        modality="OT",
        burned_in=True,
    )
    add_photo(
        "photo_no_text",
        P4,
        label=False,
        stamp=False,
        seed=23,
        iod=CaptureIOD.SC,
        description=None,
        modality="OT",
        burned_in=True,
    )

    # a small, out-of-focus phone photo: insufficient for diagnosis
    page = photo(None, label=False, stamp=False, seed=25)
    small = page.img.resize((200, 150), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(2.5))
    f = _save_png(small, src / "photo_blurry_small.png")
    path = _wrap(
        directory,
        "photo_blurry_small",
        f,
        P1,
        iod=CaptureIOD.VL_PHOTO,
        kind=SourceKind.PHOTO,
        conversion=ConversionType.DI,
        burned_in=False,
        series_description="Wound photo",
        modality="XC",
    )
    cases.append(
        SCCase(
            "photo_blurry_small",
            "photo",
            path,
            np.zeros((150, 200), np.int32),
            [],
            flags=("insufficient_for_diagnosis",),
            review=True,
        )
    )

    def add_outside(
        name: str, p: Patient, bits: int, seed: int, *, conversion: ConversionType, description: str | None
    ) -> None:
        page, arr = outside_image(p, bits=bits, seed=seed)
        f = src / f"{name}.png"
        Image.fromarray(arr).save(f, "PNG")
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.FILM if conversion is ConversionType.DF else SourceKind.IMAGE,
            conversion=conversion,
            burned_in=True,
            series_description=description,
            modality="OT",
        )
        cases.append(SCCase(name, "outside_image", path, page.labels, page.words))

    add_outside("outside_ct_16bit", P1, 16, 31, conversion=ConversionType.DF, description="Outside study import")
    add_outside("outside_ct_8bit", P3, 8, 32, conversion=ConversionType.DI, description=None)

    from tests.factories_write import three_page_pdf

    pdf = three_page_pdf(src, "outside_report.pdf")
    path = _wrap(
        directory,
        "report_pdf",
        pdf,
        P2,
        iod=CaptureIOD.PDF,
        kind=SourceKind.DOCUMENT,
        conversion=ConversionType.SD,
        burned_in=None,
        series_description=None,
        modality=None,
    )
    cases.append(SCCase("report_pdf", "document", path, None, review=True))
    return cases


def build_bench_corpus(directory: Path) -> list[SCCase]:
    """The test corpus (:func:`build_sc_corpus`) and 29 more objects: 44 in all (43 with pixels), for ``make bench``.

    The additions vary what a hospital's archive varies: GE-style dose screens in three
    colour themes, five font sizes and four DejaVu faces, a third of them captured as JPEG
    (quality 55–75); Siemens-style pages at three sizes; consent forms and outside reports
    scanned with skew from −3° to 3°, noise σ 3–8 and JPEG quality 15–90; wound photographs
    with labels and date stamps; outside images of 8 and 16 bits; RIS worklist screenshots.
    Too slow for the tests (about 45 OCR passes); the bench alone uses it.
    """
    directory = Path(directory)
    cases = build_sc_corpus(directory)
    src = directory / "src"
    faces = ("DejaVuSans", "DejaVuSansCondensed", "DejaVuSansMono", "DejaVuSerif")
    for i in range(10):
        p = PATIENTS[i % len(PATIENTS)]
        theme = ("dark", "light", "blue")[i % 3]
        size = (12, 13, 14, 16, 18)[i % 5]
        page, truth = dose_ge(p, theme=theme, size=size, seed=100 + i, face=faces[i % len(faces)])
        name = f"bench_dose_ge_{theme}_{size}px_{i}"
        if i % 3 == 1:
            f = src / f"{name}.jpg"
            page.img.save(f, "JPEG", quality=55 + 10 * (i % 3))
        else:
            f = _save_png(page.img, src / f"{name}.png")
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.SCREENSHOT,
            conversion=ConversionType.WSD,
            burned_in=True,
            series_description=("Dose Report", None, "Dose Info")[i % 3],
            modality=("CT", "OT", "CT")[i % 3],
        )
        cases.append(SCCase(name, "dose_report", path, page.labels, page.words, truth))
    for i, size in enumerate((11, 14, 16)):
        p = PATIENTS[(i + 1) % len(PATIENTS)]
        page, truth = dose_siemens(p, size=size, seed=200 + i)
        name = f"bench_dose_siemens_{size}px"
        f = _save_png(page.img, src / f"{name}.png")
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.SCREENSHOT,
            conversion=ConversionType.WSD,
            burned_in=True,
            series_description="Patient Protocol" if i != 1 else None,
            modality="CT",
        )
        cases.append(SCCase(name, "dose_report", path, page.labels, page.words, truth))
    for i, (skew, quality, sigma) in enumerate(
        ((-3.0, 15, 8.0), (-1.5, 25, 6.0), (0.5, 35, 3.0), (2.0, 50, 5.0), (3.0, 70, 7.0), (-2.5, 90, 4.0))
    ):
        p = PATIENTS[i % len(PATIENTS)]
        kind = "consent" if i % 2 == 0 else "report"
        page = scanned_form(p, kind=kind, seed=300 + i)
        img, labels = _skew(page.img, page.labels, skew, 248)
        img = _noise(img, sigma, 300 + i)
        name = f"bench_form_{kind}_{i}"
        f = src / f"{name}.jpg"
        img.save(f, "JPEG", quality=quality)
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.SCAN,
            conversion=ConversionType.SD if i % 3 == 0 else ConversionType.SI,
            burned_in=True,
            series_description=("Consent form", None, "Scanned document")[i % 3],
            modality="OT",
        )
        cases.append(SCCase(name, "document", path, labels, page.words, skew=skew))
    for i, (label, stamp) in enumerate(((True, True), (True, False), (False, True), (True, True))):
        p = PATIENTS[(i + 2) % len(PATIENTS)]
        page = photo(p, label=label, stamp=stamp, seed=400 + i)
        name = f"bench_photo_{i}"
        f = _save_png(page.img, src / f"{name}.png")
        iod = CaptureIOD.VL_PHOTO if i % 2 == 0 else CaptureIOD.SC
        path = _wrap(
            directory,
            name,
            f,
            p,
            iod=iod,
            kind=SourceKind.PHOTO,
            conversion=ConversionType.DI,
            burned_in=True,
            series_description=("Wound photo", None, "Skin lesion", None)[i],
            modality="XC" if iod is CaptureIOD.VL_PHOTO else "OT",
        )
        cases.append(SCCase(name, "photo", path, page.labels, page.words, review=True))
    for i, bits in enumerate((8, 16, 12)):
        p = PATIENTS[(i + 3) % len(PATIENTS)]
        page, arr = outside_image(p, bits=bits, seed=500 + i)
        name = f"bench_outside_{bits}bit"
        f = src / f"{name}.png"
        Image.fromarray(arr).save(f, "PNG")
        path = _wrap(
            directory,
            name,
            f,
            p,
            kind=SourceKind.IMAGE,
            conversion=ConversionType.DI if i != 1 else ConversionType.DF,
            burned_in=True,
            series_description=("Outside study import", None, "Imported CD")[i],
            modality="OT",
        )
        cases.append(SCCase(name, "outside_image", path, page.labels, page.words))
    for i in range(3):
        cases.append(write_worklist_screen(directory, f"bench_worklist_{i}", patient=i, seed=600 + i))
    return cases


def render_to_png(case: SCCase, path: Path) -> None:
    """The object's pixels as an 8-bit PNG (for looking at the corpus)."""
    ds = dcmread(case.path)
    arr = ds.pixel_array
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) * 255 / max(int(arr.max()), 1)).astype(np.uint8)
    Image.fromarray(arr).save(path)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# --- scoring against the answer key ---------------------------------------------------------


@dataclass
class RedactionScore:
    """How a redaction did on one case: PHI words covered, clinical numbers left alone."""

    phi_total: int = 0
    phi_redacted: int = 0
    clinical_total: int = 0
    clinical_kept: int = 0
    missed: list[str] = field(default_factory=list)
    clinical_lost: list[str] = field(default_factory=list)

    def __iadd__(self, other: RedactionScore) -> Self:
        self.phi_total += other.phi_total
        self.phi_redacted += other.phi_redacted
        self.clinical_total += other.clinical_total
        self.clinical_kept += other.clinical_kept
        self.missed += other.missed
        self.clinical_lost += other.clinical_lost
        return self


def redaction_mask(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def score_redaction(case: SCCase, mask: np.ndarray, *, covered: float = 0.95, touched: float = 0.05) -> RedactionScore:
    """A PHI word counts as redacted when ≥ *covered* of its ink is under *mask*; a clinical
    number counts as kept when ≤ *touched* of its ink is."""
    score = RedactionScore()
    if case.labels is None:
        return score
    ids = case.labels.ravel()
    m = mask.ravel()
    ink = np.bincount(ids, minlength=len(case.words) + 1)
    under = np.bincount(ids, weights=m.astype(np.float64), minlength=len(case.words) + 1)
    for w in case.words:
        if ink[w.id] == 0:
            continue  # drawn outside the image
        share = under[w.id] / ink[w.id]
        if w.kind == PHI:
            score.phi_total += 1
            if share >= covered:
                score.phi_redacted += 1
            else:
                score.missed.append(f"{case.name}:{w.text}({share:.2f})")
        elif w.kind == CLINICAL:
            score.clinical_total += 1
            if share <= touched:
                score.clinical_kept += 1
            else:
                score.clinical_lost.append(f"{case.name}:{w.text}({share:.2f})")
    return score


def leaked_words(case: SCCase, recognised: list[tuple[str, tuple[int, int, int, int]]]) -> list[str]:
    """Answer-key PHI words that a second OCR pass over the redacted image still reads there.

    *recognised* holds (text, box) of every word the second pass read. A PHI word leaks when
    a recognised word over its ink reads as it (OCR errors allowed).
    """
    from dicomlake.deid.pixels import fuzzy_equal

    if case.labels is None:
        return []
    leaks = []
    by_id = {w.id: w for w in case.phi if len(w.text.strip(",.:")) >= 3}  # an initial says nothing alone
    for text, (x0, y0, x1, y1) in recognised:
        under = np.unique(case.labels[y0:y1, x0:x1])
        for wid in under:
            w = by_id.get(int(wid))
            if w is not None and fuzzy_equal(text, w.text):
                leaks.append(f"{case.name}:{w.text}")
    return sorted(set(leaks))
