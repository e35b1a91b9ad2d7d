"""A fast reader of DICOM headers: bytes to raw elements, stopping before bulk pixel data.

pydicom reads a header well but converts every value into Python objects, which costs
about 1 ms per instance before any row is built (see docs/explanation/ingest.md). The lake
needs the raw value bytes of every element, so this reader walks the encoding itself
(PS3.5 §7: explicit and implicit VR, little and big endian, deflate; §7.5 sequences of
defined and undefined length) and leaves value conversion to :mod:`dicomlake.extract`.
pydicom is still used for what it knows best: the data dictionary and character sets.

An element is a tuple ``(tag, VR, value, length)``: ``value`` is the value's bytes, a list
of items (each a list of elements) for a sequence, or ``None`` for bulk data that was
skipped (its ``length`` is kept).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from dicomlake.dicom.dictionary import lookup, pixel_representation_dependent, private_vr
from dicomlake.errors import ExtractionError

Element = tuple  # (tag: int, vr: str, value: bytes | list[list[Element]] | None, length: int)

# PS3.5 Table 7.1-1: VRs whose explicit encoding has a 2-byte reserved field and 4-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
VALID_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
        b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
    }
)  # fmt: skip
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# the 2 bytes of an explicit VR → (VR text, long form?); one lookup instead of two set tests
# and a decode, and every element of a VR shares one interned string
_VR_FORMS: dict[bytes, tuple[str, bool]] = {b: (b.decode("ascii"), b in LONG_VRS) for b in VALID_VRS}


def _nonstandard_vr(vr_b: bytes) -> tuple[str, bool]:
    """How a VR that PS3.5 does not define is read: as UN, as dcmtk does (``??`` in dcmdump).

    Two upper-case letters may be a VR of a later edition, which PS3.5 §7.1.2 gives a
    4-byte length; anything else (two spaces, as some writers emit) has a 2-byte length.
    """
    if len(vr_b) == 2 and vr_b.isalpha() and vr_b.isupper():
        return "UN", True
    return "UN", False


ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
MAX_INFLATED = 64 * 1024 * 1024
"""Most bytes a Deflated Explicit VR Little Endian data set may inflate to. Default: 64 MiB"""
# PS3.3 C.7.6.3: the pixel data elements; reading stops at the first of them.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

_LE_TAG = struct.Struct("<HH")
_BE_TAG = struct.Struct(">HH")
_LE_EXPL = struct.Struct("<HH2sH")
_BE_EXPL = struct.Struct(">HH2sH")
_LE_IMPL = struct.Struct("<HHI")
_BE_IMPL = struct.Struct(">HHI")
_LE_U32 = struct.Struct("<I")
_BE_U32 = struct.Struct(">I")


class _NeedMore(Exception):
    """The buffer ended inside the header: read more of the file and parse again."""


@dataclass(slots=True)
class Header:
    """A parsed header: file meta elements, dataset elements and how they were encoded."""

    meta: list[Element]
    elements: list[Element]
    transfer_syntax: str
    has_preamble: bool
    pixel_data_length: int | None = None
    header_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    tail_at: int | None = None  # where elements after pixel data start (-offset: fragments to walk)
    explicit: bool = True

    @property
    def little_endian(self) -> bool:
        return self.transfer_syntax != EXPLICIT_VR_BE

    @property
    def implicit_vr(self) -> bool:
        return self.transfer_syntax == IMPLICIT_VR_LE


class _Parser:
    """One pass over a buffer; holds the encoding so recursion stays cheap."""

    __slots__ = (
        "buf",
        "explicit",
        "file_size",
        "inline_max",
        "little",
        "max_depth",
        "signed_pixels",
        "stop_at_pixels",
    )

    def __init__(
        self,
        buf: bytes,
        *,
        explicit: bool,
        little: bool,
        inline_max: int,
        file_size: int,
        max_depth: int = 32,
    ) -> None:
        self.buf = buf
        self.explicit = explicit
        self.little = little
        self.inline_max = inline_max
        self.file_size = file_size
        self.stop_at_pixels = True
        self.max_depth = max_depth
        self.signed_pixels = False  # Pixel Representation (0028,0103) = 1, seen so far

    def dataset(self, pos: int, end: int | None, depth: int, top: bool) -> tuple[list[Element], int, int | None]:
        """Parse elements from ``pos`` until ``end`` (or an item delimiter when end is None).

        Returns the elements, the position after them, and the pixel data length when the
        top-level dataset stopped at pixel data.
        """
        buf = self.buf
        buflen = len(buf)
        explicit = self.explicit
        little = self.little
        expl = _LE_EXPL if little else _BE_EXPL
        impl = _LE_IMPL if little else _BE_IMPL
        u32 = _LE_U32 if little else _BE_U32
        inline_max = self.inline_max
        vr_forms = _VR_FORMS
        out: list[Element] = []
        creators: dict[int, str] = {}
        limit = end if end is not None else self.file_size
        while pos < limit:
            if pos + 8 > buflen:
                if buflen >= self.file_size:
                    if end is None and not top:
                        raise ExtractionError(f"sequence item not terminated before end of file at byte {pos}")
                    if pos + 8 > self.file_size and self.file_size - pos > 0 and top:
                        # trailing bytes shorter than an element header
                        raise ExtractionError(
                            f"truncated: {self.file_size - pos} stray bytes at byte {pos}, "
                            "too few for an element header"
                        )
                    break
                raise _NeedMore
            if explicit:
                group, elem, vr_b, length = expl.unpack_from(buf, pos)
                tag = group << 16 | elem
                if group == 0xFFFE:
                    # item / delimiters carry no VR: tag + 4-byte length
                    length = u32.unpack_from(buf, pos + 4)[0]
                    if tag == ITEM_DELIMITATION:
                        return out, pos + 8, None
                    if tag == SEQUENCE_DELIMITATION:
                        raise ExtractionError(f"sequence delimiter outside a sequence at byte {pos}")
                    raise ExtractionError(f"unexpected item tag ({group:04X},{elem:04X}) at byte {pos}")
                form = vr_forms.get(vr_b)
                if form is None:
                    form = _nonstandard_vr(vr_b)
                    if form[1] and pos + 12 <= buflen:
                        declared = u32.unpack_from(buf, pos + 8)[0]
                        if declared != UNDEFINED and pos + 12 + declared > self.file_size:
                            raise ExtractionError(
                                f"invalid VR {vr_b!r} for ({group:04X},{elem:04X}) at byte {pos}: read as a VR of "
                                f"a later edition (4-byte length, as dcmtk does) it declares {declared} bytes, "
                                "past the end of the file; the file is corrupt or not DICOM"
                            )
                vr, long_form = form
                if long_form:
                    if pos + 12 > buflen:
                        if buflen >= self.file_size:
                            raise ExtractionError(f"truncated inside the element header at byte {pos}")
                        raise _NeedMore
                    length = u32.unpack_from(buf, pos + 8)[0]
                    vpos = pos + 12
                else:
                    vpos = pos + 8
            else:
                group, elem, length = impl.unpack_from(buf, pos)
                tag = group << 16 | elem
                vpos = pos + 8
                if group == 0xFFFE:
                    if tag == ITEM_DELIMITATION:
                        return out, pos + 8, None
                    raise ExtractionError(f"unexpected item tag ({group:04X},{elem:04X}) at byte {pos}")
                if group & 1:
                    if elem < 0x0100 and elem >= 0x0010:
                        vr = "LO"  # PS3.5 §7.8.1: private creator
                    else:
                        creator = creators.get(group << 8 | elem >> 8)
                        vr = private_vr(group, creator, elem & 0xFF, elem) if creator else "UN"
                elif elem == 0:
                    vr = "UL"  # group length
                else:
                    entry = lookup(tag)
                    vr = entry[0] if entry else "UN"
                    # PS3.5 §7.1.2 / PS3.6 "US or SS": decided by Pixel Representation
                    if self.signed_pixels and vr == "US" and tag in pixel_representation_dependent():
                        vr = "SS"
                if length == UNDEFINED and vr != "SQ":
                    vr = "SQ" if tag not in PIXEL_TAGS else vr
            if top and tag in PIXEL_TAGS and self.stop_at_pixels:
                return out, pos, (length if length != UNDEFINED else -1)
            if vr == "SQ" or (length == UNDEFINED and vr == "UN"):
                if depth >= self.max_depth:
                    raise ExtractionError(
                        f"sequences nested deeper than {self.max_depth} levels: ({group:04X},{elem:04X}) at byte "
                        f"{pos}; raise ingest.max_sequence_depth if such files are expected"
                    )
                if vr == "UN":
                    items, pos = self._un_sequence(vpos, depth + 1)
                    vr = "SQ"
                else:
                    items, pos = self.sequence(vpos, None if length == UNDEFINED else vpos + length, depth + 1)
                out.append((tag, "SQ", items, length))
                buflen = len(buf)
                continue
            if length == UNDEFINED:
                # encapsulated bulk data outside pixel data: skip its fragments
                pos = self._skip_fragments(vpos)
                out.append((tag, vr, None, -1))
                continue
            vend = vpos + length
            if vend > self.file_size:
                raise ExtractionError(
                    f"truncated: ({group:04X},{elem:04X}) {vr} declares {length} bytes at byte {vpos} "
                    f"but the file has {self.file_size} bytes"
                )
            if length > inline_max and vr in BULK_VRS:
                out.append((tag, vr, None, length))  # bulk: length kept, bytes not needed
                pos = vend
                continue
            if vend > buflen:
                raise _NeedMore
            value = buf[vpos:vend]
            if tag == 0x00280103 and length == 2:
                self.signed_pixels = value in (b"\x01\x00", b"\x00\x01")
            if group & 1 and 0x0010 <= elem < 0x0100:
                creators[group << 8 | elem] = value.decode("latin-1").strip(" \x00")
            out.append((tag, vr, value, length))
            pos = vend
        if end is not None and pos > end:
            raise ExtractionError(f"an element overruns its sequence item (ends at {pos}, item at {end})")
        return out, pos, None

    def _un_sequence(self, pos: int, depth: int) -> tuple[list[list[Element]], int]:
        """Parse the items of a UN element of undefined length.

        PS3.5 §6.2.2 says such a value is a sequence encoded in implicit VR little endian,
        but vendors (private sequences of mammography images among them) write its items in
        explicit VR. As gdcm and pydicom do, the first element of the first item decides: a
        valid VR where implicit VR has the low half of the length means explicit. Should that
        reading fail, the other encoding is tried before the file is given up.
        """
        buf = self.buf
        if pos + 20 > len(buf) and len(buf) < self.file_size:
            raise _NeedMore
        explicit = (
            buf[pos : pos + 4] == b"\xfe\xff\x00\xe0"
            and buf[pos + 8 : pos + 10] != b"\xfe\xff"
            and buf[pos + 12 : pos + 14] in VALID_VRS
        )
        tries = (explicit, not explicit)
        first: ExtractionError | None = None
        for expl in tries:
            sub = _Parser(
                buf,
                explicit=expl,
                little=True,
                inline_max=self.inline_max,
                file_size=self.file_size,
                max_depth=self.max_depth,
            )
            try:
                return sub.sequence(pos, None, depth)
            except ExtractionError as exc:
                if "nested deeper" in str(exc):
                    raise
                first = first or exc
        assert first is not None
        raise first

    def sequence(self, pos: int, end: int | None, depth: int) -> tuple[list[list[Element]], int]:
        """Parse the items of a sequence (PS3.5 §7.5) of defined or undefined length."""
        buf = self.buf
        u32 = _LE_U32 if self.little else _BE_U32
        tagst = _LE_TAG if self.little else _BE_TAG
        items: list[list[Element]] = []
        limit = end if end is not None else self.file_size
        while pos < limit:
            if pos + 8 > len(buf):
                if len(buf) >= self.file_size:
                    raise ExtractionError(f"truncated inside a sequence at byte {pos}")
                raise _NeedMore
            group, elem = tagst.unpack_from(buf, pos)
            length = u32.unpack_from(buf, pos + 4)[0]
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITATION:
                return items, pos + 8
            if tag != ITEM:
                raise ExtractionError(
                    f"expected an item tag (FFFE,E000) in a sequence at byte {pos}, found ({group:04X},{elem:04X})"
                )
            start = pos + 8
            if length == UNDEFINED:
                elements, pos, _ = self.dataset(start, None, depth, False)
            else:
                if start + length > self.file_size:
                    raise ExtractionError(f"truncated: a sequence item of {length} bytes at byte {start}")
                elements, pos, _ = self.dataset(start, start + length, depth, False)
            items.append(elements)
        if end is None:
            raise ExtractionError("a sequence of undefined length has no delimiter before end of file")
        return items, pos

    def _skip_fragments(self, pos: int) -> int:
        buf = self.buf
        u32 = _LE_U32 if self.little else _BE_U32
        tagst = _LE_TAG if self.little else _BE_TAG
        while True:
            if pos + 8 > len(buf):
                if len(buf) >= self.file_size:
                    raise ExtractionError(f"truncated inside encapsulated data at byte {pos}")
                raise _NeedMore
            group, elem = tagst.unpack_from(buf, pos)
            length = u32.unpack_from(buf, pos + 4)[0]
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITATION:
                return pos + 8
            if tag != ITEM:
                raise ExtractionError(f"bad fragment tag ({group:04X},{elem:04X}) at byte {pos}")
            pos += 8 + length


def _meta_value(meta: list[Element], tag: int) -> str | None:
    for t, _vr, value, _len in meta:
        if t == tag and isinstance(value, bytes):
            return value.decode("ascii", "replace").strip(" \x00")
    return None


def sniff(head: bytes) -> str | None:
    """Say how a file starts: ``"part10"``, ``"raw-explicit"``, ``"raw-implicit"`` or None.

    A raw dataset (no preamble, as some old archives and DICOMDIR siblings have) is
    accepted when its first element is a plausible group 0002/0008 element.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) >= 8:
        group, elem = _LE_TAG.unpack_from(head, 0)
        if group in (0x0002, 0x0008) and elem < 0x0100:
            if head[4:6] in VALID_VRS:
                return "raw-explicit"
            length = _LE_U32.unpack_from(head, 4)[0]
            if length < 0x10000:
                return "raw-implicit"
        group, elem = _BE_TAG.unpack_from(head, 0)
        if group == 0x0008 and elem < 0x0100 and head[4:6] in VALID_VRS:
            return "raw-explicit-be"
    return None


