"""Fuzz target: the header reader and the row builder (bytes a stranger sends → lake rows).

Contract (``dicomlake.dicom.reader``): :func:`parse_all` and :func:`read_header` either
return a :class:`Header` or raise :class:`ExtractionError`; anything else escaping is a
bug, as is a hang or an allocation sized from a declared length. Both entry points must
agree. A parsed header must then become rows (:class:`BatchBuilder`) or an
``ExtractionError`` and the instance's DICOM JSON must be valid JSON.

Run: ``python fuzz/run.py --target reader --seconds 60``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile

from dicomlake.dicom.reader import parse_all, read_header
from dicomlake.errors import ExtractionError
from dicomlake.extract.rows import BatchBuilder
from dicomlake.lakeschema import instance_columns

MAX_LEN = 64 * 1024
SEEDS = "dicom"
SHORT_RUNS = 2000
"""Executions of the short, fixed-seed run in the tests (``fuzz/run.py --seed 1 --runs short``)."""
_COLUMNS = instance_columns(None)
_WHEN = dt.datetime(2024, 1, 1)
_TMP = os.path.join(
    tempfile.gettempdir() if not os.path.isdir("/dev/shm") else "/dev/shm", f"fuzz-reader-{os.getpid()}"
)


def _through_file(data: bytes) -> object:
    with open(_TMP, "wb") as fh:
        fh.write(data)
    try:
        # a small first read exercises the read-more path (_NeedMore) of the file reader
        return read_header(_TMP, first_read=256, max_header_bytes=1 << 20)[0]
    finally:
        os.unlink(_TMP)


def check(data: bytes) -> None:
    try:
        header = parse_all(data)
    except ExtractionError:
        header = None
    try:
        from_file = _through_file(data)
    except ExtractionError:
        from_file = None
    if (header is None) != (from_file is None):
        raise AssertionError(
            f"parse_all {'failed' if header is None else 'succeeded'} but read_header "
            f"{'failed' if from_file is None else 'succeeded'} on the same bytes"
        )
    if header is None:
        return
    builder = BatchBuilder(_COLUMNS)
    try:
        builder.add(header, source="fuzz", source_path="fuzz", size_bytes=len(data), received_at=_WHEN)
    except ExtractionError:
        return
    json.loads(builder.json_texts[0])
    builder.tables()
