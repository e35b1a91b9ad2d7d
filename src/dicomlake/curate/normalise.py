"""Normalisers: Patient's Age, file sizes, person names, dates and times as people write them.

Each function takes what a header (or a person) wrote and returns one canonical value, or
``None`` when the text cannot be read; none of them raises on bad input, because curation
reads whatever PACS sends (STYLE.md §8) and reports what it could not read as a flag.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

from dicomlake.dicom import values as V

# ---- Patient's Age (PS3.5 Table 6.2-1, VR AS: "nnnD", "nnnW", "nnnM" or "nnnY") ----------

_AS = re.compile(r"^\d{3}[DWMY]$")
_AGE_FREE = re.compile(
    r"^\s*(?P<n>\d+(?:[.,]\d+)?)\s*(?P<unit>"
    r"y|yr|yrs|year|years|a|j|ans?|jahre?|"
    r"m|mo|mos|mon|mth|mths|month|months|"
    r"w|wk|wks|week|weeks|"
    r"d|dy|day|days)?\.?\s*(?:old)?\s*$",
    re.IGNORECASE,
)
_UNIT_OF = {
    "y": "Y", "yr": "Y", "yrs": "Y", "year": "Y", "years": "Y", "a": "Y", "j": "Y", "an": "Y",
    "ans": "Y", "jahr": "Y", "jahre": "Y",
    "m": "M", "mo": "M", "mos": "M", "mon": "M", "mth": "M", "mths": "M", "month": "M", "months": "M",
    "w": "W", "wk": "W", "wks": "W", "week": "W", "weeks": "W",
    "d": "D", "dy": "D", "day": "D", "days": "D",
}  # fmt: skip
_YEARS_PER = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


@dataclass(frozen=True, slots=True)
class PatientAge:
    """A Patient's Age read from any of its written forms."""

    number: int
    """The count of ``unit``s."""
    unit: str
    """``D``, ``W``, ``M`` or ``Y`` as in PS3.5 AS."""
    conformant: bool
    """True when the text was already a valid AS value (``054Y``)."""

    @property
    def years(self) -> float:
        return self.number * _YEARS_PER[self.unit]

    @property
    def as_string(self) -> str:
        """The AS encoding, e.g. ``054Y``."""
        return f"{self.number:03d}{self.unit}"

    def __str__(self) -> str:
        return self.as_string


def parse_age(text: str | None) -> PatientAge | None:
    """Read a Patient's Age written as AS (``054Y``, ``006M``, ``003W``, ``010D``) or loosely
    (``54``, ``54y``, ``54 years``, ``6 months``, ``3 wks``); None when unreadable.

    >>> parse_age("054Y").years, parse_age("006M").as_string, parse_age("3 wks").as_string
    (54.0, '006M', '003W')
    >>> parse_age("54 years").conformant, parse_age("abc") is None
    (False, True)
    """
    if text is None:
        return None
    t = text.strip().strip("\x00")
    if not t:
        return None
    if _AS.match(t):
        return PatientAge(int(t[:3]), t[3], True)
    m = _AGE_FREE.match(t)
    if not m:
        return None
    n = float(m.group("n").replace(",", "."))
    unit = _UNIT_OF[m.group("unit").lower()] if m.group("unit") else "Y"
    if n < 0 or math.isnan(n):
        return None
    n_int = round(n)
    if n_int > 999:
        return None
    return PatientAge(n_int, unit, False)


