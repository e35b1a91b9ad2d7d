"""Synthetic files for the reader defects of issue #18 (vendor encodings that lost dose data).

Each builder returns the bytes of one Part-10 file; ``python -m tests.reader_defects DIR``
writes them all (the copies in tests/data/reader/ were made so). The bytes are written by
hand because the defects are encodings that pydicom will not write.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

LONG = (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV")
UNDEFINED = 0xFFFFFFFF
MG = b"1.2.840.10008.5.1.4.1.1.1.2\0"  # Digital Mammography X-Ray Image Storage - For Presentation


def pad(value: bytes, vr: bytes) -> bytes:
    if len(value) % 2:
        return value + (b"\0" if vr in (b"UI", b"OB", b"UN") else b" ")
    return value


def el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    value = pad(value, vr)
    if vr in LONG:
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def iel(group: int, elem: int, value: bytes) -> bytes:
    """One implicit VR little endian element."""
    value = pad(value, b"")
    return struct.pack("<HHI", group, elem, len(value)) + value


def item(body: bytes, *, defined: bool = False) -> bytes:
    if defined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


def undefined_sq(group: int, elem: int, vr: bytes, items: list[bytes]) -> bytes:
    return (
        struct.pack("<HH2sHI", group, elem, vr, 0, UNDEFINED) + b"".join(items) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def part10(body: bytes, uid: str, sop_class: bytes = MG, ts: bytes = b"1.2.840.10008.1.2.1\0") -> bytes:
    meta = (
        el(0x0002, 0x0001, b"OB", b"\0\1")
        + el(0x0002, 0x0002, b"UI", sop_class)
        + el(0x0002, 0x0003, b"UI", uid.encode())
        + el(0x0002, 0x0010, b"UI", ts)
    )
    return b"\0" * 128 + b"DICM" + el(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta + body


def _head(uid: str, modality: bytes = b"MG", charset: bytes | None = None) -> bytes:
    out = b""
    if charset is not None:
        out += el(0x0008, 0x0005, b"CS", charset)
    return (
        out
        + el(0x0008, 0x0016, b"UI", MG)
        + el(0x0008, 0x0018, b"UI", uid.encode())
        + el(0x0008, 0x0060, b"CS", modality)
    )


UID_UN_EXPLICIT = "1.2.826.0.1.3680043.10.1137.18.1"


def un_sequence_explicit_items() -> bytes:
    """A Hologic-like private UN of undefined length whose items are in explicit VR; the
    dose (Organ Dose, AGD) comes after it."""
    code = el(0x0008, 0x0100, b"SH", b"R-10226") + el(0x0008, 0x0102, b"SH", b"SRT")
    code += el(0x0008, 0x0104, b"LO", b"medio-lateral oblique")
    inner = undefined_sq(
        0x0019,
        0x1002,
        b"SQ",
        [item(el(0x0019, 0x0010, b"LO", b"HOLOGIC, Inc.") + el(0x0019, 0x1003, b"LO", b"nested"))],
    )
    body = (
        _head(UID_UN_EXPLICIT)
        + el(0x0018, 0x0060, b"DS", b"29")
        + el(0x0019, 0x0010, b"LO", b"HOLOGIC, Inc.")
        + undefined_sq(0x0019, 0x1001, b"UN", [item(code + inner), item(code, defined=True)])
        + el(0x0040, 0x0316, b"DS", b"0.0026")  # Organ Dose is in dGy (PS3.3): AGD 0.26 mGy
        + el(0x0040, 0x8302, b"DS", b"0.0031")
    )
    return part10(body, UID_UN_EXPLICIT)


UID_UN_IMPLICIT = "1.2.826.0.1.3680043.10.1137.18.2"


def un_sequence_implicit_items() -> bytes:
    """The standard form (PS3.5 §6.2.2): UN of undefined length, items in implicit VR."""
    code = iel(0x0008, 0x0100, b"R-10226") + iel(0x0008, 0x0102, b"SRT") + iel(0x0008, 0x0104, b"medio-lateral oblique")
    body = (
        _head(UID_UN_IMPLICIT)
        + el(0x0019, 0x0010, b"LO", b"HOLOGIC, Inc.")
        + undefined_sq(0x0019, 0x1001, b"UN", [item(code)])
        + el(0x0040, 0x0316, b"DS", b"0.0026")  # Organ Dose is in dGy (PS3.3): AGD 0.26 mGy
    )
    return part10(body, UID_UN_IMPLICIT)


UID_SPACE_VR = "1.2.826.0.1.3680043.10.1137.18.3"


def two_space_vr() -> bytes:
    """An element whose VR is two spaces (some writers emit it for unknown VRs)."""
    body = (
        _head(UID_SPACE_VR)
        + el(0x0010, 0x0010, b"  ", b"Doe^Jane")
        + el(0x0010, 0x0020, b"LO", b"ID-18")
        + el(0x0018, 0x0060, b"DS", b"28")
        + el(0x0040, 0x0316, b"DS", b"1.25")
    )
    return part10(body, UID_SPACE_VR)


UID_JIS = "1.2.826.0.1.3680043.10.1137.18.4"


def iso2022_ir87() -> bytes:
    """Patient's Name in ISO 2022 IR 87 (PS3.5 Annex H example): 7-bit bytes with escapes."""
    name = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
    body = (
        _head(UID_JIS, charset=b"\\ISO 2022 IR 87")
        + el(0x0008, 0x0080, b"LO", b"\x1b$B;3ED\x1b(B Hospital")
        + el(0x0010, 0x0010, b"PN", name)
        + el(0x0010, 0x0020, b"LO", b"JIS-18")
    )
    return part10(body, UID_JIS)


