"""Fuzz target ``pdu-live``: the listener over real TCP sockets (PS3.8 upper layer, PS3.7 DIMSE).

The ``pdu`` target calls the decoders in-process; this one starts two real
:class:`~dicomlake.ingest.listener.StoreSCP` listeners in the fuzzing process, on 127.0.0.1
(free ports) with a temporary spool, and sends each input down a new TCP connection:

- listener 0: the defaults of ``dicomlake serve`` (metadata only: native pixel data become a
  sparse hole; 1 MiB maximum PDU);
- listener 1: files kept whole, 16 KiB maximum PDU (data sets arrive in many fragments).

Input: byte 0 holds flags, the rest is the stream.

- bit 0 clear, *raw*: the bytes are sent as they are (malformed A-ASSOCIATE-RQ, oversized
  or truncated lengths, random bytes after a valid association);
- bit 0 set, *framed*: records ``type:u8 length:u16be payload`` become PDUs with correct
  lengths (type 0: sent raw); a P-DATA-TF payload is itself PDV records
  ``length:u16be context:u8 control:u8 data``, so mutations of fragments, context ids and
  the command/last bits keep the framing valid; with bit 3 set the P-DATA-TF payload is
  sent as the PDU body as it is;
- bit 1 picks the listener; bit 2 ends the stream with a reset (RST) instead of a close.

Seeds are associations recorded from pynetdicom against the listeners (C-ECHO; C-STORE of
pydicom's small test files in explicit, implicit, big-endian and deflated transfer
syntaxes, several per association), raw and framed, for both listeners.

Contract after each input (anything else is a finding):

1. the listener closes the connection within 5 s of the peer's end of stream (no hang);
2. no exception escapes an association (the listener logs nothing at ERROR);
3. the association's thread ends; the process holds no more threads and open files than
   before (a small bound); no half-written ``.part`` file is left in the spool;
4. every C-STORE answered with status 0x0000 is in the spool and complete: its data set is
   byte for byte the one sent (metadata only: the same length, zeros only in the hole);
5. the listener then answers a normal C-ECHO: the association pynetdicom made, recorded,
   replayed byte for byte after every input (checked: A-ASSOCIATE-AC, C-ECHO-RSP 0x0000,
   A-RELEASE-RP), and a real pynetdicom association every 100 inputs.

Run: ``python fuzz/run.py --target pdu-live --seconds 60``.
"""

from __future__ import annotations

import atexit
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dicomlake.ingest.listener import StoreSCP, parse_command
from dicomlake.ingest.settings import DimseSettings
from dicomlake.ingest.spool import Spool, spool_name

