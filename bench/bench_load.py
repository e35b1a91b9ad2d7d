"""Load on the running service: concurrent C-STORE senders, concurrent HTTP clients, an optional soak.

One ``dicomlake serve`` process (the CLI, configured by a TOML file named in
``DICOMLAKE_CONFIG``: fsync on, ``max_associations`` raised above the largest sender count,
a fixed web secret) on loopback ports picked free, with its DICOMweb/UI port, over a fresh lake:

1. C-STORE with 1, 4, 16 and 64 concurrent senders: associations of a small C-STORE SCU
   (:class:`StoreSCU`) in threads of this process, each sending its share of ``BENCH_LOAD_N``
   (default 1,000) instances of the cached benchmark corpus (different files at each level), each
   read before its timer starts. Figures: acknowledged instances/s, p50/p95 acknowledgement
   latency (C-STORE-RQ sent to C-STORE-RSP received), the time
   until every header is in the lake, and the RSS of the service (process and children) sampled
   every 0.5 s: samples at 0/25/50/75/100 % of the run and the growth from 25 % to 100 %.
   The 1-sender rate is compared with dcmtk ``storescp -od`` receiving the same files from the
   same client (``BENCH_LOAD_PEER=0`` skips it).
2. HTTP with 1 (baseline), 8 and 32 concurrent clients for ``BENCH_LOAD_SECONDS`` (default 10)
   each, bearer JWT, cycling through two QIDO-RS searches on attributes that are not QIDO required
   keys and the UI's studies page: requests/s, p50/p95 latency and errors, per URL and in all.
3. ``BENCH_SOAK_SECONDS`` (default 0, off; 3600 for the one-hour soak; ``BENCH_SOAK_FILES``
   cycles over only that many files, so the lake stops growing early): ``BENCH_SOAK_SENDERS``
   (4) senders, each opening an association per 50 instances, and ``BENCH_SOAK_CLIENTS`` (4)
   HTTP clients run together until the time is up, cycling over the whole corpus (after one pass
   instances are sent again: the same SOP Instance UIDs, replaced in the lake). RSS and open file
   descriptors of the service (process and children) are sampled every ``BENCH_SOAK_INTERVAL``
   (5) seconds; the verdict compares the median sample of the second quarter with the last one's.

The machine's other load shows in every figure: the senders, the HTTP clients and the service
share the same cores. Run alone with ``python -m bench.bench_load``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_receive import _env_int, _free_port, storescp
from bench.corpus import REPO_ROOT, ensure_corpus
from bench.report import BenchResult, fmt, table

NAME = "load"
SENDERS = (1, 4, 16, 64)
CLIENTS = (1, 8, 32)
"""HTTP client counts; 1 is the baseline: the service time of one request without queueing."""
AE_TITLE = "DICOMLAKE"
SECRET = "bench-load-secret-" + "l" * 32
USER = "bench"

HTTP_URLS = [
    ("QIDO studies?Modality=CT", "/dicomweb/studies?Modality=CT", "application/dicom+json"),
    ("QIDO instances?StationName=RIECT1", "/dicomweb/instances?StationName=RIECT1&limit=50", "application/dicom+json"),
    ("UI /studies page", "/studies", "text/html"),
]
"""(label, URL, Accept): Modality and StationName are not QIDO-RS required keys at these levels."""

SOAK_CHUNK = 50
"""Instances per association in the soak, so associations open and close all along."""


def _env_float(name: str, default: float) -> float:
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


def _pct(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank of the sorted values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


# ---- the service --------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    children: int


def _usage(pid: int) -> tuple[int, int, int]:
    """RSS bytes, open file descriptors and child count of ``pid`` and its children (psutil)."""
    import psutil

    rss = fds = 0
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for q in procs:
        try:
            rss += q.memory_info().rss
            fds += q.num_fds()
        except psutil.Error:
            pass
    return rss, fds, len(procs) - 1


class Sampler:
    """Samples the service's RSS and descriptors every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while True:
            rss, fds, kids = _usage(self.pid)
            self.samples.append(Sample(time.monotonic() - self.t0, rss, fds, kids))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Sampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        rss, fds, kids = _usage(self.pid)  # the 100 % point is the end of the run
        self.samples.append(Sample(time.monotonic() - self.t0, rss, fds, kids))


