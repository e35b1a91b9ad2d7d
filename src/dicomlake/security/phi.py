"""PHI in text: one detector for OCR'd pixels and for free-text header values (issue 20).

Both the burned-in text screen (:mod:`dicomlake.deid.pixels`, ``sc redact``) and PS3.15
cleaning of descriptors and structured content (:mod:`dicomlake.deid.text`) decide what is
identifying with the rules here:

- the instance's own identifying values (:func:`identifying_terms`: names and their parts,
  IDs, accession, address, telephone, institution, and dates in the many ways they are
  printed, :func:`date_forms`);
- patterns: dates (numeric, compact and with month names, plausible only), NHS numbers
  (modulus-11 check), telephone numbers, UK postcodes, e-mail addresses, identifier-like
  tokens (letters with four digits or more, runs of six digits or more);
- context: a value after a label (``DOB``, ``MRN``, ``Hospital number``, ``Name:``), a
  capitalised name after a title (Dr, Mrs, Prof) or a person label or cue (``Consultant``,
  ``Witness``, ``reported by``), a name in DICOM form (``Smith^John``).

:class:`TextDetector` applies them to a string; the OCR path applies the same patterns and
vocabularies to the words of a line, with OCR-tolerant matching (:func:`fuzzy_equal`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_MONTH_RE = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE_PATTERNS = [
    re.compile(r"\b\d{1,2}\s?[/.\-]\s?\d{1,2}\s?[/.\-]\s?(?:\d{4}|\d{2})\b"),
    re.compile(r"\b(?:19|20)\d{2}\s?[/.\-]\s?\d{1,2}\s?[/.\-]\s?\d{1,2}\b"),
    re.compile(
        r"\b\d{1,2}(?:st|nd|rd|th)?[\s\-./]{0,2}" + _MONTH_RE + r"[\s\-./,]{0,2}(?:\d{4}|'?\d{2})\b", re.IGNORECASE
    ),
    re.compile(r"\b" + _MONTH_RE + r"\s\d{1,2}(?:st|nd|rd|th)?,?\s(?:\d{4})\b", re.IGNORECASE),
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),
]
_NHS = re.compile(r"(?<![\d.,\-])\d{3}([ \-]?)\d{3}\1\d{4}(?![\d.,]\d|-\d)")
"""An NHS number as printed: ten digits, plain or grouped 3-3-4 by one space or hyphen (never
digits strung across decimal numbers: "S54.3-I432.1 8.73" is a scan range and a CTDIvol)."""
_PHONE = re.compile(r"(?:\+44\s?\(?0?\)?\s?|\b0)\d{2,4}[\s\-]?\d{3,4}[\s\-]?\d{3,4}\b|\(\d{3}\)\s?\d{3}[\s\-]\d{4}\b")
_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b", re.IGNORECASE)
_CONFUSABLE = str.maketrans(
    {
        "O": "0",
        "Q": "0",
        "D": "0",
        "I": "1",
        "L": "1",
        "|": "1",
        "!": "1",
        "]": "1",
        "S": "5",
        "$": "5",
        "B": "8",
        "Z": "2",
        "G": "6",
        "T": "7",
    }
)
_GENERIC = {
    "THE",
    "OF",
    "AND",
    "ST",
    "ST.",
    "HOSPITAL",
    "GENERAL",
    "CLINIC",
    "INFIRMARY",
    "NHS",
    "TRUST",
    "UNIVERSITY",
    "MEDICAL",
    "CENTRE",
    "CENTER",
    "HEALTH",
    "ROAD",
    "STREET",
    "LANE",
    "AVENUE",
    "DR",
    "MR",
    "MRS",
    "MS",
    "MISS",
    "PROF",
}
_LABELS = {
    "NAME",
    "PATIENT",
    "PATIENTNAME",
    "DOB",
    "D.O.B",
    "D.O.B.",
    "BIRTH",
    "BORN",
    "MRN",
    "ID",
    "PID",
    "ACCESSION",
    "ACC",
    "ACC.",
    "ADDRESS",
    "TELEPHONE",
    "TEL",
    "TEL.",
    "PHONE",
    "MOBILE",
    "POSTCODE",
    "REFERRER",
    "PHYSICIAN",
    "DOCTOR",
    "NHS",
    "CHI",
    "SURNAME",
    "FORENAME",
    "FORENAMES",
}
_NUMBER_LABEL_PREFIX = {"HOSPITAL", "NHS", "PATIENT", "MEDICAL", "RECORD", "CASE", "UNIT", "ID"}
_LABEL_NEEDS_COLON = {"PATIENT", "ID", "NAME"}


def _norm(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def skeleton(text: str) -> str:
    """Upper-case alphanumerics with OCR-confusable glyphs folded (O→0, I/L→1, S→5, B→8 …)."""
    return re.sub(r"[^0-9A-Z]", "", text.upper().translate(_CONFUSABLE))


def _edits(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, stopping early past *limit*."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        best = i
        for j, cb in enumerate(b, 1):
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            cur.append(v)
            best = min(best, v)
        if best > limit:
            return limit + 1
        prev = cur
    return prev[-1]


def _allowed_edits(n: int) -> int:
    return 0 if n <= 3 else 1 if n <= 7 else 2


def fuzzy_equal(ocr_text: str, value: str) -> bool:
    """Whether an OCR'd token reads as *value*, allowing confusable glyphs and a few edits."""
    a, b = skeleton(ocr_text), skeleton(value)
    if not a or not b:
        return False
    if a == b:
        return True
    if len(b) <= 5 and len(a) != len(b):
        return False  # short values: substitutions only ("iii" from a filled box is not "Mill")
    return _edits(a, b, _allowed_edits(len(b))) <= _allowed_edits(len(b))


