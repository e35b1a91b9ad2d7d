"""Fuzz target: the STOW-RS ``multipart/related`` parser (PS3.18 §10.5).

Input: the first line is the request's Content-Type, the rest is the body. Contract
(:func:`dicomlake.web.dicomweb.split_multipart`): a list of ``(headers, content)`` or a
``WebError`` (400); no part's content is longer than the body; header names are
lower-case strings. For each ``application/dicom`` part, the SOP Instance UID the store
would name its file after is hashed, never used as a path (checked: the file name is
32 hex digits + ``.dcm``).

Run: ``python fuzz/run.py --target stow --seconds 60``.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings

from dicomlake.web.context import WebError
from dicomlake.web.dicomweb import split_multipart

MAX_LEN = 32 * 1024
SEEDS = "stow"
SHORT_RUNS = 3000
"""Executions of the short, fixed-seed run in the tests (``fuzz/run.py --seed 1 --runs short``)."""
_NAME = re.compile(r"^[0-9a-f]{32}\.dcm$")


def seed_inputs() -> list[bytes]:
    from fuzz.seeds import dicom_seeds

    out = []
    files = [d for d in dicom_seeds(limit=60) if len(d) < 8000]
    for i in range(0, len(files), 3):
        boundary = f"b{i:04d}-fuzz"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                for f in files[i : i + 3]
            )
            + f"--{boundary}--\r\n".encode()
        )
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        out.append(ctype.encode() + b"\n" + body)
    return out


def check(data: bytes) -> None:
    ctype_b, _, body = data.partition(b"\n")
    ctype = ctype_b.decode("latin-1")
    try:
        parts = split_multipart(body, ctype)
    except WebError as exc:
        if exc.status != 400:
            raise
        return
    for headers, content in parts:
        if len(content) > len(body):
            raise AssertionError("a part is longer than the body")
        if any(not isinstance(k, str) or k != k.lower() for k in headers):
            raise AssertionError(f"header names not normalised: {list(headers)}")
        if headers.get("content-type", "application/dicom").split(";")[0].strip().lower() != "application/dicom":
            continue
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(
                    io.BytesIO(content),
                    stop_before_pixels=True,
                    force=True,
                    specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
                )
                sop_inst = str(ds.get("SOPInstanceUID", "") or "")
            except Exception:  # the store reports the part as failed
                continue
        name = hashlib.sha256(sop_inst.encode()).hexdigest()[:32] + ".dcm"
        if not _NAME.match(name):
            raise AssertionError(name)