UID_PRIVATE_UN = "1.2.826.0.1.3680043.10.1137.18.5"


def explicit_un_private() -> bytes:
    """Philips private elements written as explicit UN (as after a pass through a PACS)."""
    body = (
        _head(UID_PRIVATE_UN, modality=b"MR")
        + el(0x2001, 0x0010, b"LO", b"Philips Imaging DD 001")
        + el(0x2001, 0x1003, b"UN", struct.pack("<f", 1000.0))  # (2001,"Philips Imaging DD 001",03): FL
        + el(0x2001, 0x1005, b"UN", struct.pack("<h", -7))  # (2001,"Philips Imaging DD 001",05): SS
        + el(0x2001, 0x1063, b"UN", b"NO")  # (2001,"Philips Imaging DD 001",63): CS
        + el(0x2001, 0x10FE, b"UN", b"\x01\x02")  # not in the dictionary: stays UN
    )
    return part10(body, UID_PRIVATE_UN)


UID_FL = "1.2.826.0.1.3680043.10.1137.18.6"


def float_single() -> bytes:
    """FL values that have no exact binary form (0.8, 0.1, 1e-3) and one that has (2.5)."""
    body = (
        _head(UID_FL, modality=b"CT")
        + el(0x0018, 0x1060, b"DS", b"0")
        + el(0x0018, 0x2043, b"FL", struct.pack("<2f", 0.1, 2.5))  # LocalizingCursorPosition
        + el(0x0018, 0x9327, b"FD", struct.pack("<d", 3.0))
        + el(0x0018, 0x9345, b"FD", struct.pack("<d", 12.5))
        + el(0x0020, 0x9241, b"FL", struct.pack("<f", 0.8))  # NominalPercentageOfCardiacPhase
        + el(0x0028, 0x0030, b"DS", b"0.5\\0.5")
        + el(0x0040, 0x9224, b"FD", struct.pack("<d", 0.8))  # RealWorldValueIntercept: FD stays double
        + el(0x0040, 0x9225, b"FD", struct.pack("<d", 1e-3))
    )
    return part10(body, UID_FL)


def nested(depth: int, uid: str = "1.2.826.0.1.3680043.10.1137.18.7") -> bytes:
    """Content Sequences nested ``depth`` levels deep, each level one item."""
    inner = el(0x0040, 0xA160, b"UT", b"deepest")
    for _ in range(depth):
        inner = undefined_sq(0x0040, 0xA730, b"SQ", [item(el(0x0040, 0xA010, b"CS", b"CONTAINS") + inner)])
    return part10(_head(uid, modality=b"SR") + inner, uid)


FILES = {
    "un-sequence-explicit-items.dcm": un_sequence_explicit_items,
    "un-sequence-implicit-items.dcm": un_sequence_implicit_items,
    "vr-two-spaces.dcm": two_space_vr,
    "iso2022-ir87-name.dcm": iso2022_ir87,
    "explicit-un-private.dcm": explicit_un_private,
    "float-single.dcm": float_single,
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, make in FILES.items():
        (out / name).write_bytes(make())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