_DECIMAL = re.compile(r"[<>~]?\d{1,5}[.,]\d{1,3}")
"""A decimal number as printed in a table (13.21, 429.11, 0,75): one separator, no grouping."""
_DOSE_WORDS = ("CTDI", "DLP", "MGY", "SSDE", "DOSE")
"""Words (prefixes, normalised) that make a page a dose page: its decimal numbers are clinical values."""


def is_decimal_number(text: str) -> bool:
    """Whether an OCR'd token reads as one decimal number (``13.21``, ``429.11,``), not a date or grouped ID."""
    return bool(_DECIMAL.fullmatch(text.strip(",;:()[]")))


def is_dose_word(text: str) -> bool:
    """A dose label or unit (CTDIvol, DLP, mGy, mGy-cm, SSDE, Dose)."""
    return _norm(text).startswith(_DOSE_WORDS)


def numeric_identifier(value: str) -> bool:
    """A header value (or a group of one) made of digits only: a phone group, an all-digit ID, a date form."""
    n = _norm(value)
    return bool(n) and n.isdigit()


def matches_term(ocr_text: str, value: str) -> bool:
    """Whether an OCR'd token is the identifying header value *value* (a :class:`Term`'s text).

    Letters, or letters and digits mixed (names, ``A20240815``): :func:`fuzzy_equal`, a few
    edits allowed. An all-digit value (an ID, a group of a telephone number, a date form) is
    matched only exactly after OCR-confusion folding (O→0, l→1 …), never by edits: a short
    number is one edit away from many clinical values ("13.21" from the phone group "0321").
    Only an ID of seven digits or more tolerates one misread digit (same length), and then
    not from a decimal number. Whether the value is a whole identifier or a group of one of
    four digits or more is decided when the terms are built (:func:`identifying_terms`).
    """
    if not numeric_identifier(value):
        return fuzzy_equal(ocr_text, value)
    a, b = skeleton(ocr_text), _norm(value)
    if not a.isdigit():
        return False
    if a == b:
        return True
    return (
        len(b) >= 7
        and len(a) == len(b)
        and not is_decimal_number(ocr_text)
        and sum(x != y for x, y in zip(a, b, strict=True)) <= 1
    )