def age_between(birth: dt.date | None, on: dt.date | None) -> PatientAge | None:
    """Patient's Age on a date from the birth date, in the unit a modality would write:
    days under 4 weeks, weeks under 3 months... months under 2 years, years after.

    >>> age_between(dt.date(1970, 6, 1), dt.date(2024, 5, 31)).as_string
    '053Y'
    >>> age_between(dt.date(2024, 1, 1), dt.date(2024, 1, 11)).as_string
    '010D'
    """
    if birth is None or on is None or on < birth:
        return None
    days = (on - birth).days
    if days < 28:
        return PatientAge(days, "D", True)
    months = (on.year - birth.year) * 12 + (on.month - birth.month) - (1 if on.day < birth.day else 0)
    if months < 3:
        return PatientAge(days // 7, "W", True)
    if months < 24:
        return PatientAge(months, "M", True)
    years = on.year - birth.year - (1 if (on.month, on.day) < (birth.month, birth.day) else 0)
    return PatientAge(min(years, 999), "Y", True)


def patient_age(text: str | None, birth: dt.date | None, on: dt.date | None) -> PatientAge | None:
    """The Patient's Age as written, else computed from birth date and study date."""
    return parse_age(text) or age_between(birth, on)


# ---- file sizes -------------------------------------------------------------------------


class SizeSystem(Enum):
    """How multiples of bytes are counted."""

    SI = "si"
    """Powers of 1000 (kB, MB, GB; IEC 80000-13 and the SI): what file managers and disk
    vendors show, and what ``500 KB`` in the Secondary Capture catalogue means."""
    IEC = "iec"
    """Powers of 1024 (KiB, MiB, GiB; IEC 80000-13 binary prefixes)."""


_SIZE = re.compile(r"^\s*(?P<n>[0-9][0-9 ,.'_]*)\s*(?P<unit>[a-zA-Z]*)\s*$")
_PREFIX = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_size(text: str | None, *, bare_prefix: SizeSystem = SizeSystem.SI) -> int | None:
    """Bytes from a size as people write it; None when unreadable.

    ``kB``/``KB``/``MB``/``GB``/``TB`` are SI (powers of 1000); ``KiB``/``MiB``/``GiB``/``TiB``
    are IEC (powers of 1024). A bare prefix (``500K``, ``2M``) follows ``bare_prefix`` (SI by
    default). ``1,024 KB`` uses a thousands separator; ``1,5 MB`` a decimal comma.

    >>> parse_size("500 KB"), parse_size("2 MB"), parse_size("1.5 GiB"), parse_size("1,5 MB")
    (500000, 2000000, 1610612736, 1500000)
    >>> parse_size("12345"), parse_size("3 bytes"), parse_size("lots")
    (12345, 3, None)
    """
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m:
        return None
    num = m.group("n").replace(" ", "").replace("_", "").replace("'", "")
    if "," in num and "." in num:
        num = num.replace(",", "") if num.rfind(",") < num.rfind(".") else num.replace(".", "").replace(",", ".")
    elif "," in num:
        parts = num.split(",")
        num = num.replace(",", "") if all(len(p) == 3 for p in parts[1:]) else num.replace(",", ".")
    try:
        n = float(num)
    except ValueError:
        return None
    unit = m.group("unit")
    u = unit.upper()
    if u in ("", "B", "BYTE", "BYTES", "O", "OCTETS"):
        power, base = 0, 1000
    elif len(u) == 3 and u.endswith("IB") and u[0] in _PREFIX:
        power, base = _PREFIX[u[0]], 1024
    elif len(u) == 2 and u.endswith("B") and u[0] in _PREFIX:
        power, base = _PREFIX[u[0]], 1000
    elif len(u) == 1 and u in _PREFIX:
        power, base = _PREFIX[u], (1000 if bare_prefix is SizeSystem.SI else 1024)
    else:
        return None
    return int(n * base**power + 0.5)  # n ≥ 0: round half up


def format_size(n: float | None, system: SizeSystem | str = SizeSystem.SI) -> str | None:
    """A size for people: ``500 KB``, ``2 MB``, ``1.5 GB`` (SI) or ``1.5 GiB`` (IEC).

    >>> format_size(500000), format_size(2_000_000), format_size(1536, "iec"), format_size(999)
    ('500 KB', '2 MB', '1.5 KiB', '999 B')
    """
    if n is None:
        return None
    sys_ = SizeSystem(system)
    base = 1000 if sys_ is SizeSystem.SI else 1024
    units = ["B", "KB", "MB", "GB", "TB", "PB"] if sys_ is SizeSystem.SI else ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    v = float(n)
    i = 0
    while abs(v) >= base and i < len(units) - 1:
        v /= base
        i += 1
    text = f"{v:.1f}".rstrip("0").rstrip(".") if i else f"{int(v)}"
    return f"{text} {units[i]}"


# ---- person names (PS3.5 6.2.1, VR PN) --------------------------------------------------

_TITLES = {"DR", "MR", "MRS", "MS", "MISS", "PROF", "SR", "SRA", "HERR", "FRAU", "MME", "M"}


@dataclass(frozen=True, slots=True)
class PersonName:
    """A person name split into the five PN components of its alphabetic group."""

    family: str
    given: str
    middle: str = ""
    prefix: str = ""
    suffix: str = ""

    @property
    def display(self) -> str:
        """``Family, Given Middle`` in title case; ``Family`` alone when there is no given name."""
        first = " ".join(p for p in (self.given, self.middle) if p)
        fam = self.family
        return f"{fam}, {first}" if fam and first else (fam or first)

    @property
    def key(self) -> str:
        """A matching key: upper case, accents and punctuation removed, prefix/suffix dropped,
        so that ``Smith^Jane``, ``SMITH^JANE^^DR`` and ``Smith, Jane`` share one key."""
        return "^".join(_fold(p) for p in (self.family, self.given, self.middle)).rstrip("^")


def _fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c))
    return re.sub(r"[^A-Z0-9 ]", "", s.upper()).strip()


def _title(s: str) -> str:
    return " ".join(w[:1].upper() + w[1:].lower() if w.isupper() or w.islower() else w for w in s.split())


