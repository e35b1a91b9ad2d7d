"""Free-text scrubbing (Clean Descriptors): an instance's own identifiers and dates out of text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, timedelta

from dicomlake.security.phi import Term, TextDetector

REDACTED = "***"

# Dates written in free text: 20240131, 2024-01-31, 2024/01/31, 31/01/2024, 31.01.2024, 31-01-2024.
# One alternation, so that each date is replaced exactly once (day-first wins over month-first).
_DATES = re.compile(
    r"(?<!\d)(?:"
    r"(?P<ymd>(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))"
    r"|(?P<y>(?:19|20)\d\d)(?P<s1>[-/.])(?P<m>0?[1-9]|1[0-2])(?P=s1)(?P<d>0?[1-9]|[12]\d|3[01])"
    r"|(?P<d2>0?[1-9]|[12]\d|3[01])(?P<s2>[-/.])(?P<m2>0?[1-9]|1[0-2])(?P=s2)(?P<y2>(?:19|20)\d\d)"
    r"|(?P<m3>0?[1-9]|1[0-2])(?P<s3>[-/.])(?P<d3>0?[1-9]|[12]\d|3[01])(?P=s3)(?P<y3>(?:19|20)\d\d)"
    r")(?!\d)"
)
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

    def __init__(
        self,
        terms: Iterable[str],
        shift: Callable[[date], date] | None = None,
        phi_terms: Iterable[Term] = (),
    ):
        words: set[str] = set()
        for term in terms:
            t = term.strip()
            wide = not t.isascii()  # CJK names are often two characters long
            if ((len(t) >= 3 or (wide and len(t) >= 2)) and not t.isdigit()) or (t.isdigit() and len(t) >= 4):
                words.add(t)
        self.terms = sorted(words, key=len, reverse=True)
        self._shift = shift
        self._detector = TextDetector([*phi_terms, *(Term(w, "scrub") for w in words)])
        self._scrubbed: dict[str, str] = {}
        self._cleaned: dict[str, str] = {}
        self._re = (
            re.compile(
                r"(?<![0-9A-Za-z])(?:" + "|".join(re.escape(w) for w in self.terms) + r")(?![0-9A-Za-z])",
                re.IGNORECASE,
            )
            if self.terms
            else None
        )

    def scrub(self, text: str) -> str:
        """The text with this instance's identifiers, e-mail addresses, phone numbers and dates out.

        Results are remembered per instance: an SR repeats the same code meanings and units
        thousands of times (a large RDSR spent a sixth of its walk here).
        """
        if not text:
            return text
        hit = self._scrubbed.get(text)
        if hit is None:
            hit = self._scrubbed[text] = self._scrub(text)
        return hit

    def _scrub(self, text: str) -> str:
        out = text
        if self._re is not None:
            out = self._re.sub(REDACTED, out)
        out = _EMAIL.sub(REDACTED, out)
        out = _PHONE.sub(lambda m: m[0] if _DATES.fullmatch(m[0].strip()) else REDACTED, out)
        return _DATES.sub(self._date, out)

    def _date(self, m: re.Match[str]) -> str:
        g = m.groupdict()
        if g["ymd"]:
            y, mo, d, layout = int(g["ymd"][:4]), int(g["ymd"][4:6]), int(g["ymd"][6:]), "%Y%m%d"
        elif g["y"]:
            y, mo, d, layout = int(g["y"]), int(g["m"]), int(g["d"]), f"%Y{g['s1']}%m{g['s1']}%d"
        elif g["y2"]:
            y, mo, d, layout = int(g["y2"]), int(g["m2"]), int(g["d2"]), f"%d{g['s2']}%m{g['s2']}%Y"
        else:
            y, mo, d, layout = int(g["y3"]), int(g["m3"]), int(g["d3"]), f"%m{g['s3']}%d{g['s3']}%Y"
        new = _shifted(y, mo, d, self._shift)
        return new.strftime(layout) if new else REDACTED

    def clean(self, text: str) -> str:
        """PS3.15 cleaning of a descriptor or structured-content text (Clean Descriptors, Clean
        Structured Content): whatever the shared PHI detector (:mod:`dicomlake.security.phi`,
        the one the burned-in text screen uses) judges identifying is removed — this
        instance's own values, dates, NHS and telephone numbers, postcodes, e-mail addresses,
        identifier-like tokens, values after a label, names after a title, a person label or a
        cue (``derived by Smith``, ``Dr. Jones``, ``Witness: A. Nwosu``, ``Smith^John``) — and
        :meth:`scrub` runs over the rest. Numeric dates are shifted, not removed, when the
        profile modifies dates.

        Free text is kept only in so far as it is not known to identify: what this cannot
        recognise (a bare name written in lower case with no cue) is the documented limit,
        and the kept values are reported.
        """
        if not text:
            return text
        hit = self._cleaned.get(text)
        if hit is not None:
            return hit
        pieces: list[str] = []
        pos = 0
        for span in self._detector.spans(text):
            pieces.append(self.scrub(text[pos : span.start]))
            seg = text[span.start : span.end]
            if span.reason in ("pattern:date", "header", "mixed") and self._shift is not None and _DATES.fullmatch(seg):
                pieces.append(_DATES.sub(self._date, seg))
            else:
                pieces.append(REDACTED)
            pos = span.end
        pieces.append(self.scrub(text[pos:]))
        out = self._cleaned[text] = "".join(pieces)
        return out


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