def date_forms(value: str) -> list[str]:
    """The ways a DICOM date (YYYYMMDD) is printed: 03/04/1956, 1956-04-03, 3 Apr 1956, 03-APR-56 …"""
    if len(value) < 8 or not value[:8].isdigit():
        return []
    y, m, d = value[:4], value[4:6], value[6:8]
    mi = int(m)
    if not 1 <= mi <= 12:
        return [value[:8]]
    mon = _MONTHS[mi - 1]
    full = [
        "JANUARY",
        "FEBRUARY",
        "MARCH",
        "APRIL",
        "MAY",
        "JUNE",
        "JULY",
        "AUGUST",
        "SEPTEMBER",
        "OCTOBER",
        "NOVEMBER",
        "DECEMBER",
    ][mi - 1]
    di = str(int(d))
    forms = {
        value[:8],
        f"{d}/{m}/{y}",
        f"{m}/{d}/{y}",
        f"{d}.{m}.{y}",
        f"{d}-{m}-{y}",
        f"{y}-{m}-{d}",
        f"{y}/{m}/{d}",
        f"{y}.{m}.{d}",
        f"{d}/{m}/{y[2:]}",
        f"{m}/{d}/{y[2:]}",
        f"{d}-{mon}-{y}",
        f"{d}-{mon}-{y[2:]}",
        f"{di} {mon} {y}",
        f"{d} {mon} {y}",
        f"{mon} {di}, {y}",
        f"{di} {full} {y}",
        f"{full} {di}, {y}",
        f"{d}{mon}{y}",
        f"{di}/{int(m)}/{y}",
        f"{int(m)}/{di}/{y}",
    }
    return sorted(forms)


@dataclass(frozen=True)
class Term:
    """An identifying value from the header, as it may be printed."""

    text: str
    source: str
    """Keyword it came from (``PatientName``, ``PatientBirthDate`` …)."""
    distinctive: bool = True
    """Worth matching on its own (not 'Hospital', 'Road' or a one-letter initial)."""


_TERM_KEYWORDS = {
    "PN": (
        "PatientName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "PatientMotherBirthName",
        "OtherPatientNames",
        "PatientBirthName",
        "RequestingPhysician",
    ),
    "ID": (
        "PatientID",
        "OtherPatientIDs",
        "AccessionNumber",
        "StudyID",
        "IssuerOfPatientID",
        "MedicalRecordLocator",
        "PatientInsurancePlanCodeSequence",
    ),
    "TEXT": (
        "InstitutionName",
        "InstitutionAddress",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "InstitutionalDepartmentName",
        "StationName",
        "CountryOfResidence",
        "RegionOfResidence",
    ),
    "DATE": ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"),
}


def identifying_terms(ds: Dataset) -> list[Term]:
    """Identifying header values of *ds*, split into the tokens and phrases OCR can return."""
    terms: list[Term] = []

    def values(keyword: str) -> list[str]:
        v = ds.get(keyword)
        if v is None or v == "":
            return []
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            return [str(x) for x in v if str(x)]
        return [str(v)]

    for kw in _TERM_KEYWORDS["PN"]:
        for v in values(kw):
            for part in re.split(r"[\^=\s,]+", v):
                if part and part.upper() not in _GENERIC:
                    terms.append(Term(part, kw, len(part) >= 2))
    for kw in _TERM_KEYWORDS["ID"]:
        for v in values(kw):
            terms.append(Term(v.strip(), kw, len(v.strip()) >= 3))
    for kw in _TERM_KEYWORDS["TEXT"]:
        for v in values(kw):
            terms.append(Term(v.strip(), kw, False))  # the phrase
            for part in re.split(r"[\s,]+", v):
                if part:
                    # a group of digits ("496" of "0117 496 0321") stands alone only from four digits
                    short_group = numeric_identifier(part) and len(_norm(part)) < 4
                    distinctive = len(part) >= 3 and part.upper() not in _GENERIC and not short_group
                    terms.append(Term(part, kw, distinctive))
    for kw in _TERM_KEYWORDS["DATE"]:
        for v in values(kw):
            for form in date_forms(v):
                terms.append(Term(form, kw, True))
    return [t for t in terms if _norm(t.text)]


