"""Value representations (PS3.5 §6.2): raw value bytes to text, numbers and DICOM JSON values."""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import struct
from functools import lru_cache

# PS3.5 Table 6.2-1, grouped by how a value is encoded.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})  # backslash is not a delimiter here
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # PS3.5 §6.1.2.3
NUMBER_TEXT_VRS = frozenset({"DS", "IS"})
BINARY_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
BINARY_NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
LEADING_SPACE_SIGNIFICANT = frozenset({"LT", "ST", "UT", "UR"})

_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$")


@lru_cache(maxsize=4096)
def _struct(fmt: str, little: bool, count: int) -> struct.Struct:
    return struct.Struct(("<" if little else ">") + fmt * count)


class TextDecoder:
    """Decodes text values under one Specific Character Set (0008,0005)."""

    __slots__ = ("_encodings", "declared", "iso2022", "terms")

    def __init__(self, specific_character_set: str | None = None) -> None:
        terms = [t.strip() for t in (specific_character_set or "").split("\\")]
        if not any(terms):
            terms = ["ISO_IR 6"]
        elif not terms[0]:
            terms[0] = "ISO_IR 6"
        self.terms = terms
        self.declared = bool(specific_character_set)
        # PS3.5 §6.1.2.5: with code extensions (ISO 2022 escape sequences) a value can be
        # all 7-bit bytes and still not ASCII (ISO 2022 IR 87 is 7-bit JIS X 0208)
        self.iso2022 = any(t.startswith("ISO 2022") for t in terms)
        self._encodings: list[str] | None = None

    @property
    def encodings(self) -> list[str]:
        """Python codecs for the declared terms (pydicom's table; loaded on first non-ASCII text)."""
        if self._encodings is None:
            from pydicom.charset import convert_encodings

            try:
                self._encodings = convert_encodings(self.terms)
            except Exception:  # unknown term: pydicom warns; fall back to Latin-1 as dcmtk does
                self._encodings = ["latin_1"]
        return self._encodings

    def text(self, value: bytes, vr: str) -> str:
        """Return a text value decoded and stripped of padding, multiple values kept as ``\\``."""
        if value.isascii() and not (self.iso2022 and b"\x1b" in value):
            s = value.decode("ascii")
        elif vr in CHARSET_VRS:
            from pydicom.charset import decode_bytes
            from pydicom.valuerep import PersonName

            if vr == "PN":
                s = "\\".join(str(PersonName(v).decode(self.encodings)) for v in value.split(b"\\"))
            else:
                s = decode_bytes(value, self.encodings, {9, 10, 12, 13, 0x5C})
        else:
            s = value.decode("latin-1")
        if vr == "UI":
            return s.rstrip("\x00 ")
        if vr in LEADING_SPACE_SIGNIFICANT:
            return s.rstrip("\x00 ")
        return s.strip("\x00 ") if "\\" not in s else "\\".join(p.strip("\x00 ") for p in s.split("\\"))


def binary_numbers(value: bytes, vr: str, little: bool) -> tuple[float | int, ...]:
    """Unpack US/SS/UL/SL/FL/FD/SV/UV values."""
    size = BINARY_NUMBER_SIZES[vr]
    n = len(value) // size
    if n == 0:
        return ()
    return _struct(BINARY_NUMBER_FORMATS[vr], little, n).unpack_from(value, 0)


_F32 = struct.Struct("<f")


@lru_cache(maxsize=4096)
def float32_text(x: float) -> str:
    """The shortest decimal that reads back as the same single-precision float, as Python float
    text: an FL of 0.8 is stored as 0.800000011920929 in binary, and ``0.8`` is what was meant
    (what numpy and dcmtk print for it). Not finite: ``nan``, ``inf``, ``-inf``."""
    if not math.isfinite(x):
        return repr(x)
    pack, unpack = _F32.pack, _F32.unpack
    for digits in range(1, 9):
        s = f"{x:.{digits}g}"
        if unpack(pack(float(s)))[0] == x:
            return repr(float(s))
    return repr(float(f"{x:.9g}"))  # 9 significant digits always round-trip a float32


def attribute_tags(value: bytes, little: bool) -> list[str]:
    """Unpack AT values into ``GGGGEEEE`` strings (PS3.18 F.2.7)."""
    n = len(value) // 4
    if n == 0:
        return []
    nums = _struct("H", little, 2 * n).unpack_from(value, 0)
    return [f"{nums[i]:04X}{nums[i + 1]:04X}" for i in range(0, 2 * n, 2)]


