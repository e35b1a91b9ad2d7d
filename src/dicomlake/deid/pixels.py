"""Burned-in PHI: find identifying text in pixels and write redacted derived objects.

PS3.15 E.1.1 leaves text burned into pixels to the Clean Pixel Data Option (113101).
Seed 000: screenshots, scanned forms and photographs carry names, IDs and dates in their
pixels. A recognised word (:mod:`dicomlake.extract.ocr`) is PHI when

- it matches one of the instance's own identifying header values — names, IDs, accession,
  address, telephone, institution, and the birth and study dates in the many ways dates
  are printed — allowing OCR errors (confusable glyphs, one or two edits);
- a pattern matches it: dates, NHS numbers (ten digits, plain or grouped 3-3-4, with a valid
  modulus-11 check digit; never digits strung across decimal numbers), phone numbers, UK
  postcodes;
- it follows a label on its line ("Name:", "DOB:", "MRN", "Hospital number:", …);
- or it is a capitalised name after a person label ("Clinician:", "Consent taken by:",
  "Witness") or a title (Dr, Mr, Mrs, Prof): the clinician on a consent form is in no header.

Policy by content class: dose reports and documents lose only PHI (clinical numbers
stay); photographs, outside images, application screenshots (RIS worklists: other
patients) and unknown content lose all text. Uncertain cases go
to a review list: every photograph, a low orientation confidence on a page with text,
Burned In Annotation YES with no text found, unknown content, and objects without pixels.

Redacted objects are derived images (:func:`dicomlake.write.derive_image`): boxes filled
with displayed black, Burned In Annotation NO, the derivation recorded (Clean Pixel Data,
DCM 113101), and — with a :class:`~dicomlake.deid.Deidentifier` — the header
de-identified and the new UIDs taken from its keyed UID map.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from dicomlake.errors import DeidError, DicomlakeError
from dicomlake.extract.ocr import OcrResult, Variant, Word, ocr
from dicomlake.extract.sc_class import ContentClass
from dicomlake.security.phi import (  # the shared PHI detector (issue 20)
    _BY_VERBS,
    _DATE_PATTERNS,
    _LABEL_NEEDS_COLON,
    _LABELS,
    _NHS,
    _NOT_NAMES,
    _NUMBER_LABEL_PREFIX,
    _PERSON_LABELS,
    _PHONE,
    _POSTCODE,
    _TITLES,
    Term,
    _digitised,
    _edits,
    _name_like,
    _norm,
    _plausible_date,
    fuzzy_equal,
    identifying_terms,
    is_decimal_number,
    is_dose_word,
    matches_term,
    nhs_number_valid,
    numeric_identifier,
    skeleton,
)
from dicomlake.security.phi import date_forms as date_forms  # re-exported for sc and its tests

if TYPE_CHECKING:
    from dicomlake.deid.engine import Deidentifier

CLEAN_PIXEL_DATA = Code("113101", "DCM", "Clean Pixel Data Option")
"""PS3.16 CID 7050 code recorded as the derivation and as a de-identification method."""
MIN_CONF_ALL_TEXT = 30.0
"""Words below this tesseract confidence are not treated as text under the all-text policy
(photo texture read as letters). Default: 30."""
MIN_ORIENTATION_CONFIDENCE = 2.0
"""Below this, a page with text goes to review. Default: 2.0."""
PAD_FRACTION = 0.2
"""Boxes grow by this fraction of the text height on each side (at least 2 pixels, at most
:data:`PAD_MAX`). The text height is the word's height in the upright page, else the box's
shorter side: on a page turned 90° a box's height is the word's length. Default: 0.2."""
PAD_MAX = 8
"""Largest padding in pixels on each side. Default: 8."""


@dataclass(frozen=True)
class PhiHit:
    """A word judged PHI and why."""

    word: Word
    reason: str
    """``header:<Keyword>``, ``pattern:<date|nhs|phone|postcode>``, ``label:<LABEL>`` or ``policy:all-text``."""


def _line_text(line: Sequence[Word]) -> tuple[str, list[tuple[int, int]]]:
    """Words joined by single spaces, with each word's character span."""
    spans, parts, pos = [], [], 0
    for w in line:
        spans.append((pos, pos + len(w.text)))
        parts.append(w.text)
        pos += len(w.text) + 1
    return " ".join(parts), spans


