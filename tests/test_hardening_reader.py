"""The header reader under hostile input: bombs, declared lengths, caches fed by input.

Each test states the outcome: a clear :class:`ExtractionError`, bounded memory, bounded
caches. Found by reading the reader against the fuzz contract (``fuzz/fuzz_reader.py``).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from dicomlake.dicom.reader import DEFLATED_EXPLICIT_VR_LE, parse_all, read_header
from dicomlake.errors import ExtractionError

MiB = 1024 * 1024


def _el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _part10(ts: str, body: bytes, preamble: bytes = b"\0" * 128) -> bytes:
    ts_b = ts.encode() + (b"\0" if len(ts) % 2 else b"")
    meta = _el(0x0002, 0x0001, b"OB", b"\0\1") + _el(0x0002, 0x0010, b"UI", ts_b)
    return preamble + b"DICM" + _el(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta + body


def deflate_bomb(inflated: int) -> bytes:
    """A Part-10 file whose deflated data set inflates to ``inflated`` bytes of a private OB."""
    head = _el(0x0008, 0x0018, b"UI", b"1.2.3.4\0") + struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, inflated - 28)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [c.compress(head)]
    zero = bytes(4 * MiB)
    left = inflated - len(head)
    while left > 0:
        parts.append(c.compress(zero[: min(left, len(zero))]))
        left -= len(zero)
    parts.append(c.flush())
    return _part10(DEFLATED_EXPLICIT_VR_LE, b"".join(parts))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return deflate_bomb(400 * MiB)


def test_deflate_bomb_is_refused_without_inflating_it(bomb: bytes) -> None:
    assert len(bomb) < 1 * MiB  # under a megabyte on the wire…
    tracemalloc.start()
    try:
        with pytest.raises(ExtractionError, match="inflates to more than 8388608"):
            parse_all(bomb, max_inflated=8 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # bounded by the limit (zlib's output buffer grows by doubling), not by the bomb
    assert peak < 3 * 8 * MiB, f"peak {peak / MiB:.0f} MiB for a refused input"  # was 400 MiB
    with pytest.raises(ExtractionError, match="inflates to more than 67108864"):
        parse_all(bomb)  # the default limit


def test_deflate_bomb_from_a_file_is_refused_at_the_header_limit(bomb: bytes, tmp_path: Path) -> None:
    p = tmp_path / "bomb.dcm"
    p.write_bytes(bomb)
    with pytest.raises(ExtractionError, match="inflates to more than 1048576"):
        read_header(p, max_header_bytes=1 * MiB)


def test_deflated_file_under_the_limit_still_reads() -> None:
    ok = deflate_bomb(2 * MiB)
    header = parse_all(ok)
    assert any(t == 0x00080018 for t, *_ in header.elements)


@pytest.mark.parametrize("length", [0xFFFFFFF0, 0x7FFFFFFF, 10 * 1024**3 % 2**32])
def test_declared_length_past_the_end_is_an_error_not_an_allocation(length: int) -> None:
    body = (
        _el(0x0008, 0x0018, b"UI", b"1.2.3.4\0") + struct.pack("<HH2sHI", 0x0010, 0x4000, b"UT", 0, length) + b"x" * 64
    )
    tracemalloc.start()
    try:
        with pytest.raises(ExtractionError, match="truncated"):
            parse_all(_part10("1.2.840.10008.1.2.1", body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


def test_sequences_nested_beyond_the_limit_are_an_error_not_a_recursion_error() -> None:
    depth = 5000
    inner = b"".join(
        struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        for _ in range(depth)
    )
    with pytest.raises(ExtractionError, match="nested deeper"):
        parse_all(_part10("1.2.840.10008.1.2.1", _el(0x0008, 0x0018, b"UI", b"1.2\0") + inner))


def test_dictionary_caches_stay_bounded_under_distinct_tags_and_creators() -> None:
    from dicomlake.dicom import dictionary
    from dicomlake.extract import rows

    for i in range(dictionary.CACHE_SIZE + 5000):
        dictionary.lookup(0x7FFE0000 + i * 2)  # even groups, mostly unknown
        dictionary.private_vr(0x0009, f"CREATOR {i}", 0x10)
        rows._tag_info(0x00500000 + i * 2)
    assert dictionary.lookup.cache_info().currsize <= dictionary.CACHE_SIZE
    assert dictionary.private_vr.cache_info().currsize <= dictionary.CACHE_SIZE
    assert len(rows._TAG_CACHE) <= rows._TAG_CACHE_MAX