def _at(samples: Sequence[Sample], fractions: Sequence[float] = (0, 0.25, 0.5, 0.75, 1)) -> list[Sample]:
    """The samples nearest to each fraction of the run's duration."""
    if not samples:
        return []
    end = samples[-1].t
    return [min(samples, key=lambda s, f=f: abs(s.t - f * end)) for f in fractions]


def _growth(first: float, last: float) -> float:
    return (last - first) / first * 100 if first else 0.0


class Service:
    """``dicomlake serve`` over a fresh lake in a temporary folder; killed and removed on exit."""

    def __init__(self, max_associations: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
        self.lake = self.tmp / "lake"
        self.port = _free_port()
        self.http_port = _free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.max_associations = max_associations
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self._log = self.tmp / "serve.log"

    def __enter__(self) -> Service:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        import httpx

        from dicomlake.web.audit_log import AccessDB
        from dicomlake.web.auth import Auth
        from dicomlake.web.settings import WebSettings

        config = self.tmp / "dicomlake.toml"
        config.write_text(
            f'[dimse]\nmax_associations = {self.max_associations}\nfsync = true\n\n[web]\nsecret = "{SECRET}"\n'
        )
        self.lake.mkdir()
        db = AccessDB(self.lake / "access.db")  # a user and its bearer JWT, as bench_qido does
        auth = Auth(db, WebSettings(secret=SECRET), SECRET.encode())
        auth.add_user(USER, "admin", "bench-password-" + "p" * 8)
        self.token = auth.issue_jwt(USER)
        db.close()
        script = Path(sys.executable).with_name("dicomlake")
        cli = [str(script)] if script.exists() else [sys.executable, "-m", "dicomlake.cli.main"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
        env["DICOMLAKE_CONFIG"] = str(config)
        cmd = [*cli, "serve", "--lake", str(self.lake), "--port", str(self.port)]
        cmd += ["--http-port", str(self.http_port), "--bind", "127.0.0.1", "-q"]
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if (self.lake / "service.json").exists():
                try:
                    if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dicomlake serve did not start: {self.log_tail()}")
            time.sleep(0.1)
        time.sleep(1.0)  # let the drainer's extraction process start

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self._log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def in_lake(self) -> int:
        """Instances in the lake, asked through the service's control endpoint."""
        from dicomlake.store.remote import RemoteStore, live_service

        info = live_service(self.lake)
        if info is None:
            raise RuntimeError(f"the service is gone: {self.log_tail()}")
        store = RemoteStore(self.lake, info)
        try:
            return int(store.query("SELECT count(*) AS n FROM instances").column("n")[0].as_py())
        finally:
            store.close()

    def wait_in_lake(self, n: int, timeout: float = 600) -> float:
        """Seconds until at least ``n`` instances are in the lake."""
        t0 = time.monotonic()
        while (have := self.in_lake()) < n:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"only {have:,} of {n:,} instances reached the lake in {timeout:.0f} s")
            time.sleep(0.1)
        return time.monotonic() - t0

    def __exit__(self, *exc: object) -> None:
        import psutil

        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    kids = psutil.Process(self.proc.pid).children(recursive=True)
                except psutil.Error:
                    kids = []
                self.proc.send_signal(signal.SIGTERM)  # stops cleanly: drains the spool first
                try:
                    self.proc.wait(120)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(30)
                for k in kids:
                    try:
                        k.kill()
                    except psutil.Error:
                        pass
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---- C-STORE senders ----------------------------------------------------------------------


def _contexts(files: Sequence[str]) -> dict[str, list[str]]:
    """SOP Class UID → transfer syntaxes of ``files`` (read from their file meta)."""
    from pydicom.filereader import read_file_meta_info

    out: dict[str, set[str]] = {}
    for f in files:
        meta = read_file_meta_info(f)
        out.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
    if sum(len(v) for v in out.values()) > 128:  # PS3.8 9.3.2.2: at most 128 presentation contexts
        raise RuntimeError("the corpus needs more than 128 presentation contexts")
    return {k: sorted(v) for k, v in out.items()}


@dataclass
class SendStats:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, why: str, n: int = 1) -> None:
        with self.lock:
            self.failed += n
            if len(self.errors) < 5:
                self.errors.append(why)


def _part10(path: str) -> tuple[str, str, str, bytes]:
    """SOP Class UID, SOP Instance UID, transfer syntax and the data set's bytes (after the file meta)."""
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    with open(path, "rb") as fh:
        fh.seek(128 + 4 + 8)  # preamble, "DICM", then (0002,0000) UL: tag 4, VR 2, length 2
        (meta_length,) = struct.unpack("<I", fh.read(4))
        fh.seek(128 + 4 + 12 + meta_length)
        data = fh.read()
    return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), data


