"""Fuzz target: the de-identifier on untrusted Part-10 bytes.

Contract (:meth:`Deidentifier.deidentify_bytes`): returns de-identified Part-10 bytes, or
None when the profile excludes the instance, or raises :class:`DeidError`; anything else
escaping is a bug (a crash of ``dicomlake deid`` on one bad file). What it returns must be
readable by our own reader (when the input was) and must not keep the input's Patient Name or Patient ID
(at least 6 letters or digits) in those elements (the basic profile replaces both).

Run: ``python fuzz/run.py --target deid --seconds 60``.
"""

from __future__ import annotations

import logging
import warnings

from pydantic import SecretStr

from dicomlake.deid.engine import Deidentifier
from dicomlake.deid.settings import DeidSettings
from dicomlake.dicom.reader import parse_all
from dicomlake.errors import DeidError, ExtractionError

MAX_LEN = 16 * 1024
SEEDS = "dicom"
SHORT_RUNS = 800
"""Executions of the short, fixed-seed run in the tests (``fuzz/run.py --seed 1 --runs short``)."""
_DEID: Deidentifier | None = None


def warm_up() -> None:
    global _DEID
    logging.getLogger("dicomlake").setLevel(logging.ERROR)
    _DEID = Deidentifier("basic", DeidSettings(secret=SecretStr("fuzz-secret-not-for-production")))


def _phi(data: bytes) -> list[bytes]:
    try:
        header = parse_all(data)
    except ExtractionError:
        return []
    out = []
    for tag, _vr, value, _n in header.elements:
        if tag in (0x00100010, 0x00100020) and isinstance(value, bytes):
            v = value.strip(b"\x00 ")
            if len(v) >= 6 and v.isalnum():
                out.append(v)
    return out


def check(data: bytes) -> None:
    if _DEID is None:
        warm_up()
    assert _DEID is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = _DEID.deidentify_bytes(data)
        except DeidError:
            return
    if out is None:
        return
    try:
        parse_all(data)
    except ExtractionError:
        return  # a broken input (e.g. torn fragments) may stay broken where deid copies it
    try:
        parse_all(out)
    except ExtractionError as exc:
        raise AssertionError(f"de-identified output is not readable: {exc}") from exc
    phi = _phi(data)
    if not phi:
        return
    kept = {
        value.strip(b"\x00 ")
        for tag, _vr, value, _n in parse_all(out).elements
        if tag in (0x00100010, 0x00100020) and isinstance(value, bytes)
    }
    for v in phi:
        if v in kept:
            raise AssertionError(f"identifying value {v!r} survived de-identification")