def _words_in_span(spans: list[tuple[int, int]], start: int, end: int) -> list[int]:
    return [i for i, (a, b) in enumerate(spans) if a < end and b > start]


def _is_label(words: Sequence[Word], i: int) -> bool:
    raw = words[i].text
    tok = raw.upper().rstrip(":").rstrip(".")
    colon = raw.endswith(":")
    if tok in ("NUMBER", "NO", "NUM", "#"):
        return i > 0 and _norm(words[i - 1].text) in _NUMBER_LABEL_PREFIX
    if tok in ("BIRTH",):
        return True
    if tok in _LABEL_NEEDS_COLON:
        return colon or (tok == "ID" and i > 0 and _norm(words[i - 1].text) in ("PATIENT", "HOSPITAL"))
    return tok in _LABELS or tok.replace(".", "") in ("DOB",)


def find_phi(result: OcrResult, terms: Sequence[Term], *, passes: Iterable[int] | None = None) -> list[PhiHit]:
    """Words of *result* that are PHI by header match, pattern or label (all OCR passes)."""
    hits: dict[int, PhiHit] = {}
    all_words = result.words
    index = {id(w): n for n, w in enumerate(all_words)}
    distinct = [t for t in terms if t.distinctive]
    # A decimal number on a page with dose labels or units (CTDIvol, DLP, mGy) is a clinical
    # value: never matched to a header value ("13.21" is not the phone group "0321").
    dose_page = any(is_dose_word(w.text) for w in all_words)
    clinical = {id(w) for w in all_words if dose_page and is_decimal_number(w.text)}
    phrases = [t for t in terms if " " in t.text.strip() or len(t.text) > 12]
    pass_numbers = sorted({w.line_key[0] for w in all_words}) if passes is None else list(passes)

    def hit(w: Word, reason: str) -> None:
        n = index[id(w)]
        if n not in hits:
            hits[n] = PhiHit(w, reason)

    for p in pass_numbers:
        for line in result.lines(pass_no=p):
            text, spans = _line_text(line)
            # 1. header values, token by token
            for w in line:
                if id(w) in clinical:
                    continue
                for t in distinct:
                    if " " not in t.text and matches_term(w.text, t.text):
                        hit(w, f"header:{t.source}")
                        break
            # 2. header phrases (multi-word values, dates printed with spaces, grouped numbers)
            sk_words = [skeleton(w.text) for w in line]
            for t in phrases:
                target = skeleton(t.text)
                if len(target) < 5:
                    continue
                # all-digit values (telephone numbers, dates in figures): exact after folding
                limit = 0 if numeric_identifier(t.text) else max(1, len(target) // 6)
                for i in range(len(line)):
                    acc = ""
                    for j in range(i, min(len(line), i + 8)):
                        if id(line[j]) in clinical:
                            break
                        acc += sk_words[j]
                        if len(acc) > len(target) + limit:
                            break
                        if abs(len(acc) - len(target)) <= limit and _edits(acc, target, limit) <= limit:
                            for k in range(i, j + 1):
                                hit(line[k], f"header:{t.source}")
                            break
            # 3. patterns, on the line text with digit-like letters folded
            dtext = _digitised(text)
            for pat in _DATE_PATTERNS:
                for m in pat.finditer(dtext):
                    if not _plausible_date(m.group(), dtext, m.end()):
                        continue
                    for k in _words_in_span(spans, m.start(), m.end()):
                        hit(line[k], "pattern:date")
            for m in _NHS.finditer(dtext):
                if nhs_number_valid(re.sub(r"\D", "", m.group())):
                    for k in _words_in_span(spans, m.start(), m.end()):
                        hit(line[k], "pattern:nhs")
            for m in _PHONE.finditer(dtext):
                for k in _words_in_span(spans, m.start(), m.end()):
                    hit(line[k], "pattern:phone")
            for m in _POSTCODE.finditer(text):
                if any(c.isdigit() for c in m.group()) and any(c.isalpha() for c in m.group()[-2:]):
                    for k in _words_in_span(spans, m.start(), m.end()):
                        hit(line[k], "pattern:postcode")
            # 4. words after a label, to a wide gap or the next label (at most 6)
            for i in range(len(line)):
                if not _is_label(line, i):
                    continue
                label = line[i].text.upper().rstrip(":")
                prev = line[i]
                for j in range(i + 1, len(line)):
                    w = line[j]
                    gap = w.upright[0] - prev.upright[2]
                    height = max(prev.upright[3] - prev.upright[1], w.upright[3] - w.upright[1], 1.0)
                    if gap > 2.5 * height or _is_label(line, j) or j - i > 6:  # at most 6 words taken
                        break
                    if w.text.endswith(":") and len(w.text) > 2:
                        break
                    hit(w, f"label:{label}")
                    prev = w
            # 5. person names: after a person label ("Clinician:", "Consent taken by:") or a title
            for i in range(len(line)):
                start = _person_name_start(line, i)
                if start is None:
                    continue
                taken = 0
                for j in range(start, min(len(line), start + 4)):
                    w = line[j]
                    if j > start and w.upright[0] - line[j - 1].upright[2] > 2.5 * max(
                        w.upright[3] - w.upright[1], 1.0
                    ):
                        break
                    if not _name_like(w.text) or w.text.endswith(":") or _is_label(line, j):
                        break
                    if w.text.upper().rstrip(".") in _TITLES:
                        continue
                    if w.text.upper().strip(",.;") in _NOT_NAMES:
                        break
                    hit(w, "name:" + line[i].text.upper().rstrip(":."))
                    taken += 1
                    if w.text.endswith((",", ";")) and taken >= 2:
                        break
    return [hits[n] for n in sorted(hits)]


def _person_name_start(line: Sequence[Word], i: int) -> int | None:
    """Index of the first word of a person's name introduced by word *i*, if it introduces one."""
    tok = line[i].text.upper().rstrip(":.")
    if tok in _TITLES and line[i].text[0].isupper() and i + 1 < len(line):
        return i + 1 if _name_like(line[i + 1].text) else None
    if tok in _PERSON_LABELS:
        return i + 1 if i + 1 < len(line) else None
    if tok == "BY" and i > 0 and line[i - 1].text.upper().rstrip(":.") in _BY_VERBS:
        return i + 1 if i + 1 < len(line) else None
    return None


# --- the plan -------------------------------------------------------------------------------


@dataclass
class RedactionPlan:
    """What to fill in one image, and whether a person should look."""

    klass: ContentClass
    policy: str
    """``phi-only`` or ``all-text``."""
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    hits: list[PhiHit] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    """Why this object needs a person's look (empty: none)."""
    ocr: OcrResult | None = None

    @property
    def words_found(self) -> int:
        return len(self.ocr.words) if self.ocr is not None else 0


def ocr_for_class(arr: np.ndarray, klass: ContentClass, photometric: str = "", where: str = "image") -> OcrResult:
    """OCR with the settings that suit the class (photos: darkest channel, denoised, ≤ 2×)."""
    colour = arr.ndim == 3 and arr.shape[-1] >= 3
    if klass is ContentClass.PHOTO:
        return ocr(
            arr,
            photometric=photometric,
            psm=11,
            variants=(Variant.MIN_CHANNEL,),
            denoise=True,
            max_scale=2.0,
            where=where,
        )
    if klass is ContentClass.UNKNOWN and colour:
        return ocr(arr, photometric=photometric, psm=11, variants=(Variant.LUMA, Variant.MIN_CHANNEL), where=where)
    return ocr(arr, photometric=photometric, psm=11, where=where)


def second_pass(arr: np.ndarray, plan: RedactionPlan, photometric: str = "", where: str = "image") -> OcrResult:
    """A second OCR pass over *redacted* pixels, prepared otherwise than the first.

    Another scale (the first pass's scale ± 1, never the same), the other grey conversion
    for colour images (darkest channel when the first read luminance and back), and no
    denoising: text the first pass read poorly is read from a different image.
    """
    first = plan.ocr
    first_scale = first.scale if first is not None else 1.0
    scale = first_scale + 1.0 if first_scale < 2.5 else first_scale - 1.0
    colour = arr.ndim == 3 and arr.shape[-1] >= 3
    variants: tuple[Variant, ...] = (Variant.LUMA,)
    if colour:
        variants = (Variant.LUMA,) if plan.klass is ContentClass.PHOTO else (Variant.MIN_CHANNEL,)
    return ocr(arr, photometric=photometric, psm=11, variants=variants, scale=scale, where=where)


def read_back(
    arr: np.ndarray,
    plan: RedactionPlan,
    terms: Sequence[Term],
    photometric: str = "",
    where: str = "image",
) -> list[str]:
    """PHI a second, independent OCR pass still reads in the redacted pixels *arr* (reasons only).

    Read back: a header value, a pattern (date, NHS number, phone, postcode), a person's
    name after a label or title, or any text the first pass judged PHI — at least three
    letters or digits, so a filled box's edge read as "|" or "ll" is not. An empty list is
    the condition for releasing the object.
    """
    second = second_pass(arr, plan, photometric, where)
    removed = {
        skeleton(h.word.text)
        for h in plan.hits
        if len(skeleton(h.word.text)) >= 3
        and h.reason.startswith(("header:", "pattern:", "name:"))
        and _norm(h.word.text) not in _NOT_NAMES  # "Hospital" of the institution's name, printed elsewhere too
    }
    found: list[str] = []
    for h in find_phi(second, terms):
        if h.reason.startswith("label:") or sum(c.isalnum() for c in h.word.text) < 3:
            continue
        found.append(h.reason)
    if plan.policy == "phi-only" or removed:
        for w in second.words:
            sk = skeleton(w.text)
            if len(sk) >= 3 and w.conf >= MIN_CONF_ALL_TEXT and any(fuzzy_equal(w.text, r) for r in removed):
                found.append("first-pass PHI read again")
    return found


def _pad(
    box: tuple[int, int, int, int], shape: tuple[int, ...], text_height: float | None = None
) -> tuple[int, int, int, int]:
    """*box* grown on each side by a fraction of the text height (the box's shorter side by default).

    Not of the box's height: on a page turned 90° that is the word's length, and a padding
    of a fifth of it covered the labels beside the word.
    """
    x0, y0, x1, y1 = box
    height = min(x1 - x0, y1 - y0) if not text_height or text_height <= 0 else text_height
    p = min(PAD_MAX, max(2, round(height * PAD_FRACTION)))
    return max(0, x0 - p), max(0, y0 - p), min(shape[1], x1 + p), min(shape[0], y1 + p)


def _text_height(w: Word) -> float | None:
    """The word's height in the upright page (its text height whatever the page's turn), if known."""
    x0, y0, x1, y1 = w.upright
    h = y1 - y0
    if h <= 0 or x1 - x0 <= 0:
        return None
    return min(h, max(w.width, w.height))  # never more than the box's longer side


def plan_redaction(
    ds: Dataset,
    klass: ContentClass,
    *,
    arr: np.ndarray | None = None,
    result: OcrResult | None = None,
    terms: Sequence[Term] | None = None,
    acquisition: bool = False,
) -> RedactionPlan:
    """Find what to fill in *ds*'s pixels under the policy of *klass*.

    Parameters
    ----------
    ds
        The original instance: its identifying header values are what is looked for.
    klass
        Content class (decides the policy and the OCR settings).
    arr
        Stored pixel values of the frame (default: ``ds.pixel_array``, first frame).
    result
        OCR already done on *arr* (``sc analyse`` shares it).
    terms
        Identifying terms (default: :func:`identifying_terms` of *ds*).
    acquisition
        An acquisition image (CR, CT, MR, US …), not a capture: only PHI is filled (never all
        text: the OCR of anatomy is noise) and the content-class review rules do not apply.
    """
    all_text = not acquisition and klass in (
        ContentClass.PHOTO,
        ContentClass.OUTSIDE_IMAGE,
        ContentClass.SCREENSHOT,
        ContentClass.UNKNOWN,
    )
    plan = RedactionPlan(klass, "all-text" if all_text else "phi-only")
    if "PixelData" not in ds and arr is None:
        plan.review.append("no pixel data (encapsulated document or header only): text not checked")
        return plan
    if arr is None:
        arr = first_frame(ds)
    where = str(getattr(ds, "filename", "") or ds.get("SOPInstanceUID", "image"))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    plan.ocr = result if result is not None else ocr_for_class(arr, klass, photometric, where)
    hits = find_phi(plan.ocr, terms if terms is not None else identifying_terms(ds))
    if all_text:
        seen = {id(h.word) for h in hits}
        hits += [
            PhiHit(w, "policy:all-text")
            for w in plan.ocr.words
            if id(w) not in seen and w.conf >= MIN_CONF_ALL_TEXT and any(c.isalnum() for c in w.text)
        ]
    plan.hits = hits
    plan.boxes = [_pad(h.word.box, arr.shape, _text_height(h.word)) for h in hits]
    # review rules
    if acquisition:
        pass
    elif klass is ContentClass.PHOTO:
        plan.review.append("clinical photograph: text on skin, labels or stamps may escape OCR")
    if klass is ContentClass.UNKNOWN and not acquisition:
        plan.review.append("content class unknown")
    o = plan.ocr.orientation
    if (
        not acquisition
        and klass in (ContentClass.DOCUMENT, ContentClass.DOSE_REPORT)
        and len(plan.ocr.words) >= 3
        and (not o.detected or o.confidence < MIN_ORIENTATION_CONFIDENCE)
    ):
        plan.review.append(f"low orientation confidence ({o.confidence:.1f})")
    text_found = [w for w in plan.ocr.words if w.conf >= MIN_CONF_ALL_TEXT and sum(c.isalnum() for c in w.text) >= 2]
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not text_found:
        plan.review.append("Burned In Annotation YES but no text found")
    return plan


def first_frame(ds: Dataset) -> np.ndarray:
    """Stored values of the first frame."""
    arr = np.asarray(ds.pixel_array)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return arr[0] if frames > 1 else arr


def fill_value(ds: Dataset, arr: np.ndarray) -> int | tuple[int, int, int]:
    """The stored value that displays as black (MONOCHROME1: the maximum)."""
    if arr.ndim == 3:
        return (0, 0, 0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        return int((1 << int(ds.get("BitsStored", 8))) - 1)
    return int(arr.min()) if int(ds.get("PixelRepresentation", 0)) else 0


def redact_array(
    arr: np.ndarray, boxes: Iterable[tuple[int, int, int, int]], value: int | tuple[int, int, int] = 0
) -> np.ndarray:
    """A copy of *arr* with every box (x0, y0, x1, y1) filled."""
    out = np.array(arr, copy=True)
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, x0:x1] = value
    return out


def redacted_dataset(
    ds: Dataset,
    plan: RedactionPlan,
    *,
    deidentifier: Deidentifier | None = None,
) -> Dataset | None:
    """The redacted derived object of *ds* (``None`` when the de-identification profile excludes it).

    Parameters
    ----------
    ds
        The original instance.
    plan
        From :func:`plan_redaction`.
    deidentifier
        When given, the header is de-identified first and the new Series and SOP Instance
        UIDs come from its keyed UID map (recorded in its vault), so a second run gives
        the same UIDs and the source reference points at the de-identified source.
    """
    from dicomlake.write.derive import Derivation, derive_image

    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DeidError(
            f"{getattr(ds, 'filename', ds.get('SOPInstanceUID'))}: multi-frame redaction is not supported; "
            "split the frames first"
        )
    template = ds
    if deidentifier is not None:
        cleaned = copy.deepcopy(ds)
        cleaned.BurnedInAnnotation = "NO"  # the pixels are cleaned here (Clean Pixel Data Option)
        out = deidentifier.deidentify(cleaned)
        if out is None:
            return None
        template = out
    value = fill_value(ds, first_frame(ds))
    description = (
        f"Burned-in text removed by dicomlake: {len(plan.boxes)} regions filled "
        f"({plan.policy}, content {plan.klass.value})"
    )
    series_uid = None
    if deidentifier is not None:
        series_uid = _mapped_uid(deidentifier, f"{ds.SeriesInstanceUID}#pixels")
    derived = derive_image(
        template,
        lambda a: redact_array(a, plan.boxes, value),
        Derivation(CLEAN_PIXEL_DATA, description),
        series_instance_uid=series_uid,
        series_description=str(template.get("SeriesDescription", "") or "") + " (redacted)",
        series_number=int(template.get("SeriesNumber") or 0) + 2000 if template.get("SeriesNumber") else None,
    )
    derived.BurnedInAnnotation = "NO"
    if deidentifier is not None:
        derived.SOPInstanceUID = _mapped_uid(deidentifier, f"{ds.SOPInstanceUID}#pixels")
        derived.file_meta.MediaStorageSOPInstanceUID = derived.SOPInstanceUID
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
            CLEAN_PIXEL_DATA.value,
            CLEAN_PIXEL_DATA.scheme_designator,
            CLEAN_PIXEL_DATA.meaning,
        )
        methods = list(derived.get("DeidentificationMethodCodeSequence", []) or [])
        if not any(getattr(m, "CodeValue", "") == CLEAN_PIXEL_DATA.value for m in methods):
            derived.DeidentificationMethodCodeSequence = DicomSequence([*methods, item])
    return derived