def first_number(text: str) -> float | None:
    """The first value of a DS/IS text as a float, None when it is not a number."""
    head = text.split("\\", 1)[0].strip()
    if not head:
        return None
    try:
        x = float(head)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def json_number_text(text: str, vr: str) -> str:
    """One DS/IS value as JSON number text (PS3.18 F.2.3), or a JSON string if not a number."""
    t = text.strip()
    if _NUMBER.match(t):
        return t
    try:
        x = float(t)
    except ValueError:
        return _json_string(t)
    if not math.isfinite(x):
        return "null"
    if vr == "IS" or (x.is_integer() and abs(x) < 1e15 and "e" not in t.lower() and "." not in t):
        return str(int(x))
    return repr(x)


def _json_string(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


def inline_binary(value: bytes) -> str:
    """Base64 text for InlineBinary (PS3.18 F.2.7)."""
    return base64.b64encode(value).decode("ascii")


# ---- dates and times (PS3.5 Table 6.2-1 DA, TM, DT) -------------------------------------


def parse_da(text: str | None) -> dt.date | None:
    """``YYYYMMDD`` (and the retired ``YYYY.MM.DD``) to a date; None when invalid."""
    if not text:
        return None
    t = text.strip().replace(".", "").replace("-", "") if len(text) != 8 else text
    if len(t) != 8 or not t.isdigit():
        return None
    try:
        return dt.date(int(t[:4]), int(t[4:6]), int(t[6:8]))
    except ValueError:
        return None


def parse_tm(text: str | None) -> dt.time | None:
    """``HH[MM[SS[.F{1-6}]]]`` (and the retired ``HH:MM:SS``) to a time; None when invalid."""
    if not text:
        return None
    t = text.strip().replace(":", "")
    if not t:
        return None
    frac = 0
    if "." in t:
        t, f = t.split(".", 1)
        f = (f + "000000")[:6]
        if not f.isdigit():
            return None
        frac = int(f)
    if not t.isdigit() or len(t) not in (2, 4, 6):
        return None
    try:
        h = int(t[0:2])
        m = int(t[2:4]) if len(t) >= 4 else 0
        s = int(t[4:6]) if len(t) >= 6 else 0
        if s == 60:
            s = 59  # leap second: PS3.5 allows 60
        return dt.time(h, m, s, frac)
    except ValueError:
        return None


def parse_dt(text: str | None) -> dt.datetime | None:
    """``YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]`` to a naive local datetime (offset dropped)."""
    if not text:
        return None
    t = text.strip()
    for sign in ("+", "-"):
        idx = t.find(sign, 4)
        if idx > 0:
            t = t[:idx]
            break
    date_part, time_part = t[:8], t[8:]
    if len(date_part) < 4 or not date_part.isdigit():
        return None
    y = int(date_part[:4])
    mo = int(date_part[4:6]) if len(date_part) >= 6 else 1
    d = int(date_part[6:8]) if len(date_part) >= 8 else 1
    try:
        day = dt.date(y, mo, d)
    except ValueError:
        return None
    tm = parse_tm(time_part) if time_part else dt.time(0)
    if tm is None:
        return None
    return dt.datetime.combine(day, tm)


def combine(date: dt.date | None, time: dt.time | None) -> dt.datetime | None:
    """Date plus time (midnight when the time is missing); None without a date."""
    if date is None:
        return None
    return dt.datetime.combine(date, time or dt.time(0))


def age_in_years(text: str | None) -> float | None:
    """Patient's Age (AS, PS3.5: ``nnnD|W|M|Y``) in years; lenient about padding and case."""
    if not text:
        return None
    t = text.strip().upper()
    if not t:
        return None
    unit = t[-1]
    num = t[:-1].strip() if unit.isalpha() else t
    if not unit.isalpha():
        unit = "Y"
    try:
        n = float(num)
    except ValueError:
        return None
    factor = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}.get(unit)
    if factor is None or n < 0:
        return None
    return n * factor


def years_between(birth: dt.date | None, on: dt.date | None) -> float | None:
    """Age in years from birth date to a date (e.g. the study date)."""
    if birth is None or on is None or on < birth:
        return None
    return (on - birth).days / 365.25
