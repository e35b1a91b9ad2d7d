"""Fuzz target: DICOM JSON (PS3.18 §F.2) we read from peers, and the JSON we write.

Input: a JSON document. Two consumers read DICOM JSON that we did not write:
``dicomlake pull`` from a remote DICOMweb server (:func:`json_to_part10`) and the analyst
view (:func:`dicomlake.web.deidview.from_json`). Contract: they return or raise an
``Exception`` the caller reports per study (never ``MemoryError``/``SystemError``, never a
hang); and whatever :func:`json_to_part10` returns must be Part-10 that our own reader
parses (round trip), with the SOP Instance UID it reported.

Run: ``python fuzz/run.py --target json --seconds 60``.
"""

from __future__ import annotations

import json
import warnings

from dicomlake.dicom.reader import parse_all
from dicomlake.errors import ExtractionError
from dicomlake.ingest.dicomweb import json_to_part10

MAX_LEN = 16 * 1024
SEEDS = "json"
SHORT_RUNS = 10000
"""Executions of the short, fixed-seed run in the tests (``fuzz/run.py --seed 1 --runs short``)."""
_FATAL = (MemoryError, SystemError)


def seed_inputs() -> list[bytes]:
    """The DICOM JSON of the sample files, as the lake stores it."""
    import datetime as dt

    from dicomlake.extract.rows import BatchBuilder
    from dicomlake.lakeschema import instance_columns
    from fuzz.seeds import dicom_seeds

    out = []
    cols = instance_columns(None)
    for data in dicom_seeds(limit=200):
        try:
            b = BatchBuilder(cols)
            b.add(parse_all(data), source="s", source_path="s", size_bytes=0, received_at=dt.datetime(2024, 1, 1))
        except ExtractionError:
            continue
        text = b.json_texts[0].encode()
        if len(text) <= MAX_LEN:
            out.append(text)
    return out


def check(data: bytes) -> None:
    try:
        js = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(js, dict):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            uid, part10 = json_to_part10(js)
        except _FATAL:
            raise
        except Exception:  # reported per study by pull_dicomweb
            uid = part10 = None
        if part10 is not None:
            try:
                header = parse_all(part10)
            except ExtractionError as exc:
                raise AssertionError(f"json_to_part10 wrote bytes our reader cannot read: {exc}") from exc
            found = next((v for t, _vr, v, _n in header.elements if t == 0x00080018), None)
            if not isinstance(found, bytes) or found.strip(b"\x00 ").decode("utf-8", "replace") != uid.strip("\x00 "):
                raise AssertionError(f"SOP Instance UID {uid!r} reported, {found!r} written")
        try:
            from dicomlake.web.deidview import from_json

            from_json(js)
        except _FATAL:
            raise
        except Exception:  # the analyst view reports it as a 500 per instance
            pass
