"""Fuzz target: the listener's PDU and DIMSE decoders (PS3.8 §9.3, PS3.7 §6.3, PS3.5 §7).

Input: the first byte picks the decoder, the rest is its input:

- A-ASSOCIATE-RQ body (:func:`parse_associate_rq`): an :class:`AssociateRQ` or ValueError,
  and an A-ASSOCIATE-AC can always be encoded from it;
- a DIMSE command set (:func:`parse_command`): a dict, never an exception;
- the first bytes of a data set under each transfer syntax (:func:`inspect_dataset`):
  ``(problem, modality)``, never an exception (the listener turns a problem into status
  0xC000; an exception would end the association without a response).

The same bytes are also sent down a socket to a running listener by
``tests/test_hardening_listener.py``; here the decoders run in-process, at full speed.

Run: ``python fuzz/run.py --target pdu --seconds 60``.
"""

from __future__ import annotations

import struct

from dicomlake.ingest.listener import (
    encode_associate_ac,
    inspect_dataset,
    parse_associate_rq,
    parse_command,
)

MAX_LEN = 16 * 1024
SEEDS = "pdu"
SHORT_RUNS = 20000
"""Executions of the short, fixed-seed run in the tests (``fuzz/run.py --seed 1 --runs short``)."""
_TS = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
)  # fmt: skip


def _item(t: int, v: bytes) -> bytes:
    return struct.pack(">BBH", t, 0, len(v)) + v


def seed_inputs() -> list[bytes]:
    ctx = _item(
        0x20, bytes((1, 0, 0, 0)) + _item(0x30, b"1.2.840.10008.5.1.4.1.1.2") + _item(0x40, b"1.2.840.10008.1.2")
    )
    user = _item(
        0x50,
        _item(0x51, struct.pack(">I", 16384))
        + _item(0x52, b"1.2.3.4")
        + _item(0x55, b"FUZZ")
        + _item(0x54, struct.pack(">H", 5) + b"1.2.3" + b"\x01\x00"),
    )
    rq = struct.pack(">HH", 1, 0) + b"DICOMLAKE       " + b"STORESCU        " + b"\x00" * 32
    rq += _item(0x10, b"1.2.840.10008.3.1.1.1") + ctx + user
    out = [b"\x00" + rq]

    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    cmd = el(0x0002, b"1.2.840.10008.5.1.4.1.1.2\x00") + el(0x0100, b"\x01\x00") + el(0x0110, b"\x07\x00")
    cmd += el(0x0700, b"\x00\x00") + el(0x0800, b"\x00\x00") + el(0x1000, b"1.2.3.4.5\x00")
    out.append(b"\x01" + struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(cmd)) + cmd)
    from fuzz.seeds import dicom_seeds

    for i, d in enumerate(dicom_seeds(limit=40)):
        if len(d) > 132 and d[128:132] == b"DICM":
            # the data set after the file meta (a C-STORE carries no preamble or meta)
            pos = 132
            while d[pos : pos + 2] == b"\x02\x00" and pos + 12 <= len(d):
                vr = d[pos + 4 : pos + 6]
                n = struct.unpack_from(
                    "<I" if vr in (b"OB", b"UN") else "<H", d, pos + (8 if vr in (b"OB", b"UN") else 6)
                )[0]
                pos += (12 if vr in (b"OB", b"UN") else 8) + n
            out.append(bytes((2 + i % 5,)) + d[pos : pos + 8000])
    return out


def check(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 7, data[1:]
    if which == 0:
        try:
            rq = parse_associate_rq(body)
        except ValueError:
            return
        encode_associate_ac(
            rq, [(cid, 0, tss[0] if tss else "1.2.840.10008.1.2") for cid, _a, tss in rq.contexts], 16384
        )
    elif which == 1:
        parse_command(body)
    else:
        ts = _TS[which - 2]
        for complete in (True, False):
            problem, modality = inspect_dataset(body, ts, complete)
            assert problem is None or isinstance(problem, str)
            assert modality is None or isinstance(modality, str)