def parse_bytes(
    buf: bytes,
    *,
    file_size: int | None = None,
    inline_max: int = 1024,
    max_depth: int = 32,
    max_inflated: int = MAX_INFLATED,
) -> Header:
    """Parse a header from the first bytes of a file (or all of it).

    Raises ``_NeedMore`` when ``buf`` is shorter than the file and ends inside the header;
    :func:`read_header` handles that by reading more. A deflated data set that inflates to
    more than ``max_inflated`` bytes is refused (a few kilobytes can inflate to gigabytes).
    """
    size = len(buf) if file_size is None else file_size
    kind = sniff(buf)
    if kind is None:
        if size == 0:
            raise ExtractionError("empty file (0 bytes)")
        raise ExtractionError("not DICOM: no 'DICM' marker at byte 128 and no recognisable data element at the start")
    meta: list[Element] = []
    notes_pre: list[str] = []
    pos = 0
    has_preamble = kind == "part10"
    if has_preamble:
        pos = 132
        # PS3.10 §7.1: the file meta information is explicit VR little endian, group 0002.
        while pos + 8 <= len(buf) and buf[pos : pos + 2] == b"\x02\x00":
            group, elem, vr_b, length = _LE_EXPL.unpack_from(buf, pos)
            if vr_b in LONG_VRS:
                if pos + 12 > len(buf):
                    if len(buf) >= size:
                        raise ExtractionError(f"truncated inside the file meta information at byte {pos}")
                    raise _NeedMore
                length = _LE_U32.unpack_from(buf, pos + 8)[0]
                vpos = pos + 12
            elif vr_b in VALID_VRS:
                vpos = pos + 8
            else:
                # some writers use implicit VR for group 0002 despite the standard
                length = _LE_U32.unpack_from(buf, pos + 4)[0]
                vpos = pos + 8
                vr_b = (lookup(group << 16 | elem) or ("UN",))[0].encode()
            if vpos + length > len(buf):
                if len(buf) >= size:
                    raise ExtractionError(f"truncated inside the file meta information at byte {pos}")
                raise _NeedMore
            vr_m = vr_b.decode("ascii")
            if vr_m == "SQ":
                vr_m = "UN"  # PS3.10 §7.1 has no sequences in the file meta; keep the bytes opaque
            meta.append((group << 16 | elem, vr_m, buf[vpos : vpos + length], length))
            pos = vpos + length
        ts = _meta_value(meta, 0x00020010)
        if ts is None and meta:
            notes_pre = ["file meta information has no Transfer Syntax UID (0002,0010); guessed from the data"]
    elif kind == "raw-explicit-be":
        ts = EXPLICIT_VR_BE
    else:
        ts = None
    if ts is None:
        # PS3.10: without meta, guess explicit vs implicit from the first element
        ts = EXPLICIT_VR_LE if buf[pos + 4 : pos + 6] in VALID_VRS else IMPLICIT_VR_LE
    explicit = ts != IMPLICIT_VR_LE
    little = ts != EXPLICIT_VR_BE
    body = buf
    body_size = size
    notes: list[str] = list(notes_pre)
    if ts == DEFLATED_EXPLICIT_VR_LE:
        if len(buf) < size:
            raise _NeedMore
        try:
            # bounded: never allocate more than the limit, whatever the stream says
            body = zlib.decompressobj(-15).decompress(buf[pos:], max_inflated + 1)
        except zlib.error as exc:
            raise ExtractionError(f"deflated dataset cannot be inflated: {exc}") from exc
        if len(body) > max_inflated:
            raise ExtractionError(
                f"deflated dataset inflates to more than {max_inflated} bytes from {size - pos} "
                "(a decompression bomb?); raise ingest.max_header_bytes if such files are expected"
            )
        body_size = len(body)
        pos = 0
    elif (
        explicit
        and pos + 6 <= len(buf)
        and buf[pos + 4 : pos + 6] not in VALID_VRS
        and buf[pos : pos + 2] != b"\xfe\xff"
    ):
        # PS3.5 allows no such thing, but files exist that declare explicit VR and are implicit
        group = _LE_TAG.unpack_from(buf, pos)[0]
        if group in (0x0008, 0x0010, 0x0018, 0x0020):
            explicit = False
            notes.append(f"transfer syntax {ts} declared, but the dataset is implicit VR")
    parser = _Parser(
        body, explicit=explicit, little=little, inline_max=inline_max, file_size=body_size, max_depth=max_depth
    )
    elements, end, pixel_length = parser.dataset(pos, None, 0, True)
    tail_at: int | None = None
    if pixel_length is not None:
        # elements may follow the pixel data (padding, signatures, private groups): find
        # where its value ends and read on from there (PS3.5 §7.1, §A.4 for fragments)
        vpos = end + (12 if explicit else 8)
        if pixel_length >= 0:
            tail_at = vpos + pixel_length
        elif body_size <= len(body):
            try:
                tail_at = parser._skip_fragments(vpos)
            except ExtractionError as exc:  # damaged fragments: the header before them stands
                notes.append(f"encapsulated pixel data could not be walked: {exc}")
                tail_at = None
        else:
            tail_at = -vpos  # negative: fragments start here, not yet walked
        if tail_at is not None and 0 < tail_at < body_size and body_size <= len(body):
            parser.stop_at_pixels = False
            try:
                more, _, _ = parser.dataset(tail_at, None, 0, True)
                elements.extend(more)
            except (ExtractionError, struct.error) as exc:
                # as in _read_tail: what follows the pixel data is optional; a damaged tail
                # is noted, the header before it is kept
                notes.append(f"elements after the pixel data could not be read: {exc}")
            tail_at = None
        elif tail_at is not None and tail_at >= body_size:
            tail_at = None
    return Header(
        meta=meta,
        elements=elements,
        transfer_syntax=ts,
        has_preamble=has_preamble,
        pixel_data_length=pixel_length,
        header_bytes=end,
        notes=notes,
        tail_at=tail_at,
        explicit=explicit,
    )