def _item(item_type: int, value: bytes) -> bytes:
    """An A-ASSOCIATE item or sub-item: type, reserved, 2-byte length, value (PS3.8 §9.3.2)."""
    return struct.pack(">BBH", item_type, 0, len(value)) + value


class StoreSCU:
    """A minimal C-STORE SCU on a blocking socket: one association, each C-STORE timed.

    Written out here rather than pynetdicom's ``Association.send_c_store``: in threads in this
    process, pynetdicom 3.0.4 now and then took the C-STORE-RSP it was waiting for as "unexpected"
    (its log says "Received unexpected C-STORE service message") and waited until its DIMSE
    timeout, against storescp as against dicomlake serve; and its per-PDU polling costs the
    shared cores more than the service under test. The framing is
    what dcmtk ``storescu`` sends: the command in one PDV, the data set in PDVs filling the
    receiver's maximum PDU length (PS3.8 §9.3.5, Annex E).
    """

    def __init__(self, port: int, called: str, contexts: dict[str, list[str]], timeout: float = 120) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proposed: dict[int, tuple[str, str]] = {}
        items = [_item(0x10, b"1.2.840.10008.3.1.1.1")]  # PS3.7 A.2.1: the DICOM application context
        cid = 1
        for sop_class, syntaxes in contexts.items():
            for ts in syntaxes:  # one transfer syntax per context: the file's bytes go as they are
                proposed[cid] = (sop_class, ts)
                items.append(
                    _item(0x20, bytes((cid, 0, 0, 0)) + _item(0x30, sop_class.encode()) + _item(0x40, ts.encode()))
                )
                cid += 2
        user = _item(0x51, struct.pack(">I", 0)) + _item(0x52, b"1.2.826.0.1.3680043.10.1428.99.1")
        items.append(_item(0x50, user))
        body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + b"BENCHLOAD".ljust(16) + b"\x00" * 32
        body += b"".join(items)
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        pdu_type, ac = self._read_pdu()
        if pdu_type != 0x02:
            self.sock.close()
            raise ConnectionError(f"association not accepted (PDU type 0x{pdu_type:02X})")
        self.accepted: dict[tuple[str, str], int] = {}
        self.max_pdu = 16384
        pos = 68  # PS3.8 Table 9-17: the variable items follow 68 bytes of fixed fields
        while pos + 4 <= len(ac):
            itype, _, ilen = struct.unpack_from(">BBH", ac, pos)
            value = ac[pos + 4 : pos + 4 + ilen]
            if itype == 0x21 and value[2] == 0:  # presentation context accepted
                self.accepted[proposed[value[0]]] = value[0]
            elif itype == 0x50:
                sub = 0
                while sub + 4 <= len(value):
                    stype, _, slen = struct.unpack_from(">BBH", value, sub)
                    if stype == 0x51:
                        self.max_pdu = struct.unpack_from(">I", value, sub + 4)[0] or (1 << 22)
                    sub += 4 + slen
            pos += 4 + ilen
        self.msg_id = 0

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            buf += chunk
        return bytes(buf)

    def _read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBI", self._recv(6))
        return pdu_type, self._recv(length)

    def store(self, sop_class: str, sop_instance: str, ts: str, data: bytes) -> int:
        """One C-STORE; returns the response's Status (PS3.7 Annex C)."""
        from dicomlake.ingest.listener import encode_command, parse_command

        cid = self.accepted.get((sop_class, ts))
        if cid is None:
            raise ValueError(f"no accepted presentation context for {sop_class} in {ts}")
        self.msg_id = self.msg_id % 65535 + 1
        command = encode_command(
            [
                (0x0002, "UI", sop_class),
                (0x0100, "US", 0x0001),  # C-STORE-RQ
                (0x0110, "US", self.msg_id),
                (0x0700, "US", 0),
                (0x0800, "US", 0x0000),  # a data set follows
                (0x1000, "UI", sop_instance),
            ]
        )
        out = [struct.pack(">BBIIBB", 0x04, 0, len(command) + 6, len(command) + 2, cid, 0x03) + command]
        step = max(2, min(self.max_pdu, 1 << 20) - 6) & ~1
        view = memoryview(data)
        for i in range(0, len(data), step):
            frag = view[i : i + step]
            last = 0x02 if i + step >= len(data) else 0x00
            out.append(struct.pack(">BBIIBB", 0x04, 0, len(frag) + 6, len(frag) + 2, cid, last))
            out.append(frag)
        self.sock.sendall(b"".join(out))
        reply = bytearray()
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type != 0x04:
                raise ConnectionError(f"PDU type 0x{pdu_type:02X} instead of the C-STORE-RSP")
            pos = 0
            while pos + 6 <= len(body):
                (plen,) = struct.unpack_from(">I", body, pos)
                control = body[pos + 5]
                reply += body[pos + 6 : pos + 4 + plen]
                pos += 4 + plen
                if control & 0x03 == 0x03:
                    return int(parse_command(bytes(reply)).get(0x0900, -1))

    def release(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBII", 0x05, 0, 4, 0))
            self._read_pdu()
        except OSError:
            pass
        finally:
            self.sock.close()

    def abort(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0))
        except OSError:
            pass
        finally:
            self.sock.close()