def parse_person_name(text: str | None) -> PersonName | None:
    """Read a PN value (``Family^Given^Middle^Prefix^Suffix``, first component group only) or a
    name written as ``Family, Given`` or ``Given Family``.

    >>> parse_person_name("SMITH^JANE^^DR").display
    'Smith, Jane'
    >>> parse_person_name("Smith, Jane").key == parse_person_name("smith^jane").key
    True
    >>> parse_person_name("Jane Smith").key
    'SMITH^JANE'
    """
    if text is None:
        return None
    t = text.split("=")[0].strip().strip("\x00")
    if not t:
        return None
    if "^" in t:
        parts = [p.strip() for p in t.split("^")] + [""] * 5
        return PersonName(_title(parts[0]), _title(parts[1]), _title(parts[2]), parts[3], parts[4])
    if "," in t:
        fam, _, rest = t.partition(",")
        words = rest.split()
        prefix = words.pop(0) if words and words[0].upper().rstrip(".") in _TITLES else ""
        return PersonName(_title(fam.strip()), _title(words[0]) if words else "", _title(" ".join(words[1:])), prefix)
    words = t.split()
    prefix = words.pop(0) if len(words) > 1 and words[0].upper().rstrip(".") in _TITLES else ""
    if len(words) == 1:
        return PersonName(_title(words[0]), "", "", prefix)
    return PersonName(_title(words[-1]), _title(words[0]), _title(" ".join(words[1:-1])), prefix)


# ---- dates and times with and without offsets (PS3.5 DA, TM, DT; PS3.3 C.12.1.1.8) -------

_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_offset(text: str | None) -> dt.timezone | None:
    """A UTC offset ``+HHMM``/``-HHMM`` (Timezone Offset From UTC, or the tail of a DT)."""
    if not text:
        return None
    m = _OFFSET.match(text.strip())
    if not m:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 14 or minutes >= 60:
        return None
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if m.group(1) == "-" else delta)


def parse_date(text: str | None) -> dt.date | None:
    """``YYYYMMDD``, the retired ``YYYY.MM.DD``, or ISO ``YYYY-MM-DD``."""
    if not text:
        return None
    t = text.strip()
    m = _ISO_DATE.match(t)
    if m:
        try:
            return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            return None
    return V.parse_da(t)


def parse_time(text: str | None) -> dt.time | None:
    """``HHMMSS.FFFFFF`` and shorter forms, or ``HH:MM:SS``."""
    return V.parse_tm(text)


def parse_datetime(text: str | None, timezone_offset_from_utc: str | None = None) -> dt.datetime | None:
    """A DT value; timezone-aware when it carries an offset (``&ZZXX``) or when the
    instance's Timezone Offset From UTC (0008,0201) is given, naive otherwise.

    >>> parse_datetime("20240301101500.5+0100").isoformat()
    '2024-03-01T10:15:00.500000+01:00'
    >>> parse_datetime("20240301101500", "-0500").utcoffset()
    datetime.timedelta(days=-1, seconds=68400)
    >>> parse_datetime("20240301").isoformat()
    '2024-03-01T00:00:00'
    """
    if not text:
        return None
    t = text.strip()
    tz = None
    for sign in ("+", "-"):
        idx = t.find(sign, 4)
        if idx > 0:
            tz = parse_offset(t[idx:])
            if tz is None:
                return None
            break
    naive = V.parse_dt(t)
    if naive is None:
        return None
    tz = tz or parse_offset(timezone_offset_from_utc)
    return naive.replace(tzinfo=tz) if tz else naive


def combine_date_time(
    date: str | dt.date | None, time: str | dt.time | None, timezone_offset_from_utc: str | None = None
) -> dt.datetime | None:
    """A date and a time (midnight when missing), aware when an offset is given."""
    d = parse_date(date) if isinstance(date, str) else date
    if d is None:
        return None
    t = parse_time(time) if isinstance(time, str) else time
    out = dt.datetime.combine(d, t or dt.time(0))
    tz = parse_offset(timezone_offset_from_utc)
    return out.replace(tzinfo=tz) if tz else out


def to_utc(value: dt.datetime, assume: dt.tzinfo | None = None) -> dt.datetime | None:
    """The instant in naive UTC; a naive value is taken to be in ``assume`` (None: unknown →
    None, because a naive local time cannot be placed on the UTC line)."""
    if value.tzinfo is None:
        if assume is None:
            return None
        value = value.replace(tzinfo=assume)
    return value.astimezone(dt.UTC).replace(tzinfo=None)


__all__ = [
    "PatientAge", "PersonName", "SizeSystem", "age_between", "combine_date_time", "format_size",
    "parse_age", "parse_date", "parse_datetime", "parse_offset", "parse_person_name", "parse_size",
    "parse_time", "patient_age", "to_utc",
]  # fmt: skip