def nhs_number_valid(digits: str) -> bool:
    """NHS number modulus-11 check (10 digits, weights 10…2; check 11 → 0, 10 invalid)."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def _plausible_date(found: str, text: str, end: int) -> bool:
    """Whether a date-pattern match can be a date: not the start of a decimal number, numeric
    parts a day ≤ 31, a month ≤ 12 (either order) and a four-digit year 1880…2099
    ("S57.1-I580.0", a scan range, is not 57/1/1580)."""
    if re.match(r"[.,]\d", text[end : end + 2]):
        return False
    nums = [int(x) for x in re.findall(r"\d+", found)]
    if len(nums) != 3 or not re.fullmatch(r"[\d\s/.\-]+", found):
        return True  # month names, compact YYYYMMDD: their patterns are strict already
    if len(str(nums[0])) == 4 or found.strip()[:4].isdigit():
        y, a, b = nums
    else:
        a, b, y = nums
        if len(re.findall(r"\d+", found)[2]) == 4 and not 1880 <= y <= 2099:
            return False
    if len(re.findall(r"\d+", found)[0]) == 4 and not 1880 <= y <= 2099:
        return False
    return 1 <= a <= 31 and 1 <= b <= 31 and (a <= 12 or b <= 12)


def _digitised(text: str) -> str:
    """Fold letters OCR confuses with digits in tokens that are mostly digits (14/O9/1982 → 14/09/1982)."""
    out = []
    for tok in text.split(" "):
        digits = sum(c.isdigit() for c in tok)
        if digits and digits >= len(tok) / 2:
            tok = tok.translate(_DIGIT_FOLD)
        out.append(tok)
    return " ".join(out)


_DIGIT_FOLD = str.maketrans("OolI|S$", "0011155")


_PERSON_LABELS = {
    "CLINICIAN",
    "CONSULTANT",
    "DOCTOR",
    "PHYSICIAN",
    "SURGEON",
    "RADIOLOGIST",
    "RADIOGRAPHER",
    "SONOGRAPHER",
    "NURSE",
    "PRACTITIONER",
    "REGISTRAR",
    "WITNESS",
    "SIGNED",
    "SIGNATURE",
    "REFERRER",
    "INTERPRETER",
}
_BY_VERBS = {"SIGNED", "TAKEN", "OBTAINED", "REPORTED", "VERIFIED", "AUTHORISED", "AUTHORIZED", "SEEN", "REFERRED"}
_TITLES = {"DR", "MR", "MRS", "MS", "MISS", "PROF", "SISTER"}
_NOT_NAMES = _GENERIC | _LABELS | _PERSON_LABELS | {"DATE", "TIME", "BY", "SIGNATURE", "PRINT", "NUMBER", "GRADE"}
"""Capitalised words that end a name after a person label (form vocabulary, not names)."""


def _name_like(text: str) -> bool:
    """A capitalised word of letters (hyphen or apostrophe allowed): Raman, O'Neil, Smith-Jones, DR."""
    t = text.strip(",.;:")
    return len(t) >= 2 and t[0].isupper() and bool(re.fullmatch(r"[A-Za-z][A-Za-z'\-]*", t))


# --- the detector on free text -----------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Identifier-like tokens: letters and at least four digits mixed (MRN4471902, AB-123456), or a
# run of six or more digits (a hospital or accession number).
_IDENTIFIER = re.compile(r"(?<![\w.])(?=[\w-]*\d)(?:[A-Za-z][\w-]*\d[\w-]*|\d[\w-]*[A-Za-z][\w-]*|\d{6,})(?![\w.])")
_NAME_WORD = r"(?:[A-Z]\.|[A-Z][a-z\u00C0-\u024F'’-]+)"
_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}}"
_NAME_CHARS = r"[A-Za-z\u00C0-\u024F'’-]"
_CARET_NAME = re.compile(rf"{_NAME_CHARS}+\^{_NAME_CHARS}+(?:\^{_NAME_CHARS}*){{0,3}}")
_TITLE_WORDS = r"(?:Dr|Drs|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Doctor|Sr|Nurse|Sister)"
_TITLED_NAME = re.compile(rf"\b{_TITLE_WORDS}\.?[ \t]+({_NAME})")
_CUES = sorted(
    {p.lower() for p in _PERSON_LABELS}
    | {
        "by",
        "per",
        "from",
        "attn",
        "cc",
        "patient",
        "pt",
        "name",
        "surname",
        "forename",
        "reported",
        "dictated",
        "verified",
        "approved",
        "authorised",
        "authorized",
        "referred",
        "requested",
        "operator",
        "technologist",
    }
)
_CUED_NAME = re.compile(
    r"\b(?i:" + "|".join(_CUES) + r")\b[:.]?[ \t]*(?:[:\-][ \t]*)?" + rf"(?!{_TITLE_WORDS}\b)({_NAME})"
)
_LABELLED = re.compile(
    r"\b(?i:dob|d\.o\.b\.?|date of birth|born|mrn|nhs(?: number| no\.?)?|hospital (?:number|no\.?)|"
    r"accession(?: number| no\.?)?|chi(?: number)?|patient id|id:|tel\.?|telephone|phone|mobile|postcode)"
    r"[ \t]*[:#]?[ \t]*([A-Za-z0-9][\w/.\-]*(?:[ \t]\d[\w/.\-]*){0,2})"
)