def _send_association(
    files: Sequence[str], port: int, aec: str, contexts: dict[str, list[str]], stats: SendStats
) -> None:
    """One association sending ``files``, each acknowledgement timed (reading the file is not)."""
    try:
        scu = StoreSCU(port, aec, contexts)
    except (OSError, ConnectionError, struct.error) as exc:
        stats.fail(f"association not established: {type(exc).__name__}: {exc}", len(files))
        return
    for i, f in enumerate(files):
        sop_class, uid, ts, data = _part10(f)
        t0 = time.perf_counter()
        try:
            status = scu.store(sop_class, uid, ts, data)
        except (OSError, ConnectionError, ValueError, struct.error) as exc:
            stats.fail(f"{type(exc).__name__}: {exc}")
            stats.fail("association lost", len(files) - i - 1)
            scu.abort()
            return
        dt = time.perf_counter() - t0
        if status == 0:
            with stats.lock:
                stats.latencies.append(dt)
                stats.sent += 1
        else:
            stats.fail(f"status 0x{status:04X}")
    scu.release()


def send(
    files: Sequence[str], senders: int, port: int, aec: str, contexts: dict[str, list[str]]
) -> tuple[SendStats, float]:
    """``senders`` concurrent associations over slices of ``files``; stats and wall seconds."""
    stats = SendStats()
    slices = [list(files[i::senders]) for i in range(senders)]
    threads = [
        threading.Thread(target=_send_association, args=(s, port, aec, contexts, stats), daemon=True)
        for s in slices
        if s
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats, time.perf_counter() - t0


def _storescp_rate(files: Sequence[str], contexts: dict[str, list[str]]) -> tuple[SendStats, float] | None:
    """dcmtk ``storescp -od`` (files to disk, no fsync) receiving ``files`` from the same client."""
    if shutil.which("storescp") is None:
        return None
    with storescp("bench-load-storescp-") as (_proc, port):
        return send(files, 1, port, "STORESCP", contexts)


# ---- HTTP clients -------------------------------------------------------------------------


@dataclass
class HttpStats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {label: [] for label, _, _ in HTTP_URLS})
    errors: dict[str, int] = field(default_factory=lambda: {label: 0 for label, _, _ in HTTP_URLS})
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def _http_client(base: str, token: str, stop_at: float, stats: HttpStats, start: int) -> None:
    import httpx

    urls = itertools.islice(itertools.cycle(HTTP_URLS), start, None)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for label, url, accept in urls:
            if time.monotonic() >= stop_at:
                return
            t0 = time.perf_counter()
            try:
                r = c.get(url, headers={"Accept": accept})
                ok, why = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            with stats.lock:
                if ok:
                    stats.latencies[label].append(dt)
                else:
                    stats.errors[label] += 1
                    if len(stats.samples) < 5:
                        stats.samples.append(f"{label}: {why}")


def probe(base: str, token: str) -> dict[str, str]:
    """What each URL answers once: the number of QIDO results, or the size of the page."""
    import httpx

    out = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for label, url, accept in HTTP_URLS:
            r = c.get(url, headers={"Accept": accept})
            if r.status_code != 200:
                out[label] = f"HTTP {r.status_code}"
            elif "json" in accept:
                out[label] = f"{len(r.json())} results"
            else:
                out[label] = f"{len(r.content) / 1024:,.0f} KiB page"
    return out