def read_header(
    path: str | os.PathLike[str],
    *,
    first_read: int = 65536,
    max_header_bytes: int = 64 * 1024 * 1024,
    inline_max: int = 1024,
    max_depth: int = 32,
) -> tuple[Header, bytes, int]:
    """Read a file's header without reading its pixel data.

    Returns the header, the bytes read (for quarantine or a second reader) and the file size.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_header_at(
            lambda n, at: os.pread(fd, n, at),
            os.fstat(fd).st_size,
            first_read=first_read,
            max_header_bytes=max_header_bytes,
            inline_max=inline_max,
            max_depth=max_depth,
        )
    finally:
        os.close(fd)


def read_header_at(
    pread: Callable[[int, int], bytes],
    size: int,
    *,
    first_read: int = 65536,
    max_header_bytes: int = 64 * 1024 * 1024,
    inline_max: int = 1024,
    max_depth: int = 32,
) -> tuple[Header, bytes, int]:
    """:func:`read_header` over ranged reads ``pread(n, offset)`` of an object of ``size`` bytes
    (a file on an object store: only the header's ranges are fetched, never the pixel data)."""
    buf = pread(min(first_read, size), 0)
    while True:
        try:
            header = parse_bytes(
                buf, file_size=size, inline_max=inline_max, max_inflated=max_header_bytes, max_depth=max_depth
            )
            if header.tail_at is not None:
                _read_tail(pread, header, size, inline_max, max_header_bytes, max_depth)
            return header, buf, size
        except _NeedMore:
            if len(buf) >= size:
                raise ExtractionError("truncated: the header runs past the end of the file") from None
            if len(buf) >= max_header_bytes:
                raise ExtractionError(
                    f"header larger than {max_header_bytes} bytes; raise ingest.max_header_bytes"
                ) from None
            more = min(max(len(buf), 1 << 20), size - len(buf), max_header_bytes - len(buf))
            chunk = pread(more, len(buf))
            if not chunk:
                raise ExtractionError("file shrank while being read") from None
            buf += chunk


def _read_tail(
    pread: Callable[[int, int], bytes], header: Header, size: int, inline_max: int, limit: int, max_depth: int = 32
) -> None:
    """Read the elements after the pixel data, walking fragment headers with ranged reads."""
    at = header.tail_at
    assert at is not None
    little = header.little_endian
    if at < 0:  # encapsulated pixel data: hop over the fragments (PS3.5 §A.4)
        pos = -at
        tagst = _LE_TAG if little else _BE_TAG
        u32 = _LE_U32 if little else _BE_U32
        for _ in range(1_000_000):
            hdr = pread(8, pos)
            if len(hdr) < 8:
                header.notes.append("encapsulated pixel data not terminated by a sequence delimiter")
                return
            group, elem = tagst.unpack_from(hdr, 0)
            pos += 8
            if (group << 16 | elem) == SEQUENCE_DELIMITATION:
                break
            pos += u32.unpack_from(hdr, 4)[0]
        at = pos
    if at >= size:
        return
    if size - at > limit:
        header.notes.append(f"{size - at} bytes after the pixel data not read (over the header limit)")
        return
    tail = pread(size - at, at)
    parser = _Parser(
        tail, explicit=header.explicit, little=little, inline_max=inline_max, file_size=len(tail), max_depth=max_depth
    )
    parser.stop_at_pixels = False
    try:
        more, _, _ = parser.dataset(0, None, 0, True)
    except (ExtractionError, _NeedMore, struct.error) as exc:
        header.notes.append(f"elements after the pixel data could not be read: {exc}")
        return
    header.elements.extend(more)


def parse_all(data: bytes, *, inline_max: int = 1024, max_inflated: int = MAX_INFLATED, max_depth: int = 32) -> Header:
    """Parse a header from bytes that hold the whole object (zip members, network)."""
    try:
        return parse_bytes(
            data, file_size=len(data), inline_max=inline_max, max_inflated=max_inflated, max_depth=max_depth
        )
    except _NeedMore as exc:  # cannot happen with the whole object; keep the contract
        raise ExtractionError("truncated: the header runs past the end of the data") from exc
