"""Free-text scrubbing (Clean Descriptors): an instance's own identifiers and dates out of text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, timedelta

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

    def __init__(self, terms: Iterable[str], shift: Callable[[date], date] | None = None):
        words: set[str] = set()
        for term in terms:
            t = term.strip()
            wide = not t.isascii()  # CJK names are often two characters long
            if ((len(t) >= 3 or (wide and len(t) >= 2)) and not t.isdigit()) or (t.isdigit() and len(t) >= 4):
                words.add(t)
        self.terms = sorted(words, key=len, reverse=True)
        self._shift = shift
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
        Structured Content): :meth:`scrub`, then whatever looks like a person's name or an
        identifier, whoever's it is — ``derived by Smith``, ``Dr. Jones``, ``Smith^John``,
        ``MRN4471902``, an NHS number, a postcode, an e-mail address.

        Free text is kept only in so far as it is not known to identify: the words left are
        the instance's clinical vocabulary; what this cannot recognise (a bare name written
        in lower case with no cue) is the documented limit, and the kept values are reported.
        """
        if not text:
            return text
        out = self.scrub(text)
        out = _CARET_NAME.sub(REDACTED, out)
        out = _TITLED_NAME.sub(lambda m: m[1] + REDACTED, out)
        out = _CUED_NAME.sub(lambda m: m[1] + REDACTED, out)
        out = _IDENTIFIER.sub(_identifier, out)
        return _UK_POSTCODE.sub(REDACTED, out)


# Person names written in free text: Smith^John (PN form); after a title (Dr. Smith, Prof Jones);
# after a cue verb or label ("derived by Smith", "reported by: J. Smith", "patient Smith",
# "name: Smith"). A name is one or two capitalised words (initials allowed), never a known
# acronym in capitals (CT, MR, HEAD), so "derived by CT" stays.
_NAME_WORD = r"(?:[A-Z]\.|[A-Z][a-z\u00C0-\u024F'’-]+)"
_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}}"
_NAME_CHARS = r"[A-Za-z\u00C0-\u024F'’-]"
_CARET_NAME = re.compile(rf"{_NAME_CHARS}+\^{_NAME_CHARS}+(?:\^{_NAME_CHARS}*){{0,3}}")
_TITLES = r"(?:Dr|Drs|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Doctor|Sr|Nurse|Sister)"
_TITLED_NAME = re.compile(rf"(\b{_TITLES}\.?[ \t]+){_NAME}")
_CUED_NAME = re.compile(
    r"(\b(?i:by|per|from|attn|cc|patient|pt|name|surname|forename|signed|reported|dictated|"
    r"verified|approved|authori[sz]ed|referred|requested|operator|technologist|radiographer|"
    r"physician|consultant|radiologist)\b[:.]?[ \t]*(?:[:\-][ \t]*)?)" + rf"(?!{_TITLES}\b){_NAME}"
)
# Identifier-like tokens: letters and at least four digits mixed (MRN4471902, AB-123456), or a
# run of six or more digits (an NHS number, a hospital number, an accession number).
_IDENTIFIER = re.compile(r"(?<![\w.])(?=[\w-]*\d)(?:[A-Za-z][\w-]*\d[\w-]*|\d[\w-]*[A-Za-z][\w-]*|\d{6,})(?![\w.])")


def _identifier(m: re.Match[str]) -> str:
    token = m[0]
    digits = sum(c.isdigit() for c in token)
    if token.isdigit():
        return REDACTED if len(token) >= 6 else token
    # units and short codes stay (5mm, T1w, 3D, CTDIvol32, 120kV): four digits at least
    return REDACTED if digits >= 4 else token


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
