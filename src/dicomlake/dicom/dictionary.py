"""The data dictionary (PS3.6) as fast lookups: tag → VR, VM and keyword, from pydicom's tables."""

from __future__ import annotations

import re
from functools import cache

from pydicom.datadict import DicomDictionary, RepeatersDictionary, private_dictionaries

# PS3.5 §7.1.2: with implicit VR, an ambiguous dictionary VR is resolved by context; we read
# headers only, so the first choice is taken (it matters only for a few LUT/pixel elements).
_AMBIGUOUS = {"US or SS or OW": "US", "US or SS": "US", "OB or OW": "OW", "US or OW": "US"}

_TAG_FORM = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")


@cache
def pixel_representation_dependent() -> frozenset[int]:
    """Tags whose VR is "US or SS" (or "US or SS or OW"): SS when Pixel Representation is 1."""
    return frozenset(t for t, e in DicomDictionary.items() if e[0].startswith("US or SS"))


def _clean_vr(vr: str) -> str:
    if vr == "NONE":
        return "UN"
    return _AMBIGUOUS.get(vr, vr)


@cache
def public() -> dict[int, tuple[str, str, str]]:
    """Return ``{tag: (VR, VM, keyword)}`` for every public element of PS3.6."""
    return {tag: (_clean_vr(e[0]), e[1], e[4]) for tag, e in DicomDictionary.items()}


@cache
def keyword_to_tag() -> dict[str, int]:
    """Return ``{keyword: tag}`` for every public keyword (repeating groups at their base)."""
    out = {e[2]: tag for tag, e in public().items() if e[2]}
    for mask, entry in RepeatersDictionary.items():
        if entry[4] and entry[4] not in out:
            out[entry[4]] = int(mask.replace("x", "0"), 16)
    return out


_REPEATERS = [
    (int(mask.replace("x", "0"), 16), int("".join("0" if c == "x" else "F" for c in mask), 16), e)
    for mask, e in RepeatersDictionary.items()
]


@cache
def lookup(tag: int) -> tuple[str, str, str] | None:
    """Return ``(VR, VM, keyword)`` of a public tag, repeating groups (50xx, 60xx) included."""
    hit = public().get(tag)
    if hit is not None:
        return hit
    if tag >> 16 & 1:  # odd group: private, never in the public dictionary
        return None
    for base, mask, e in _REPEATERS:
        if tag & mask == base:
            return (_clean_vr(e[0]), e[1], e[4])
    return None


@cache
def private_vr(group: int, creator: str, element_offset: int) -> str:
    """Return the VR of a private element from pydicom's private dictionaries, else ``UN``."""
    block = private_dictionaries.get(creator)
    if not block:
        return "UN"
    key = f"{group:04X}xx{element_offset:02X}"
    entry = block.get(key)
    if entry is None:
        return "UN"
    return _clean_vr(entry[0])


def parse_tag(text: str) -> int | None:
    """Parse ``(gggg,eeee)``, ``gggg,eeee`` or ``ggggeeee`` into an int, else None."""
    m = _TAG_FORM.match(text.strip())
    if not m:
        return None
    return int(m.group(1), 16) << 16 | int(m.group(2), 16)


def tag_text(tag: int) -> str:
    """Return the tag as eight upper-case hex digits, the DICOM JSON key form (PS3.18 F.2.1.1)."""
    return f"{tag:08X}"
