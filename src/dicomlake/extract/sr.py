"""SR content trees as plain Python objects, read tolerantly from a pydicom Dataset.

A Structured Report is a tree of content items (PS3.3 C.17.3, Table C.17-6): each item has
a relationship to its parent, a value type, a concept name (a coded entry) and a value
whose attributes depend on the value type (Table C.18.1-1 onwards). This module turns
that tree into frozen :class:`ContentItem` objects so that template readers such as
:mod:`dicomlake.extract.dose` can look items up by concept code, whatever the vendor.

Reading is tolerant on purpose (STYLE §8, "tolerant reader"): a value that pydicom
refuses under ``reading_validation_mode = RAISE`` (a DS such as ``"10.50/ 15.00"``, an
IS such as ``"161.3"``) is re-read from its raw bytes; an item without RelationshipType
or with an unknown value type is kept with what it has; a value that cannot be parsed
becomes absent instead of raising. Nothing here decides what a concept means.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as SeqOf
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

__all__ = [
    "Code",
    "ContentItem",
    "NeedsPydicom",
    "content_tree",
    "content_tree_from_elements",
    "number_values",
    "parse_datetime",
    "sequence_items",
    "template_identifier",
    "text_value",
    "text_values",
]

MAX_DEPTH = 64
"""Deepest content item nesting read; deeper items are dropped (real SRs nest < 10).