MAX_LEN = 64 * 1024
SEEDS = "pdu_live"
SHORT_RUNS = 4000
"""Executions of the short, fixed-seed run in the tests (about 25 s here)."""
CLOSE_S = 5.0
"""Seconds the listener has to close the connection after the peer's end of stream."""
THREAD_SLACK = 2
FD_SLACK = 4
PYNETDICOM_EVERY = 100
VERIFICATION = "1.2.840.10008.1.1"
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
T = TypeVar("T")
SAMPLES = (
    ("CT_small.dcm", "1.2.840.10008.1.2.1"),
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    ("rtplan.dcm", "1.2.840.10008.1.2"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
)


# ---------------------------------------------------------------------------------------------
# PDU streams: framing, and what a stream asked the listener to store
# ---------------------------------------------------------------------------------------------


def pdus(stream: bytes) -> list[tuple[int, bytes]]:
    """The complete PDUs at the start of ``stream`` as ``(type, body)``."""
    out, pos = [], 0
    while pos + 6 <= len(stream):
        t, _, n = struct.unpack_from(">BBI", stream, pos)
        if pos + 6 + n > len(stream):
            break
        out.append((t, stream[pos + 6 : pos + 6 + n]))
        pos += 6 + n
    return out


def pdvs(body: bytes) -> list[tuple[int, int, bytes]] | None:
    """The PDV items of a P-DATA-TF body as ``(context, control, data)``; None when they do not fit."""
    out, pos = [], 0
    while pos + 6 <= len(body):
        n, cid, ctrl = struct.unpack_from(">IBB", body, pos)
        if n < 2 or pos + 4 + n > len(body):
            return None
        out.append((cid, ctrl, body[pos + 6 : pos + 4 + n]))
        pos += 4 + n
    return out


def to_framed(stream: bytes) -> bytes:
    """A recorded stream in the framed encoding (see the module docstring)."""
    out = bytearray()
    for t, body in pdus(stream):
        if t == 4:
            body = b"".join(struct.pack(">HBB", len(d), c, f) + d for c, f, d in pdvs(body) or [])
        out += struct.pack(">BH", t, len(body)) + body
    return bytes(out)


def from_framed(data: bytes, *, raw_pdata: bool = False) -> bytes:
    """The byte stream a framed input stands for: PDU (and PDV) lengths made right."""
    out, pos = bytearray(), 0
    while pos + 3 <= len(data):
        t, n = struct.unpack_from(">BH", data, pos)
        payload = data[pos + 3 : pos + 3 + n]
        pos += 3 + n
        if t == 0:
            out += payload
            continue
        if t == 4 and not raw_pdata:
            body, p = bytearray(), 0
            while p + 4 <= len(payload):
                k, cid, ctrl = struct.unpack_from(">HBB", payload, p)
                d = payload[p + 4 : p + 4 + k]
                p += 4 + k
                body += struct.pack(">IBB", len(d) + 2, cid, ctrl) + d
            payload = bytes(body)
        out += struct.pack(">BBI", t, 0, len(payload)) + payload
    return bytes(out)


def stores_sent(stream: bytes) -> list[tuple[dict[int, Any], bytes]]:
    """The C-STORE messages a stream completed, in order, as ``(command, data set)`` (PS3.8 §9.3.5, Annex E).

    Independent of the listener's own bookkeeping: command fragments build a command set;
    a C-STORE-RQ starts a message whose data set fragments follow; the last fragment
    completes it. Reading stops where the listener must stop (a non-P-DATA PDU, broken PDV
    items, a data set fragment without a command, a command other than C-STORE/C-ECHO).
    """
    out: list[tuple[dict[int, Any], bytes]] = []
    seq = pdus(stream)
    if not seq or seq[0][0] != 1:
        return out
    cmd, cur = bytearray(), None
    for t, body in seq[1:]:
        items = pdvs(body) if t == 4 else None
        if items is None:
            return out
        for _cid, ctrl, data in items:
            if ctrl & 1:
                cmd += data
                if ctrl & 2:
                    c = parse_command(bytes(cmd))
                    cmd.clear()
                    if c.get(0x0100) == C_STORE_RQ:
                        cur = (c, bytearray())
                    elif c.get(0x0100) != C_ECHO_RQ:
                        return out
            else:
                if cur is None:
                    return out
                cur[1].extend(data)
                if ctrl & 2:
                    out.append((cur[0], bytes(cur[1])))
                    cur = None
    return out


def commands_received(stream: bytes) -> list[dict[int, Any]]:
    """The DIMSE command sets in what the listener sent."""
    out, cmd = [], bytearray()
    for t, body in pdus(stream):
        if t != 4:
            continue
        for _cid, ctrl, data in pdvs(body) or []:
            if ctrl & 1:
                cmd += data
                if ctrl & 2:
                    out.append(parse_command(bytes(cmd)))
                    cmd.clear()
    return out


# ---------------------------------------------------------------------------------------------
# The socket side
# ---------------------------------------------------------------------------------------------


def exchange(port: int, stream: bytes, *, reset: bool = False, timeout: float = CLOSE_S) -> tuple[bytes, int, bool]:
    """Send ``stream`` to the listener, then close (FIN, or RST when ``reset``).

    Returns what the listener sent, our local port, and whether the listener closed the
    connection within ``timeout`` (always True after a reset: nothing more can be read).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    local = sock.getsockname()[1]
    sock.setblocking(False)
    received = bytearray()
    sent, writing = 0, True
    view = memoryview(stream)
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout

    def end_of_stream() -> bool:
        nonlocal writing
        writing = False
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return True
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sel.modify(sock, selectors.EVENT_READ)
        return False

    try:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        if not stream and end_of_stream():
            return bytes(received), local, True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(received), local, False
            for _key, ev in sel.select(left):
                if ev & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        chunk = None
                    except OSError:  # reset by the listener after an abort
                        return bytes(received), local, True
                    if chunk == b"":
                        return bytes(received), local, True
                    if chunk:
                        received += chunk
                if writing and ev & selectors.EVENT_WRITE:
                    try:
                        sent += sock.send(view[sent : sent + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the listener closed first: read what it said
                        sent = len(stream)
                    if sent >= len(stream) and end_of_stream():
                        return bytes(received), local, True
    finally:
        sel.close()
        sock.close()


def quiet(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a helper thread that blocks SIGALRM, so every thread it starts does too.

    libFuzzer's per-input timer is a process-wide SIGALRM (atheris handles it for the
    fuzzing thread); taken by a listener or pynetdicom thread it killed the process (exit
    -14, no artifact). Threads inherit the signal mask of the thread that starts them: the
    listeners' accept threads (and the association threads they start), the recording
    proxy and pynetdicom's threads are all started here, and never take it.
    """
    out: list[tuple[bool, Any]] = []

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:  # re-raised in the caller's thread
            out.append((False, exc))

    th = threading.Thread(target=run, name="fuzz-quiet", daemon=True)
    th.start()
    th.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def record(port: int, client: Callable[[int], Any]) -> bytes:
    """What ``client(proxy_port)`` sends to the listener on ``port``, through a recording proxy."""
    return quiet(_record, port, client)


def _record(port: int, client: Callable[[int], Any]) -> bytes:
    srv = socket.create_server(("127.0.0.1", 0))
    sent = bytearray()

    def pump(a: socket.socket, b: socket.socket, keep: bytearray | None) -> None:
        try:
            while chunk := a.recv(65536):
                if keep is not None:
                    keep += chunk
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve() -> None:
        c, _ = srv.accept()
        with c, socket.create_connection(("127.0.0.1", port)) as u:
            t = threading.Thread(target=pump, args=(u, c, None), daemon=True)
            t.start()
            pump(c, u, sent)
            t.join(10)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        client(srv.getsockname()[1])
    finally:
        th.join(10)
        srv.close()
    return bytes(sent)


def _ae(contexts: list[tuple[str, str]]) -> Any:
    from pynetdicom import AE

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    ae = AE("FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, [ts])
    return ae


def pynetdicom_echo(port: int) -> int:
    """A C-ECHO by pynetdicom: the status, or -1 when no association was made."""
    return quiet(_pynetdicom_echo, port)


def _pynetdicom_echo(port: int) -> int:
    assoc = _ae([(VERIFICATION, "1.2.840.10008.1.2")]).associate("127.0.0.1", port, ae_title="DICOMLAKE")
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def _store_client(files: list[str], echo_between: bool) -> Callable[[int], None]:
    def run(port: int) -> None:
        from pydicom import dcmread
        from pydicom.data import get_testdata_file

        sets = [dcmread(get_testdata_file(f)) for f in files]
        ctx = [(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in sets]
        assoc = _ae([*dict.fromkeys(ctx), (VERIFICATION, "1.2.840.10008.1.2")]).associate(
            "127.0.0.1", port, ae_title="DICOMLAKE"
        )
        assert assoc.is_established, "the listener refused the recording association"
        try:
            for ds in sets:
                status = assoc.send_c_store(ds)
                assert status and status.Status == 0, f"recording: C-STORE answered {status}"
                if echo_between:
                    assoc.send_c_echo()
        finally:
            assoc.release()

    return run


# ---------------------------------------------------------------------------------------------
# The listeners and the contract
# ---------------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Live:
    """Two listeners in this process, and the checks of the contract."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fuzz-pdu-live-"))
        self.log = logging.getLogger("dicomlake.listener")
        self._saved = (self.log.level, self.log.propagate)
        self.capture = _Capture()
        self.log.addHandler(self.capture)
        self.log.setLevel(logging.ERROR)  # warnings (aborted associations) are the normal case here
        self.log.propagate = False
        self.done: dict[int, threading.Event] = {}
        self.scps: list[StoreSCP] = []
        for i, extra in enumerate(({}, {"keep_files": True, "max_pdu": 16384})):
            settings = DimseSettings(fsync=False, min_free_bytes=0, network_timeout_s=CLOSE_S * 2, **extra)  # type: ignore[arg-type]
            scp = StoreSCP(Spool(self.dir / f"lake{i}", fsync=False), settings)
            self._watch(scp)
            quiet(scp.start, "127.0.0.1", 0)
            self.scps.append(scp)
        self.inputs = 0
        self.echo_stream = record(self.port(0), _pynetdicom_echo)
        for i in range(len(self.scps)):
            self.echo(i, real=True)
            self.clean(i)
        time.sleep(0.2)
        self.threads = threading.active_count()
        self.fds = _open_fds()

    def port(self, i: int) -> int:
        return self.scps[i].address[1]

    def _watch(self, scp: StoreSCP) -> None:
        """Know when the thread serving a connection (by the peer's port) has finished."""
        serve = scp._serve

        def watched(conn: socket.socket, addr: tuple[str, int]) -> None:
            ev = self.done.setdefault(addr[1], threading.Event())
            try:
                serve(conn, addr)
            finally:
                ev.set()

        scp._serve = watched  # type: ignore[method-assign]

    def close(self) -> None:
        for scp in self.scps:
            scp.stop(timeout=2)
        self.scps = []
        self.log.removeHandler(self.capture)
        self.log.setLevel(self._saved[0])
        self.log.propagate = self._saved[1]
        shutil.rmtree(self.dir, ignore_errors=True)

    def clean(self, i: int) -> None:
        root = self.scps[i].spool.root
        for label in root.iterdir():
            if label.is_dir() and label != self.scps[i].spool.tmp_dir:
                for f in label.iterdir():
                    f.unlink(missing_ok=True)

    # ---- the checks ---------------------------------------------------------------------

    def wait_served(self, local_port: int) -> None:
        ev = self.done.setdefault(local_port, threading.Event())
        if not ev.wait(CLOSE_S):
            raise AssertionError(f"the association from port {local_port} still runs {CLOSE_S} s after the peer left")
        del self.done[local_port]

    def errors(self) -> None:
        if self.capture.records:
            rec = self.capture.records[0]
            self.capture.records.clear()
            exc = ""
            if rec.exc_info and rec.exc_info[1] is not None:
                exc = f": {type(rec.exc_info[1]).__name__}: {rec.exc_info[1]}"
            raise AssertionError(f"the listener logged an error: {rec.getMessage()}{exc}")

    def leaks(self, i: int) -> None:
        deadline = time.monotonic() + 2.0
        while True:
            threads, fds = threading.active_count(), _open_fds()
            parts = list(self.scps[i].spool.tmp_dir.iterdir())
            if threads <= self.threads + THREAD_SLACK and fds <= self.fds + FD_SLACK and not parts:
                return
            if time.monotonic() > deadline:
                # judge the next input afresh (a replay of several inputs reports each once)
                self.threads, self.fds = max(self.threads, threads), max(self.fds, fds)
                for part in parts:
                    part.unlink(missing_ok=True)
                raise AssertionError(
                    f"leak after the association: {threads} threads (baseline {self.threads}), "
                    f"{fds} open files (baseline {self.fds}), half-written spool files {[p.name for p in parts]}"
                )
            time.sleep(0.01)

    def acknowledged(self, i: int, stream: bytes, received: bytes) -> None:
        """Every C-STORE answered 0x0000 is in the spool with the whole data set sent."""
        scp = self.scps[i]
        answers = [c for c in commands_received(received) if c.get(0x0100) == C_STORE_RSP]
        if not answers:
            return
        sent = stores_sent(stream)
        last: dict[str, bytes] = {}
        for k, rsp in enumerate(answers):
            if k >= len(sent):
                raise AssertionError(f"C-STORE response #{k + 1} for a message the stream never completed: {rsp}")
            rq, dataset = sent[k]
            uid = str(rq.get(0x1000, ""))
            if rsp.get(0x1000, "") != uid.encode("ascii", "replace").decode():  # bytes not ASCII come back as ?
                raise AssertionError(f"C-STORE response #{k + 1} names {rsp.get(0x1000)!r}, the request {uid!r}")
            if rsp.get(0x0900) == 0:
                last[uid] = dataset
            else:
                last.pop(uid, None)  # a failed resend leaves the earlier copy: not checked
        for uid, dataset in last.items():
            path = scp.spool.root / scp.label / f"{spool_name(uid)}.dcm"
            if not path.exists():
                raise AssertionError(f"C-STORE of {uid!r} acknowledged, no file in the spool")
            raw = path.read_bytes()
            if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
                raise AssertionError(f"C-STORE of {uid!r} acknowledged, the spool file has no file meta")
            body = raw[144 + struct.unpack_from("<I", raw, 140)[0] :]
            if body == dataset:
                continue
            if len(body) != len(dataset):
                raise AssertionError(
                    f"C-STORE of {uid!r} acknowledged with {len(body)} of the {len(dataset)} data set bytes sent"
                )
            first = next(j for j in range(len(body)) if body[j] != dataset[j])
            end = max(j for j in range(len(body)) if body[j] != dataset[j]) + 1
            if not scp.skip_pixels or body[first:end].strip(b"\x00"):
                raise AssertionError(f"C-STORE of {uid!r} acknowledged, data set bytes {first}..{end} differ")

    def echo(self, i: int, *, real: bool = False) -> None:
        port = self.port(i)
        if real:
            status = pynetdicom_echo(port)
            if status != 0:
                raise AssertionError(f"listener {i}: pynetdicom's C-ECHO got {status} (-1: no association)")
            return
        received, local, closed = exchange(port, self.echo_stream)
        kinds = [t for t, _b in pdus(received)]
        answers = [(c.get(0x0100), c.get(0x0900)) for c in commands_received(received)]
        if not closed or kinds != [2, 4, 6] or answers != [(C_ECHO_RSP, 0)]:
            raise AssertionError(
                f"listener {i} no longer answers C-ECHO: PDU types {kinds}, (command, status) {answers}, "
                f"closed {closed}"
            )
        self.wait_served(local)

    def run(self, data: bytes) -> None:
        flags, body = data[0], data[1:]
        i = (flags >> 1) & 1
        stream = from_framed(body, raw_pdata=bool(flags & 8)) if flags & 1 else body
        received, local, closed = exchange(self.port(i), stream, reset=bool(flags & 4))
        if not closed:
            raise AssertionError(f"listener {i} did not close the connection within {CLOSE_S} s of the end of stream")
        self.wait_served(local)
        self.errors()
        self.acknowledged(i, stream, received)
        self.clean(i)
        self.leaks(i)
        self.inputs += 1
        self.echo(i, real=self.inputs % PYNETDICOM_EVERY == 0)
        self.errors()


_LIVE: Live | None = None


def live() -> Live:
    global _LIVE
    if _LIVE is None:
        _LIVE = Live()
        atexit.register(shutdown)
    return _LIVE


def shutdown() -> None:
    """Stop the listeners and restore logging (the tests call this; atexit otherwise)."""
    global _LIVE
    if _LIVE is not None:
        _LIVE.close()
        _LIVE = None


def warm_up() -> None:
    live()


def seed_inputs() -> list[bytes]:
    """Associations recorded from pynetdicom, raw and framed, for both listeners."""
    started_here = _LIVE is None
    lv = live()
    streams: list[tuple[int, bytes]] = []
    for i in range(len(lv.scps)):
        port = lv.port(i)
        streams.append((i, record(port, _pynetdicom_echo)))
        for files, echo in (
            (["MR_small_implicit.dcm"], False),
            (["rtplan.dcm", "image_dfl.dcm"], True),
            (["MR_small_bigendian.dcm", "JPEG2000.dcm"], False),
            (["CT_small.dcm"], False),
        ):
            streams.append((i, record(port, _store_client(files, echo))))
        lv.clean(i)
    out = []
    for i, s in streams:
        if len(s) + 1 > MAX_LEN:
            continue
        out.append(bytes((i << 1,)) + s)
        if all(len(b) <= 0xFFFF for _t, b in pdus(s)):
            out.append(bytes((i << 1 | 1,)) + to_framed(s))
    # a valid association followed by noise, and a reset mid-stream
    i, s = streams[1]
    out.append(bytes((i << 1,)) + s[: len(s) // 2] + bytes(range(256)))
    out.append(bytes((i << 1 | 4,)) + s[: len(s) // 3])
    if started_here:
        shutdown()
    return out


def check(data: bytes) -> None:
    if not data:
        return
    live().run(data)
