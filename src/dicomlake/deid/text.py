"""Free-text scrubbing (Clean Descriptors): an instance's own identifiers and dates out of text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, timedelta

REDACTED = "***"

# Dates written in free text: 20240131, 2024-01-31, 2024/01/31, 31/01/2024, 31.01.2024, 31-01-2024.
_DATE_PATTERNS = [
    (re.compile(r"(?<!\d)((?:19|20)\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)"), "ymd", "{y:04d}{m:02d}{d:02d}"),
    (re.compile(r"(?<!\d)((?:19|20)\d\d)([-/.])(0?[1-9]|1[0-2])\2(0?[1-9]|[12]\d|3[01])(?!\d)"), "y-m-d", ""),
    (re.compile(r"(?<!\d)(0?[1-9]|[12]\d|3[01])([-/.])(0?[1-9]|1[0-2])\2((?:19|20)\d\d)(?!\d)"), "d-m-y", ""),
    (re.compile(r"(?<!\d)(0?[1-9]|1[0-2])([-/.])(0?[1-9]|[12]\d|3[01])\2((?:19|20)\d\d)(?!\d)"), "m-d-y", ""),
]
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w.])\+?\d[\d ()-]{7,}\d(?![\w.])")


def _shifted(y: int, m: int, d: int, shift: Callable[[date], date] | None) -> date | None:
    try:
        value = date(y, m, d)
    except ValueError:
        return None
    return shift(value) if shift else None


class Scrubber:
    """Replace identifying values of one instance found inside free text.

    Parameters
    ----------
    terms
        Values the profile removes from this instance (names and their components, IDs,
        addresses, phone numbers, …); matched case-insensitively as whole words.
    shift
        Date shift of this patient (Retain Longitudinal Modified Dates); dates in text are
        replaced by the shifted date in the same layout, or removed when None.
    """

    def __init__(self, terms: Iterable[str], shift: Callable[[date], date] | None = None):
        words: set[str] = set()
        for term in terms:
            t = term.strip()
            if len(t) >= 3 and not t.isdigit() or (t.isdigit() and len(t) >= 4):
                words.add(t)
        self.terms = sorted(words, key=len, reverse=True)
        self._shift = shift
        self._re = (
            re.compile(
                r"(?<![0-9A-Za-z])(?:" + "|".join(re.escape(w) for w in self.terms) + r")(?![0-9A-Za-z])",
                re.IGNORECASE,
            )
            if self.terms
            else None
        )

    def scrub(self, text: str) -> str:
        """The text with this instance's identifiers, e-mail addresses, phone numbers and dates out."""
        if not text:
            return text
        out = text
        if self._re is not None:
            out = self._re.sub(REDACTED, out)
        out = _EMAIL.sub(REDACTED, out)
        out = self._dates(out)
        out = _PHONE.sub(REDACTED, out)
        return out

    def _dates(self, text: str) -> str:
        def ymd(m: re.Match[str]) -> str:
            new = _shifted(int(m[1]), int(m[2]), int(m[3]), self._shift)
            return new.strftime("%Y%m%d") if new else REDACTED

        def y_m_d(m: re.Match[str]) -> str:
            new = _shifted(int(m[1]), int(m[3]), int(m[4]), self._shift)
            return new.strftime(f"%Y{m[2]}%m{m[2]}%d") if new else REDACTED

        def d_m_y(m: re.Match[str]) -> str:
            new = _shifted(int(m[4]), int(m[3]), int(m[1]), self._shift)
            return new.strftime(f"%d{m[2]}%m{m[2]}%Y") if new else REDACTED

        def m_d_y(m: re.Match[str]) -> str:
            new = _shifted(int(m[4]), int(m[1]), int(m[3]), self._shift)
            return new.strftime(f"%m{m[2]}%d{m[2]}%Y") if new else REDACTED

        text = _DATE_PATTERNS[0][0].sub(ymd, text)
        text = _DATE_PATTERNS[1][0].sub(y_m_d, text)
        text = _DATE_PATTERNS[2][0].sub(d_m_y, text)
        return _DATE_PATTERNS[3][0].sub(m_d_y, text)


def name_terms(value: str) -> list[str]:
    """A person name and its components (PS3.5 6.2: groups by '=', components by '^')."""
    out = [value]
    for group in value.split("="):
        out.append(group)
        for comp in group.split("^"):
            out.append(comp)
            out.extend(comp.split())
    return [t for t in out if t.strip()]


def shift_by(days: int) -> Callable[[date], date]:
    """A date shift of ``days`` days."""
    delta = timedelta(days=days)
    return lambda d: d + delta


# --- generalisers (profile [generalize]) -----------------------------------------------------

_UK_POSTCODE = re.compile(r"\b([A-Z]{1,2})(\d[A-Z\d]?)\s*(\d[A-Z]{2})\b", re.IGNORECASE)
_ZIP = re.compile(r"\b(\d{3})\d{2}(?:-\d{4})?\b")


def postcode_district(value: str) -> str | None:
    """UK postcode → outward code (district), e.g. 'SW1A 1AA' → 'SW1A'; None when absent."""
    m = _UK_POSTCODE.search(value)
    return (m[1] + m[2]).upper() if m else None


def postcode_area(value: str) -> str | None:
    """UK postcode → area letters, e.g. 'SW1A 1AA' → 'SW'; None when absent."""
    m = _UK_POSTCODE.search(value)
    return m[1].upper() if m else None


def zip3(value: str) -> str | None:
    """US ZIP code → its first three digits ('02139' → '021'); None when absent."""
    m = _ZIP.search(value)
    return m[1] if m else None