def http_load(base: str, token: str, clients: int, seconds: float) -> tuple[HttpStats, float]:
    stats = HttpStats()
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_http_client, args=(base, token, stop_at, stats, i), daemon=True)
        for i in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return stats, time.perf_counter() - t0


# ---- soak ---------------------------------------------------------------------------------


def soak(svc: Service, files: Sequence[str], contexts: dict[str, list[str]], seconds: float) -> dict[str, Any]:
    """Senders and HTTP clients together for ``seconds``; the service sampled all along."""
    senders = _env_int("BENCH_SOAK_SENDERS", 4)
    clients = _env_int("BENCH_SOAK_CLIENTS", 4)
    interval = _env_float("BENCH_SOAK_INTERVAL", 5.0)
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    cycle: Iterator[str] = itertools.cycle(files)
    sstats = SendStats()

    def next_chunk() -> list[str]:
        with lock:
            return list(itertools.islice(cycle, SOAK_CHUNK))

    def sender() -> None:
        while time.monotonic() < stop_at:
            _send_association(next_chunk(), svc.port, AE_TITLE, contexts, sstats)

    hstats = HttpStats()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    threads += [
        threading.Thread(target=_http_client, args=(svc.base, svc.token, stop_at, hstats, i), daemon=True)
        for i in range(clients)
    ]
    rows: list[dict[str, Any]] = []
    print(
        f"soak: {seconds:.0f} s, {senders} senders ({SOAK_CHUNK} instances per association), "
        f"{clients} HTTP clients, sample every {interval:g} s",
        flush=True,
    )
    t0 = time.monotonic()
    in_lake0 = svc.in_lake()
    for t in threads:
        t.start()
    next_print = t0 + max(60.0, seconds / 12)
    while True:
        now = time.monotonic()
        rss, fds, kids = _usage(svc.pid)
        try:
            lake = svc.in_lake() - in_lake0
        except Exception:  # a sample without the count is still a sample
            lake = -1
        with sstats.lock, hstats.lock:
            row = {
                "t": round(now - t0, 1),
                "rss": rss,
                "fds": fds,
                "children": kids,
                "acked": sstats.sent,
                "send_failed": sstats.failed,
                "in_lake": lake,
                "http": hstats.total(),
                "http_errors": sum(hstats.errors.values()),
            }
        rows.append(row)
        if now >= next_print:
            print(
                f"  {row['t']:7.0f} s  RSS {rss / 2**20:,.0f} MiB  fds {fds}  acked {row['acked']:,}  "
                f"HTTP {row['http']:,}",
                flush=True,
            )
            next_print += max(60.0, seconds / 12)
        if svc.proc is not None and svc.proc.poll() is not None:
            raise RuntimeError(f"the service died during the soak: {svc.log_tail()}")
        if now >= stop_at:
            break
        time.sleep(min(interval, max(0.0, stop_at - time.monotonic())))
    for t in threads:  # each stops at stop_at; one association's worth or one request later at most
        t.join(max(1.0, stop_at + 180 - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    rss, fds, kids = _usage(svc.pid)
    end = {"t": round(time.monotonic() - t0, 1), "rss": rss, "fds": fds, "children": kids}
    return {
        "seconds": seconds,
        "senders": senders,
        "clients": clients,
        "interval": interval,
        "rows": rows,
        "end": end,
        "acked": sstats.sent,
        "send_failed": sstats.failed,
        "send_errors": sstats.errors,
        "ack_p50_ms": _ms(_pct(sstats.latencies, 0.5)),
        "ack_p95_ms": _ms(_pct(sstats.latencies, 0.95)),
        "http": hstats.total(),
        "http_errors": sum(hstats.errors.values()),
        "http_error_samples": hstats.samples,
        "http_p50_ms": {k: _ms(_pct(v, 0.5)) for k, v in hstats.latencies.items()},
        "http_p95_ms": {k: _ms(_pct(v, 0.95)) for k, v in hstats.latencies.items()},
        "threads_still_running": stuck,
        "wall": time.monotonic() - t0,
    }


def _soak_report(res: BenchResult, s: dict[str, Any]) -> None:
    rows = s["rows"]
    if not rows:
        return
    end = rows[-1]["t"] or 1.0
    picks = sorted(
        {
            min(range(len(rows)), key=lambda i, f=f: abs(rows[i]["t"] - f * end))
            for f in (0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1)
        }
    )
    print(
        table(
            [
                [
                    f"{rows[i]['t']:.0f} s",
                    f"{100 * rows[i]['t'] / end:.0f} %",
                    fmt(rows[i]["rss"] / 2**20, "MiB"),
                    str(rows[i]["fds"]),
                    str(rows[i]["children"]),
                    f"{rows[i]['acked']:,}",
                    f"{rows[i]['in_lake']:,}",
                    f"{rows[i]['http']:,}",
                    str(rows[i]["send_failed"] + rows[i]["http_errors"]),
                ]
                for i in picks
            ],
            ["time", "of run", "RSS", "fds", "children", "acked", "in lake", "HTTP done", "errors"],
        )
    )
    # the verdict compares the median sample of the second quarter with the last quarter's:
    # one sample lands on a checkpoint or a worker's replacement as easily as on a plateau
    quarters = [[r for r in rows if k * end / 4 <= r["t"] <= (k + 1) * end / 4] for k in range(4)]
    by_quarter = [
        (statistics.median(r["rss"] for r in qr), statistics.median(r["fds"] for r in qr)) for qr in quarters if qr
    ]
    (rss_a, fds_a), (rss_b, fds_b) = by_quarter[min(1, len(by_quarter) - 1)], by_quarter[-1]
    rss_growth = _growth(rss_a, rss_b)
    fd_growth = round(fds_b - fds_a)
    verdict_rss = "flat" if abs(rss_growth) < 10 else f"grows {rss_growth:+.0f} %"
    verdict_fds = "flat" if abs(fd_growth) <= 5 else f"grows {fd_growth:+d}"
    rate = s["acked"] / s["seconds"]
    http_rate = s["http"] / s["seconds"]
    print(
        "median RSS by quarter of the soak: "
        + ", ".join(f"{m / 2**20:,.0f} MiB" for m, _ in by_quarter)
        + "; median open files: "
        + ", ".join(f"{f:g}" for _, f in by_quarter)
    )
    print(
        f"soak verdict: RSS {verdict_rss} ({rss_a / 2**20:,.0f} → {rss_b / 2**20:,.0f} MiB, median of the 2nd "
        f"quarter → of the 4th), open files {verdict_fds} ({fds_a:g} → {fds_b:g}); "
        f"{s['acked']:,} instances acknowledged "
        f"({rate:,.1f}/s, p50 {fmt(s['ack_p50_ms'], 'ms')}, p95 {fmt(s['ack_p95_ms'], 'ms')}), "
        f"{s['send_failed']} failed; {s['http']:,} HTTP requests ({http_rate:,.1f}/s), {s['http_errors']} errors; "
        f"threads still running at the end: {s['threads_still_running']}"
    )
    for e in s["send_errors"][:3] + s["http_error_samples"][:3]:
        print(f"  error: {e}")
    mins = f"{s['seconds'] / 60:.0f} min soak"
    res.add(f"soak ({mins}): RSS growth, median 2nd → 4th quarter", rss_growth, "%", note=verdict_rss)
    res.add(f"soak ({mins}): open files growth, median 2nd → 4th quarter", float(fd_growth), "fds", note=verdict_fds)
    res.add(f"soak ({mins}): instances acknowledged", rate, "inst/s", note=f"{s['send_failed']} failed")
    res.add(f"soak ({mins}): HTTP requests", http_rate, "req/s", note=f"{s['http_errors']} errors")


# ---- main ---------------------------------------------------------------------------------


def main() -> BenchResult:
    """Run the load bench; SIGTERM ends it like Ctrl-C, so the service and temp folders still go."""

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(f"bench_load stopped by signal {signum}")

    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)


def _run() -> BenchResult:
    res = BenchResult(NAME)
    n = _env_int("BENCH_LOAD_N", 1000)
    seconds = _env_float("BENCH_LOAD_SECONDS", 10.0)
    soak_seconds = _env_float("BENCH_SOAK_SECONDS", 0.0)
    corpus, _stats = ensure_corpus(_env_int("BENCH_N", 20000), _env_int("BENCH_SEED", 0))
    every = sorted(str(p) for p in corpus.rglob("*.dcm"))
    need = n * len(SENDERS)
    if len(every) < need:
        raise RuntimeError(f"BENCH_LOAD_N={n} needs {need:,} corpus files, BENCH_N gives {len(every):,}")
    levels = {k: every[i * n : (i + 1) * n] for i, k in enumerate(SENDERS)}
    used = every[:need]
    size = sum(os.path.getsize(f) for f in used)
    print(f"{n:,} instances per level, {size / need / 1024:,.0f} KiB each; {len(every):,} in the corpus")
    for f in used:  # warm the page cache: the senders read every byte
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    contexts = _contexts(every if soak_seconds > 0 else used)
    raw: dict[str, Any] = {"instances_per_level": n, "bytes_per_instance": size / need, "cpus": os.cpu_count()}

    with Service(max_associations=max(SENDERS) + 8) as svc:
        print(f"dicomlake serve: pid {svc.pid}, C-STORE port {svc.port}, HTTP port {svc.http_port}", flush=True)
        # 1. C-STORE -------------------------------------------------------------------------------
        store_rows, rss_rows, total = [], [], 0
        with Sampler(svc.pid, 0.5) as whole:
            for k in SENDERS:
                files = levels[k]
                with Sampler(svc.pid, 0.5) as sampler:
                    stats, wall = send(files, k, svc.port, AE_TITLE, contexts)
                total += stats.sent
                t_lake = svc.wait_in_lake(total)
                rate = stats.sent / wall
                p50, p95 = _ms(_pct(stats.latencies, 0.5)), _ms(_pct(stats.latencies, 0.95))
                lake_rate = stats.sent / (wall + t_lake)
                print(
                    f"  {k:2d} sender(s): {stats.sent:,} acknowledged in {wall:.1f} s ({rate:,.0f}/s), "
                    f"p50 {fmt(p50, 'ms')}, p95 {fmt(p95, 'ms')}, {stats.failed} failed; in the lake "
                    f"{t_lake:.1f} s after the last ack",
                    flush=True,
                )
                for e in stats.errors[:3]:
                    print(f"    error: {e}")
                q = _at(sampler.samples)
                store_rows.append(
                    [
                        str(k),
                        fmt(rate, "inst/s"),
                        fmt(p50, "ms"),
                        fmt(p95, "ms"),
                        fmt(lake_rate, "inst/s"),
                        str(stats.failed),
                        fmt(max(s.rss for s in sampler.samples) / 2**20, "MiB"),
                    ]
                )
                res.add(f"C-STORE, {k} sender(s): acknowledged", rate, "inst/s", note=f"{stats.failed} failed")
                res.add(f"C-STORE, {k} sender(s): ack latency p50", p50, "ms")
                res.add(f"C-STORE, {k} sender(s): ack latency p95", p95, "ms")
                raw[f"senders_{k}"] = {
                    "acked": stats.sent,
                    "failed": stats.failed,
                    "errors": stats.errors,
                    "wall": wall,
                    "in_lake_after_s": t_lake,
                    "p50_ms": p50,
                    "p95_ms": p95,
                    "rss_samples_mib": [round(s.rss / 2**20, 1) for s in q],
                }
                rss_rows.append([f"{k} sender(s)", *(fmt(s.rss / 2**20, "MiB") for s in q)])
        q = _at(whole.samples)
        growth = _growth(q[1].rss, q[-1].rss)
        verdict = "flat" if abs(growth) < 10 else f"grows {growth:+.0f} %"
        rss_rows.append(["whole C-STORE run", *(fmt(s.rss / 2**20, "MiB") for s in q)])
        print(
            table(
                store_rows,
                ["senders", "acknowledged", "ack p50", "ack p95", "into lake", "failed", "peak RSS"],
            )
        )
        print("service RSS (process and children), sampled every 0.5 s:")
        print(table(rss_rows, ["run", "0 %", "25 %", "50 %", "75 %", "100 %"]))
        print(
            f"RSS over the whole C-STORE run ({whole.samples[-1].t:.0f} s, {total:,} instances): {verdict} "
            f"({q[1].rss / 2**20:,.0f} → {q[-1].rss / 2**20:,.0f} MiB from 25 % to 100 %)"
        )
        res.add("C-STORE run: service RSS growth 25→100 %", growth, "%", note=verdict)
        raw["store_rss_whole_mib"] = [round(s.rss / 2**20, 1) for s in q]

        # the yardstick: storescp receiving the 1-sender files from the same client
        if os.environ.get("BENCH_LOAD_PEER", "1") != "0":
            peer = _storescp_rate(levels[1], contexts)
            if peer is not None:
                pstats, pwall = peer
                prate = pstats.sent / pwall
                ours = raw["senders_1"]
                assert isinstance(ours, dict)
                ours_rate = ours["acked"] / ours["wall"]
                pp50 = _ms(_pct(pstats.latencies, 0.5))
                print(
                    f"storescp -od, 1 sender, same client: {prate:,.0f} inst/s, ack p50 {fmt(pp50, 'ms')}; "
                    f"dicomlake serve (fsync) is {ours_rate / prate:.2f}× that"
                )
                res.add(
                    "C-STORE, 1 sender: dicomlake serve / storescp -od",
                    ours_rate / prate,
                    "×",
                    peer="storescp -od",
                    note=f"storescp {prate:,.0f} inst/s, ack p50 {fmt(pp50, 'ms')}",
                )
                raw["storescp_1"] = {"acked": pstats.sent, "wall": pwall, "p50_ms": pp50}

        # 2. HTTP ---------------------------------------------------------------------------------
        raw["http_results"] = probe(svc.base, svc.token)
        print("HTTP requests (one each first): " + "; ".join(f"{k} → {v}" for k, v in raw["http_results"].items()))
        http_rows = []
        for c in CLIENTS:
            hstats, wall = http_load(svc.base, svc.token, c, seconds)
            every_lat = [x for v in hstats.latencies.values() for x in v]
            for label, _url, _accept in HTTP_URLS:
                lat = hstats.latencies[label]
                http_rows.append(
                    [
                        str(c),
                        label,
                        fmt(len(lat) / wall, "req/s"),
                        fmt(_ms(_pct(lat, 0.5)), "ms"),
                        fmt(_ms(_pct(lat, 0.95)), "ms"),
                        str(hstats.errors[label]),
                    ]
                )
            errors = sum(hstats.errors.values())
            rate = len(every_lat) / wall
            p50, p95 = _ms(_pct(every_lat, 0.5)), _ms(_pct(every_lat, 0.95))
            http_rows.append(
                [str(c), "all three, mixed", fmt(rate, "req/s"), fmt(p50, "ms"), fmt(p95, "ms"), str(errors)]
            )
            res.add(f"HTTP, {c} clients: requests", rate, "req/s", note=f"{errors} errors; QIDO ×2 + UI mixed")
            res.add(f"HTTP, {c} clients: latency p50", p50, "ms")
            res.add(f"HTTP, {c} clients: latency p95", p95, "ms")
            raw[f"clients_{c}"] = {
                "wall": wall,
                "requests": len(every_lat),
                "errors": errors,
                "error_samples": hstats.samples,
                "per_url": {
                    label: {
                        "ok": len(v),
                        "errors": hstats.errors[label],
                        "p50_ms": _ms(_pct(v, 0.5)),
                        "p95_ms": _ms(_pct(v, 0.95)),
                    }
                    for label, v in hstats.latencies.items()
                },
            }
            print(
                f"  {c} clients, {wall:.1f} s: {len(every_lat):,} responses ({rate:,.1f}/s), {errors} errors",
                flush=True,
            )
            for e in hstats.samples[:3]:
                print(f"    error: {e}")
        print(table(http_rows, ["clients", "request", "rate", "p50", "p95", "errors"]))

        # 3. soak ---------------------------------------------------------------------------------
        if soak_seconds > 0:
            cycle_files = every[need:] + every[:need]
            # BENCH_SOAK_FILES: cycle over fewer files, so that the lake stops growing early in
            # the soak (every instance after the first pass is a re-send: an upsert) and what
            # memory does after that is the leak check, not the lake's growth
            soak_files = _env_int("BENCH_SOAK_FILES", 0)
            if soak_files > 0:
                cycle_files = cycle_files[:soak_files]
            s = soak(svc, cycle_files, contexts, soak_seconds)
            _soak_report(res, s)
            raw["soak"] = s
        _rss, fds, kids = _usage(svc.pid)
        raw["service_end"] = {"rss_mib": _rss / 2**20, "fds": fds, "children": kids}
        log = svc.log_tail(3000).strip()
        if log:
            print(f"service output (last 3,000 characters):\n{log}")

    out = REPO_ROOT / "bench" / "out" / "load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1, default=str))
    res.raw.update({k: v for k, v in raw.items() if k != "soak"})
    if "soak" in raw:
        res.raw["soak"] = {k: v for k, v in raw["soak"].items() if k != "rows"}
    return res


if __name__ == "__main__":
    main()
