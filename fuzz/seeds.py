"""Seed inputs from the real corpora: pydicom's test files, pydicom-data, tests/data/corpus.

A seed is the part of a file the parsers look at: the whole file when it is small, else
everything before Pixel Data (the reader stops there). Seeds are written once per target
into ``fuzz/runs/<target>/seeds`` (content-addressed, so reruns add nothing).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

MAX_SEED = 64 * 1024
"""Longest seed; also libFuzzer's ``-max_len`` for DICOM targets. Default: 64 KiB"""


def sample_files() -> Iterator[Path]:
    """Every file of every sample folder, in a stable order."""
    from dicomlake.samples import sample_sources

    for root in sample_sources():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                yield Path(dirpath) / name


def dicom_seeds(limit: int | None = None) -> Iterator[bytes]:
    """Headers of the sample files (distinct, at most :data:`MAX_SEED` bytes each)."""
    from dicomlake.dicom.reader import read_header, sniff
    from dicomlake.errors import ExtractionError

    seen: set[bytes] = set()
    n = 0
    for path in sample_files():
        try:
            with open(path, "rb") as fh:
                head = fh.read(MAX_SEED)
        except OSError:
            continue
        if sniff(head) is None:
            continue
        data = head
        if os.path.getsize(path) > MAX_SEED:
            try:
                header, _buf, _size = read_header(path)
            except (ExtractionError, OSError):
                continue  # the broken sample files are seeds for the small ones only
            cut = header.header_bytes
            if header.has_preamble is False and cut == 0:
                continue
            if header.transfer_syntax.endswith(".99"):
                continue  # deflated: a prefix is not a valid stream
            data = head[: min(cut, MAX_SEED)]
        digest = hashlib.sha1(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        yield data
        n += 1
        if limit is not None and n >= limit:
            return


def write_seeds(folder: Path, seeds: Iterator[bytes]) -> int:
    """Write each seed as ``<sha1>`` into ``folder``; return how many are there."""
    folder.mkdir(parents=True, exist_ok=True)
    for data in seeds:
        name = folder / hashlib.sha1(data).hexdigest()
        if not name.exists():
            name.write_bytes(data)
    return sum(1 for _ in folder.iterdir())