def _mapped_uid(deidentifier: Deidentifier, original: str) -> str:
    new = deidentifier.keys.uid(original)
    if deidentifier.vault is not None:
        deidentifier.vault.record("UID", original, new)
    return new


# --- files ------------------------------------------------------------------------------------


@dataclass
class RedactReport:
    """What a batch redaction did."""

    written: list[tuple[str, str]] = field(default_factory=list)
    """(input, output) pairs."""
    review: list[tuple[str, str]] = field(default_factory=list)
    """(input, reasons) of objects a person should look at."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    """(input, why) of objects not written: a second OCR pass read PHI back from the redacted pixels."""
    fixed: list[tuple[str, str]] = field(default_factory=list)
    """(input, what was changed) for malformed header values repaired or blanked so the pixels could be redacted."""
    regions: int = 0
    screened: int = 0
    """Images whose pixels were OCR-screened (``deid --pixels``)."""
    not_screened: list[tuple[str, str]] = field(default_factory=list)
    """(input, why) of images whose pixels could not be screened (``deid --pixels``)."""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


_AS_LOOSE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)


def _repaired(vr: str, value: object) -> object | None:
    """A valid form of a malformed value, when there is an unambiguous one (AS '33Y' → '033Y')."""
    if not isinstance(value, str):
        return None
    if vr == "AS" and (m := _AS_LOOSE.match(value)):
        return f"{int(m.group(1)):03d}{m.group(2).upper()}"
    if vr == "DA" and re.fullmatch(r"\s*\d{4}[.\-/]\d{2}[.\-/]\d{2}\s*", value):
        return re.sub(r"\D", "", value)
    if vr in ("CS", "SH", "LO", "AE", "PN"):
        limit = {"CS": 16, "SH": 16, "AE": 16, "LO": 64, "PN": 64}[vr]
        fixed = value.strip().upper() if vr == "CS" else value.strip()
        if vr == "CS":
            fixed = re.sub(r"[^A-Z0-9_ ]", "_", fixed)
        return fixed[:limit]
    return None


def repair_invalid_values(ds: Dataset) -> list[str]:
    """Repair (or blank) header values that would stop the file being written; say what changed.

    A malformed header value (PatientAge AS '33Y') must not stop pixel redaction: the value
    is put in its valid form where there is one, else emptied, and each change is returned
    as ``Keyword VR 'old' → 'new'`` for the report.
    """
    import pydicom
    from pydicom import config as pydicom_config

    text_vrs = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
    notes: list[str] = []

    def bad(vr: str, value: object) -> bool:
        vals = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        for v in vals:
            if vr in ("IS", "DS", "PN") or (vr in text_vrs and not isinstance(v, (str, bytes))):
                v = str(v)
            try:
                pydicom.valuerep.validate_value(vr, v, pydicom_config.RAISE)
            except (ValueError, TypeError):
                return True
        return False

    for elem in list(ds.iterall()):
        if elem.VR not in text_vrs or elem.value is None or elem.value == "":
            continue
        if not bad(elem.VR, elem.value):
            continue
        old = elem.value
        new = _repaired(elem.VR, old)
        if new is None or bad(elem.VR, new):
            new = ""
        elem.value = new
        notes.append(f"{elem.keyword or elem.tag} {elem.VR} {str(old)!r} → {str(new)!r}")
    return notes


def _held_reason(back: list[str]) -> str:
    kinds = sorted(set(back))
    return (
        f"held for review, not written: a second OCR pass read back {len(back)} PHI string(s) "
        f"({', '.join(kinds)}) from the redacted pixels"
    )


def classify_for_redaction(ds: Dataset, arr: np.ndarray | None) -> ContentClass:
    """The content class (header, then pixels; OCR keywords when both are unsure)."""
    from dicomlake.extract.sc_class import (
        DecidedBy,
        decide,
        header_evidence,
        ocr_evidence,
        pixel_evidence,
        pixel_stats,
    )

    ev = header_evidence(ds)
    c = decide(ev, DecidedBy.HEADER)
    if c is None and arr is not None:
        pixel_evidence(pixel_stats(arr), ev)
        c = decide(ev, DecidedBy.PIXELS)
        if c is None:
            result = ocr(arr, photometric=str(ds.get("PhotometricInterpretation", "")), psm=11)
            ocr_evidence([w.text for w in result.words if w.conf >= 50], arr.shape, ev)
            c = decide(ev, DecidedBy.OCR, final=True)
    return c.klass if c is not None else ContentClass.UNKNOWN


def redact_file(
    path: Path,
    out_dir: Path,
    *,
    deidentifier: Deidentifier | None = None,
    report: RedactReport | None = None,
    name: str | None = None,
) -> RedactReport:
    """Redact one file into *out_dir* (``<stem>-redacted.dcm`` or *name*)."""
    from dicomlake.write._common import encode, write_atomically

    rep = report if report is not None else RedactReport()
    try:
        ds = dcmread(path)
    except Exception as exc:
        rep.failed.append((str(path), f"{path}: not a readable DICOM file ({exc})"))
        return rep
    try:
        arr = first_frame(ds) if "PixelData" in ds else None
        klass = classify_for_redaction(ds, arr)
        plan = plan_redaction(ds, klass, arr=arr)
        if plan.review:
            rep.review.append((str(path), "; ".join(plan.review)))
        if arr is None:
            return rep  # on the review list: nothing to fill, text not checked
        derived = redacted_dataset(ds, plan, deidentifier=deidentifier)
        if derived is None:
            rep.excluded.append(f"{path}: excluded by the de-identification profile")
            return rep
        back = read_back(
            first_frame(derived), plan, identifying_terms(ds), str(ds.get("PhotometricInterpretation", "")), str(path)
        )
        if back:
            rep.held.append((str(path), _held_reason(back)))
            return rep
        if plan.review:
            derived.BurnedInAnnotation = "YES"  # on the review list: not declared clean
        target = out_dir / (name or f"{Path(path).stem}-redacted.dcm")
        notes = repair_invalid_values(derived)
        if notes:
            rep.fixed.append((str(path), "malformed header values repaired: " + "; ".join(notes)))
        write_atomically([(target, encode(derived, str(path)))], overwrite=True)
        rep.written.append((str(path), str(target)))
        rep.regions += len(plan.boxes)
    except DicomlakeError as exc:
        rep.failed.append((str(path), str(exc)))
    return rep


def needs_pixel_cleaning(ds: Dataset) -> bool:
    """Pixels that may carry burned-in text: SC-like SOP classes, risky ones, or Burned In Annotation YES."""
    from dicomlake.deid.engine import RISKY_SOP_CLASSES
    from dicomlake.extract.sc_class import SC_LIKE_SOP_CLASSES

    if "PixelData" not in ds:
        return False
    sop = str(ds.get("SOPClassUID", ""))
    declared = str(ds.get("BurnedInAnnotation", "")).upper()
    return declared == "YES" or (declared != "NO" and (sop in SC_LIKE_SOP_CLASSES or sop in RISKY_SOP_CLASSES))


MAX_SCREEN_FRAMES = 8
"""``deid --pixels`` screens every frame of a multi-frame image up to this many frames; a
longer one is listed as not screened (``--screen-frames``). Default: 8."""
SCREENABLE_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}
"""Photometric interpretations OCR reads (pydicom gives RGB for the YBR ones)."""


def unscreenable(ds: Dataset, max_frames: int = MAX_SCREEN_FRAMES) -> tuple[str | None, np.ndarray | None]:
    """(why the pixels of *ds* cannot be OCR-screened, or None; the decoded pixels when they can).

    Reasons: no pixel data but an encapsulated document or float pixels, a photometric
    interpretation OCR cannot read, more frames than *max_frames*, or pixel data that cannot
    be decoded (a compressed transfer syntax without a decoder, a corrupt stream).
    """
    if "PixelData" not in ds:
        if "EncapsulatedDocument" in ds:
            return "encapsulated document: its text is not screened", None
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return "float pixel data: not screened", None
        return None, None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in SCREENABLE_PHOTOMETRIC:
        return f"photometric interpretation {photometric or '(none)'} is not screened", None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > max_frames:
        return f"multi-frame: {frames} frames, more than the {max_frames} screened (--screen-frames)", None
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom: no decoder (NotImplementedError/RuntimeError), corrupt stream
        name = getattr(getattr(meta, "TransferSyntaxUID", None), "name", ts) or "unknown"
        return (
            f"pixel data cannot be decoded (transfer syntax {name}): {type(exc).__name__}: {' '.join(str(exc).split())[:120]}",
            None,
        )
    return None, arr


def _header_only(deidentifier: Deidentifier, data: bytes, source: str, burned_in: str | None) -> bytes | None:
    """The header de-identified, pixels as they are; *burned_in* None: screened, value as declared."""
    if burned_in is None:
        return deidentifier.deidentify_bytes(data, source=source, screened=True)
    return deidentifier.deidentify_bytes(data, source=source, burned_in=burned_in)


def deidentify_bytes_with_pixels(
    deidentifier: Deidentifier,
    data: bytes,
    *,
    source: str,
    report: RedactReport,
    max_frames: int = MAX_SCREEN_FRAMES,
) -> bytes | None:
    """``dicomlake deid --pixels``: de-identify one Part-10 file, screening its pixels first.

    Every image is OCR-screened, whatever its class: Secondary Capture-like objects under
    the policy of their content class, acquisition images (CR, CT, MR, US …) for PHI only
    (header values, dates, numbers, labelled and titled names), never for "all text", so no
    box is painted over anatomy. What cannot be screened is listed in
    ``report.not_screened`` with the reason, and written (when the profile keeps it) with
    Burned In Annotation YES: nothing passes unscreened silently.

    Burned In Annotation (PS3.15 Clean Pixel Data):

    - PHI found and filled, a second OCR pass reads none back, no review: a redacted derived
      object with ``NO``;
    - PHI read back, or PHI in a multi-frame image (frames are not redacted): held, not written;
    - sent to review, or not screened: written with ``YES`` (never ``NO``);
    - screened, nothing found: the header alone is de-identified, the value kept as declared.
    """
    import io

    from dicomlake.extract.sc_class import SC_LIKE_SOP_CLASSES
    from dicomlake.write._common import encode

    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise DeidError(f"{source}: cannot read as DICOM: {exc}") from exc
    ds.filename = source
    why, pixels = unscreenable(ds, max_frames)
    if why is not None:
        report.not_screened.append((source, why))
        report.review.append((source, "not screened: " + why))
        return _header_only(deidentifier, data, source, "YES")
    if pixels is None:
        return _header_only(deidentifier, data, source, None)  # no image: nothing to screen
    report.screened += 1
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    sc_like = str(ds.get("SOPClassUID", "")) in SC_LIKE_SOP_CLASSES
    frame_list = [pixels[k] for k in range(frames)] if frames > 1 else [pixels]
    try:
        klass = classify_for_redaction(ds, frame_list[0]) if sc_like else ContentClass.UNKNOWN
        plans = [plan_redaction(ds, klass, arr=a, acquisition=not sc_like) for a in frame_list]
    except DicomlakeError as exc:
        report.not_screened.append((source, f"OCR failed: {exc}"))
        report.review.append((source, f"not screened: OCR failed: {exc}"))
        return _header_only(deidentifier, data, source, "YES")
    plan = plans[0]
    review = sorted({r for p in plans for r in p.review})
    if review:
        report.review.append((source, "; ".join(review)))
    if not any(p.boxes for p in plans):
        # nothing to fill: the pixels are kept; a reviewed image is not declared clean
        return _header_only(deidentifier, data, source, "YES" if review else None)
    if frames > 1:
        why = (
            f"PHI found in {sum(bool(p.boxes) for p in plans)} of {frames} frames; multi-frame images are not redacted"
        )
        report.held.append((source, "held for review, not written: " + why))
        report.review.append((source, why))
        return None
    try:
        derived = redacted_dataset(ds, plan, deidentifier=deidentifier)
    except DicomlakeError as exc:
        report.held.append((source, f"held for review, not written: PHI found but not redacted ({exc})"))
        report.review.append((source, f"PHI found but not redacted: {exc}"))
        return None
    if derived is None:
        return None
    back = read_back(
        first_frame(derived), plan, identifying_terms(ds), str(ds.get("PhotometricInterpretation", "")), source
    )
    if back:
        report.held.append((source, _held_reason(back)))
        report.review.append((source, _held_reason(back)))
        return None
    # Clean Pixel Data: NO only for a verified redaction that no one is asked to review
    derived.BurnedInAnnotation = "YES" if review else "NO"
    notes = repair_invalid_values(derived)
    if notes:
        report.fixed.append((source, "malformed header values repaired: " + "; ".join(notes)))
    report.written.append((source, str(derived.SOPInstanceUID)))
    report.regions += len(plan.boxes)
    return encode(derived, source)