Default: 64
"""

# Tags used below (PS3.6); written as numbers so that a missing dictionary entry in an
# old pydicom cannot break the walker.
_CODE_VALUE = 0x00080100
_CODING_SCHEME_DESIGNATOR = 0x00080102
_CODE_MEANING = 0x00080104
_LONG_CODE_VALUE = 0x00080119
_URN_CODE_VALUE = 0x00080120
_MEASUREMENT_UNITS_CODE_SEQUENCE = 0x004008EA
_RELATIONSHIP_TYPE = 0x0040A010
_VALUE_TYPE = 0x0040A040
_CONCEPT_NAME_CODE_SEQUENCE = 0x0040A043
_CONCEPT_CODE_SEQUENCE = 0x0040A168
_DATETIME = 0x0040A120
_DATE = 0x0040A121
_TIME = 0x0040A122
_PERSON_NAME = 0x0040A123
_UID = 0x0040A124
_TEXT_VALUE = 0x0040A160
_FLOATING_POINT_VALUE = 0x0040A161
_MEASURED_VALUE_SEQUENCE = 0x0040A300
_NUMERIC_VALUE = 0x0040A30A
_CONTENT_SEQUENCE = 0x0040A730
_CONTENT_TEMPLATE_SEQUENCE = 0x0040A504
_TEMPLATE_IDENTIFIER = 0x0040DB00

# PS3.5 §6.2: VRs whose value is binary, never text.
_BINARY_VRS = frozenset({"FD", "FL", "SL", "SS", "UL", "US", "SV", "UV", "AT"})
# PS3.5 §6.2: text VRs of the default repertoire, and those Specific Character Set affects.
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_SINGLE_VALUED_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # backslash is not a delimiter


@dataclass(frozen=True, slots=True)
class Code:
    """A coded entry (PS3.3 Table 8.8-1): code value, coding scheme and meaning."""

    value: str
    scheme: str
    meaning: str = ""

    @property
    def key(self) -> str:
        """``"SCHEME:VALUE"``, the form used by lookup tables (``"DCM:113830"``)."""
        return f"{self.scheme}:{self.value}"


@dataclass(frozen=True, slots=True)
class ContentItem:
    """One SR content item with its value and its children, in document order.

    ``text`` holds the value of TEXT, UIDREF, DATETIME, DATE, TIME and PNAME items as
    written; ``code`` the value of a CODE item; ``numbers`` the values of a NUM item
    (several when a vendor writes a multi-valued NumericValue) and ``unit`` its
    measurement unit. Absent or unreadable values are ``None`` or ``()``.
    """

    value_type: str = ""
    relationship: str = ""
    concept: Code | None = None
    text: str | None = None
    code: Code | None = None
    numbers: tuple[float, ...] = ()
    unit: Code | None = None
    children: tuple[ContentItem, ...] = field(default=())

    @property
    def key(self) -> str | None:
        """Concept name as ``"SCHEME:VALUE"``, or ``None`` for an item without one."""
        return self.concept.key if self.concept is not None else None

    def is_(self, keys: Iterable[str] | str) -> bool:
        """True when the concept name is one of ``keys`` (``"DCM:113706"`` form)."""
        if isinstance(keys, str):
            return self.key == keys
        return self.key in set(keys)

    def children_of(self, keys: Iterable[str] | str) -> list[ContentItem]:
        """Direct children whose concept name is one of ``keys``."""
        wanted = {keys} if isinstance(keys, str) else set(keys)
        return [c for c in self.children if c.key in wanted]

    def child(self, keys: Iterable[str] | str) -> ContentItem | None:
        """First direct child whose concept name is one of ``keys``."""
        found = self.children_of(keys)
        return found[0] if found else None

    def walk(self, stop: Iterable[str] = ()) -> Iterator[ContentItem]:
        """Yield every descendant in document order (pre-order), not ``self``.

        Items whose concept is in ``stop`` are yielded but not descended into.
        """
        stops = set(stop)
        pending = list(reversed(self.children))
        while pending:
            item = pending.pop()
            yield item
            if item.key not in stops:
                pending.extend(reversed(item.children))

    @property
    def value_text(self) -> str | None:
        """The value as text: ``text`` for text-like items, the meaning for CODE items."""
        if self.text is not None:
            return self.text
        if self.code is not None:
            return self.code.meaning or self.code.value or None
        return None


def content_tree(ds: Dataset) -> ContentItem | None:
    """Return the SR document's root content item, or ``None`` when ``ds`` is not an SR.

    The root is the dataset itself (PS3.3 C.17.3: the SR Document Content Module holds
    the root CONTAINER); it has no relationship type.
    """
    if not isinstance(ds, Dataset) or _CONTENT_SEQUENCE not in ds:
        return None
    if _CONCEPT_NAME_CODE_SEQUENCE not in ds:
        return None
    return _item(ds, depth=0)


class NeedsPydicom(Exception):
    """An element :func:`content_tree_from_elements` leaves to pydicom (non-ASCII text, a UN
    value, a binary VR where text is expected): read the tree with :func:`content_tree`."""


def content_tree_from_elements(elements: SeqOf[tuple[Any, ...]], little_endian: bool = True) -> ContentItem | None:
    """:func:`content_tree` over the elements :mod:`dicomlake.dicom.reader` parsed, without
    building pydicom Datasets — the same tree, ~3× faster on an RDSR of 2,000 items.

    Raises :class:`NeedsPydicom` when an element needs pydicom's conversions (character
    sets, UN); the caller then reads the tree with :func:`content_tree`.
    """
    root = _as_map(elements)
    if _CONTENT_SEQUENCE not in root or _CONCEPT_NAME_CODE_SEQUENCE not in root:
        return None
    return _item_el(root, 0, little_endian)


def _as_map(elements: SeqOf[tuple[Any, ...]]) -> dict[int, tuple[str, Any]]:
    return {tag: (vr, value) for tag, vr, value, _length in elements}


def _texts_el(item: dict[int, tuple[str, Any]], tag: int) -> list[str]:
    """``text_values`` of a raw element: the same splitting as :func:`_fast_text_values`."""
    hit = item.get(tag)
    if hit is None:
        return []
    vr, value = hit
    if value is None:
        return []
    if vr not in _ASCII_VRS and vr not in _CHARSET_VRS:
        raise NeedsPydicom(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr}")
    if not isinstance(value, bytes) or not value.isascii() or b"\x1b" in value:
        raise NeedsPydicom(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not ASCII")
    text = value.decode("ascii")
    if vr in _SINGLE_VALUED_TEXT_VRS:
        stripped = text.rstrip(" \x00")
        return [stripped] if stripped.strip() else []
    return [t for t in (part.strip(" \x00") for part in text.split("\\")) if t]


def _items_el(item: dict[int, tuple[str, Any]], tag: int) -> list[dict[int, tuple[str, Any]]]:
    hit = item.get(tag)
    if hit is None or hit[0] != "SQ" or not isinstance(hit[1], list):
        if hit is not None and hit[0] != "SQ":
            raise NeedsPydicom(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is {hit[0]}, not SQ")
        return []
    return [_as_map(sub) for sub in hit[1]]


def _code_el(item: dict[int, tuple[str, Any]]) -> Code | None:
    value = next(
        (found[0] for tag in (_CODE_VALUE, _LONG_CODE_VALUE, _URN_CODE_VALUE) if (found := _texts_el(item, tag))),
        "",
    )
    scheme = next(iter(_texts_el(item, _CODING_SCHEME_DESIGNATOR)), "").upper()
    meaning = next(iter(_texts_el(item, _CODE_MEANING)), "")
    if not value and not meaning:
        return None
    return Code(value=value, scheme=scheme, meaning=meaning)


def _first_code_el(item: dict[int, tuple[str, Any]], tag: int) -> Code | None:
    for sub in _items_el(item, tag):
        code = _code_el(sub)
        if code is not None:
            return code
    return None


def _floats_el(item: dict[int, tuple[str, Any]], tag: int, little: bool) -> list[float]:
    hit = item.get(tag)
    if hit is None or hit[1] is None:
        return []
    vr, value = hit
    if vr != "FD" or not isinstance(value, bytes) or len(value) % 8:
        raise NeedsPydicom(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} of {len(value)} bytes")
    n = len(value) // 8
    values = struct.unpack(("<" if little else ">") + "d" * n, value)
    return _numbers(str(v) for v in values)


def _item_el(item: dict[int, tuple[str, Any]], depth: int, little: bool) -> ContentItem:
    value_type = next(iter(_texts_el(item, _VALUE_TYPE)), "").upper()
    relationship = next(iter(_texts_el(item, _RELATIONSHIP_TYPE)), "").upper()
    concept = _first_code_el(item, _CONCEPT_NAME_CODE_SEQUENCE)
    text: str | None = None
    code: Code | None = None
    numbers: tuple[float, ...] = ()
    unit: Code | None = None
    if value_type == "CODE":
        code = _first_code_el(item, _CONCEPT_CODE_SEQUENCE)
    elif value_type == "NUM":
        for measured in _items_el(item, _MEASURED_VALUE_SEQUENCE)[:1]:
            numbers = tuple(_numbers(_texts_el(measured, _NUMERIC_VALUE)))
            if not numbers:
                numbers = tuple(_floats_el(measured, _FLOATING_POINT_VALUE, little))
            unit = _first_code_el(measured, _MEASUREMENT_UNITS_CODE_SEQUENCE)
    else:
        for tag in (_TEXT_VALUE, _UID, _DATETIME, _DATE, _TIME, _PERSON_NAME):
            found = _texts_el(item, tag)
            if found:
                text = "\\".join(found) if tag in (_TEXT_VALUE, _PERSON_NAME) else found[0]
                break
    children: tuple[ContentItem, ...] = ()
    if depth < MAX_DEPTH:
        children = tuple(_item_el(c, depth + 1, little) for c in _items_el(item, _CONTENT_SEQUENCE))
    return ContentItem(
        value_type=value_type,
        relationship=relationship,
        concept=concept,
        text=text,
        code=code,
        numbers=numbers,
        unit=unit,
        children=children,
    )


def template_identifier(ds: Dataset) -> str | None:
    """Template Identifier of the root (PS3.3 C.18.8: Content Template Sequence), if any."""
    for item in sequence_items(ds, _CONTENT_TEMPLATE_SEQUENCE):
        tid = text_value(item, _TEMPLATE_IDENTIFIER)
        if tid:
            return tid
    return None


def sequence_items(ds: Dataset, tag: int | BaseTag | str) -> list[Dataset]:
    """Items of a sequence element (by tag or keyword), ``[]`` when absent or unreadable."""
    try:
        tag = Tag(tag)
        if tag not in ds:
            return []
        value = ds[tag].value
    except Exception:
        return []
    if isinstance(value, Sequence | list):
        return [item for item in value if isinstance(item, Dataset)]
    return []


def text_values(ds: Dataset, tag: int | BaseTag | str) -> list[str]:
    """The values of an element as stripped strings, ``[]`` when absent or empty.

    Works under any pydicom ``reading_validation_mode``: when conversion is refused the
    raw bytes are split on backslashes (PS3.5 §6.4) and decoded as UTF-8 or Latin-1.
    """
    try:
        tag = Tag(tag)
    except Exception:
        return []
    if tag not in ds:
        return []
    fast = _fast_text_values(ds, tag)
    if fast is not None:
        return fast
    try:
        elem = ds[tag]
        value = elem.value
        vr = elem.VR
    except Exception:
        return _raw_text_values(ds, tag)
    if value is None:
        return []
    if vr in _BINARY_VRS:
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        return [str(v) for v in values]
    if isinstance(value, bytes):
        return _split_bytes(value)
    if isinstance(value, MultiValue | list | tuple):
        return [s for s in (str(v).strip() for v in value) if s]
    if isinstance(value, Sequence):
        return []
    text = str(value).strip()
    return [text] if text else []


def text_value(ds: Dataset, tag: int | BaseTag | str) -> str | None:
    """The first value of an element as a stripped string, ``None`` when absent."""
    values = text_values(ds, tag)
    return values[0] if values else None


def number_values(ds: Dataset, tag: int | BaseTag | str) -> list[float]:
    """The values of a numeric element (DS, IS, FD, ...) as finite floats.

    Values that do not parse as numbers are left out rather than raising.
    """
    return _numbers(text_values(ds, tag))


def _numbers(texts: Iterable[str]) -> list[float]:
    out: list[float] = []
    for text in texts:
        try:
            number = float(text.strip())
        except ValueError:
            continue
        if math.isfinite(number):
            out.append(number)
    return out


# PS3.5 §6.2 DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX, every component after the year optional.
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?\s*([+-]\d{4})?$")


def parse_datetime(text: str | None, time_text: str | None = None) -> datetime | None:
    """Parse a DICOM DT (or a DA plus an optional TM) into a naive datetime.

    Missing components default to their minimum (PS3.5 §6.2); a UTC offset is dropped
    so that the result is the local time the modality wrote. Also accepts the ISO form
    (``2018-01-10T11:35:21``). Returns ``None`` for anything that does not parse.
    """
    if not text:
        return None
    raw = text.strip().replace("-", "", 2) if "T" in text else text.strip()
    raw = raw.replace("T", "").replace(":", "")
    if time_text:
        raw = raw[:8] + time_text.strip().replace(":", "")
    match = _DT.match(raw)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, _offset = match.groups()
    try:
        value = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0))
        # PS3.5 §6.2: seconds may be 60 in a leap second; keep the instant.
        value += timedelta(seconds=int(second or 0))
        if fraction:
            value += timedelta(microseconds=int(fraction.ljust(6, "0")))
    except ValueError:
        return None
    return value


def _fast_text_values(ds: Dataset, tag: BaseTag) -> list[str] | None:
    """Split a not-yet-converted text element's bytes directly, or ``None`` to convert.

    Converting through pydicom costs ~30 µs an element, and an RDSR of 300 events has
    100 000 of them. Values of VRs limited to the default repertoire (PS3.5 §6.1.2) are
    ASCII, and so is most LO/SH/UT text; those are split here. Anything else (binary
    VRs, sequences, non-ASCII text that needs Specific Character Set) returns ``None``.
    """
    try:
        # typed as DataElement, but a not-yet-converted element is a RawDataElement
        raw: object = ds.get_item(tag)
    except Exception:
        return None
    if not isinstance(raw, RawDataElement):
        return None
    vr = raw.VR or _dictionary_vr(tag)
    value = raw.value
    if vr not in _ASCII_VRS and vr not in _CHARSET_VRS:
        return None
    if value is None:
        return []
    if not isinstance(value, bytes) or not value.isascii() or b"\x1b" in value:
        return None
    text = value.decode("ascii")
    if vr in _SINGLE_VALUED_TEXT_VRS:
        stripped = text.rstrip(" \x00")
        return [stripped] if stripped.strip() else []
    return [s for s in (part.strip(" \x00") for part in text.split("\\")) if s]


@functools.cache
def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _split_bytes(value: bytes) -> list[str]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return [s for s in (part.strip(" \x00") for part in text.split("\\")) if s]


def _raw_text_values(ds: Dataset, tag: BaseTag) -> list[str]:
    try:
        raw: object = ds.get_item(tag)
    except Exception:
        return []
    if isinstance(raw, RawDataElement):
        if raw.VR in _BINARY_VRS or not isinstance(raw.value, bytes):
            return []
        return _split_bytes(raw.value)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes):
        return _split_bytes(value)
    return []


def _keys(ds: Dataset) -> dict[int, BaseTag]:
    """The dataset's own tag objects by number: looking elements up with the very key
    object pydicom stored avoids its slow ``BaseTag.__eq__`` on every dictionary probe."""
    try:
        return {int(tag): tag for tag in ds.keys()}  # noqa: SIM118 - iterating converts
    except Exception:
        return {}


def _texts(ds: Dataset, keys: dict[int, BaseTag], tag: int) -> list[str]:
    key = keys.get(tag)
    return text_values(ds, key) if key is not None else []


def _items(ds: Dataset, keys: dict[int, BaseTag], tag: int) -> list[Dataset]:
    key = keys.get(tag)
    return sequence_items(ds, key) if key is not None else []


def _code(ds: Dataset) -> Code | None:
    keys = _keys(ds)
    value = next(
        (found[0] for tag in (_CODE_VALUE, _LONG_CODE_VALUE, _URN_CODE_VALUE) if (found := _texts(ds, keys, tag))),
        "",
    )
    scheme = next(iter(_texts(ds, keys, _CODING_SCHEME_DESIGNATOR)), "").upper()
    meaning = next(iter(_texts(ds, keys, _CODE_MEANING)), "")
    if not value and not meaning:
        return None
    return Code(value=value, scheme=scheme, meaning=meaning)


def _first_code(ds: Dataset, keys: dict[int, BaseTag], tag: int) -> Code | None:
    for item in _items(ds, keys, tag):
        code = _code(item)
        if code is not None:
            return code
    return None


def _item(ds: Dataset, depth: int) -> ContentItem:
    keys = _keys(ds)
    value_type = next(iter(_texts(ds, keys, _VALUE_TYPE)), "").upper()
    relationship = next(iter(_texts(ds, keys, _RELATIONSHIP_TYPE)), "").upper()
    concept = _first_code(ds, keys, _CONCEPT_NAME_CODE_SEQUENCE)
    text: str | None = None
    code: Code | None = None
    numbers: tuple[float, ...] = ()
    unit: Code | None = None
    if value_type == "CODE":
        code = _first_code(ds, keys, _CONCEPT_CODE_SEQUENCE)
    elif value_type == "NUM":
        for measured in _items(ds, keys, _MEASURED_VALUE_SEQUENCE)[:1]:
            measured_keys = _keys(measured)
            numbers = tuple(_numbers(_texts(measured, measured_keys, _NUMERIC_VALUE)))
            if not numbers:
                numbers = tuple(number_values(measured, _FLOATING_POINT_VALUE))
            unit = _first_code(measured, measured_keys, _MEASUREMENT_UNITS_CODE_SEQUENCE)
    else:
        for tag in (_TEXT_VALUE, _UID, _DATETIME, _DATE, _TIME, _PERSON_NAME):
            found = _texts(ds, keys, tag)
            if found:
                text = "\\".join(found) if tag in (_TEXT_VALUE, _PERSON_NAME) else found[0]
                break
    children: tuple[ContentItem, ...] = ()
    if depth < MAX_DEPTH:
        children = tuple(_item(c, depth + 1) for c in _items(ds, keys, _CONTENT_SEQUENCE))
    return ContentItem(
        value_type=value_type,
        relationship=relationship,
        concept=concept,
        text=text,
        code=code,
        numbers=numbers,
        unit=unit,
        children=children,
    )