@dataclass(frozen=True)
class Span:
    """A stretch of text judged PHI, and why (``header:<Keyword>``, ``pattern:<kind>``, ``name:<rule>``, ``label``)."""

    start: int
    end: int
    reason: str


class TextDetector:
    """PHI in free text by the rules of this module, with one instance's identifying terms.

    Parameters
    ----------
    terms
        The instance's identifying values (:func:`identifying_terms`); matched
        case-insensitively as whole words (phrases and dates in their printed forms too).
    """

    def __init__(self, terms: Iterable[Term] = ()):
        words = {t.text.strip() for t in terms if t.distinctive or " " in t.text.strip()}
        words = {w for w in words if len(_norm(w)) >= 3 or (not w.isascii() and len(w) >= 2)}
        ordered = sorted(words, key=len, reverse=True)
        self._terms = (
            re.compile(
                r"(?<![0-9A-Za-z])(?:" + "|".join(re.escape(w) for w in ordered) + r")(?![0-9A-Za-z])", re.IGNORECASE
            )
            if ordered
            else None
        )

    def spans(self, text: str) -> list[Span]:
        """Merged, ordered stretches of *text* that identify someone."""
        found: list[Span] = []

        def add(start: int, end: int, reason: str) -> None:
            if end > start:
                found.append(Span(start, end, reason))

        if self._terms is not None:
            for m in self._terms.finditer(text):
                add(m.start(), m.end(), "header")
        for pat in _DATE_PATTERNS:
            for m in pat.finditer(text):
                if _plausible_date(m.group(), text, m.end()):
                    add(m.start(), m.end(), "pattern:date")
        for m in _NHS.finditer(text):
            if nhs_number_valid(re.sub(r"\D", "", m.group())):
                add(m.start(), m.end(), "pattern:nhs")
        for m in _PHONE.finditer(text):
            add(m.start(), m.end(), "pattern:phone")
        for m in _POSTCODE.finditer(text):
            g = m.group()
            if any(c.isdigit() for c in g) and g[-2:].isalpha() and g[:1].isupper():
                add(m.start(), m.end(), "pattern:postcode")
        for m in _EMAIL.finditer(text):
            add(m.start(), m.end(), "pattern:email")
        for m in _IDENTIFIER.finditer(text):
            tok = m.group()
            if (tok.isdigit() and len(tok) >= 6) or (not tok.isdigit() and sum(c.isdigit() for c in tok) >= 4):
                add(m.start(), m.end(), "pattern:identifier")
        for m in _CARET_NAME.finditer(text):
            add(m.start(), m.end(), "name:dicom")
        for m in _TITLED_NAME.finditer(text):
            add(m.start(1), m.end(1), "name:title")
        for m in _CUED_NAME.finditer(text):
            name = m.group(1)
            if name.upper() not in _NOT_NAMES:
                add(m.start(1), m.end(1), "name:cue")
        for m in _LABELLED.finditer(text):
            add(m.start(1), m.end(1), "label")
        found.sort(key=lambda s: (s.start, -s.end))
        merged: list[Span] = []
        for s in found:
            if merged and s.start < merged[-1].end:
                last = merged[-1]
                if s.end > last.end:
                    merged[-1] = Span(last.start, s.end, last.reason if last.reason == s.reason else "mixed")
                continue
            merged.append(s)
        return merged
