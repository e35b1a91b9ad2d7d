"""Query/Retrieve from a PACS: C-FIND at study level, then C-MOVE to our listener or C-GET.

Retrospective collection, as the BJR review puts it: find the studies (any matching keys,
split into date slices so that a PACS result limit cannot silently drop matches), then
retrieve them study by study, throttled, resumable, with every failure reported in the
standard's words. Where the PACS answers image-level C-FIND, ``metadata_only`` collects
the requested attributes without moving a single pixel.

What was found, requested and received is kept in the lake (``pull_runs``,
``pull_studies``), so ``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dicomlake.errors import AssociationError, ConfigError
from dicomlake.ingest.listener import describe_abort, describe_rejection
from dicomlake.ingest.settings import check_ae_title
from dicomlake.ingest.spool import Spool, SpoolError, instance_uid_problem, valid_uid
from dicomlake.lakeschema import PULL_STATES
from dicomlake.store.base import Store
from dicomlake.store.pullstate import PullStateTables

LOG = logging.getLogger("dicomlake.qr")

# PS3.4 Annex C.6.2: Study Root Query/Retrieve Information Model SOP classes; PS3.4 A.4: Verification
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.2.2"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
Verification = "1.2.840.10008.1.1"

STUDY_KEYS = (
    "PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "SOPClassesInStudy",
)  # fmt: skip
"""Return keys of the study-level C-FIND (PS3.4 C.6.2.1.2)."""

IMAGE_KEYS = (
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "PatientID", "Rows", "Columns", "ContentDate", "ContentTime",
    "AcquisitionDate", "AcquisitionTime", "ImageType", "NumberOfFrames",
)  # fmt: skip
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
               "SeriesDate", "SeriesTime", "Manufacturer", "StationName", "ProtocolName",
               "NumberOfSeriesRelatedInstances")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Peers and keys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A DICOM peer: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        m = re.match(r"^([^@]+)@(\[[^\]]+\]|[^:]+):(\d+)$", text.strip())
        if not m:
            raise ValueError(f"--pacs {text!r}: write AET@host:port, e.g. PACS@10.0.0.5:104")
        return cls(check_ae_title(m.group(1)), m.group(2).strip("[]"), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_keys(items: Sequence[str]) -> dict[str, str]:
    """dcmtk-style ``-k Keyword=value`` (or ``(gggg,eeee)=value``) into keyword → value."""
    from pydicom.datadict import dictionary_keyword, keyword_for_tag  # noqa: F401

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        m = re.match(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$", key)
        if m:
            kw = dictionary_keyword(int(m.group(1) + m.group(2), 16))
            if not kw:
                raise ValueError(f"-k {item!r}: tag {key} has no keyword in the data dictionary")
            key = kw
        from pydicom.datadict import tag_for_keyword

        if tag_for_keyword(key) is None:
            raise ValueError(f"-k {item!r}: {key!r} is not a DICOM keyword (e.g. StudyDate, ModalitiesInStudy)")
        out[key] = value.strip() if sep else ""
    return out


def _d(date: str | dt.date) -> dt.date:
    if isinstance(date, dt.date):
        return date
    s = date.replace("-", "").strip()
    return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def _dicom_date(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def parse_range(value: str) -> tuple[dt.date | None, dt.date | None]:
    """PS3.4 C.2.2.2.5.1: ``YYYYMMDD-YYYYMMDD``, ``YYYYMMDD-``, ``-YYYYMMDD`` or one date."""
    v = value.strip().replace(" ", "")
    if not v:
        return None, None
    if "-" in v and len(v.replace("-", "")) in (8, 16) and v.count("-") == 1:
        lo, _, hi = v.partition("-")
        return (_d(lo) if lo else None, _d(hi) if hi else None)
    return _d(v), _d(v)


# ---------------------------------------------------------------------------------------------
# Associations
# ---------------------------------------------------------------------------------------------


def _associate(ae: Any, peer: Peer, *, ext_neg: list[Any] | None = None, evt_handlers: list[Any] | None = None) -> Any:
    """Associate or raise :class:`AssociationError` in the standard's words plus a hint.

    The A-ASSOCIATE-RJ is taken from the PDU as received: pynetdicom's negotiating thread can
    find the transport already closed by the rejection (a busy machine) and then reports an
    abort, although the peer said exactly why it refused."""
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    rejections: list[tuple[int, int, int]] = []

    def on_pdu(event: Any) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            rejections.append((int(pdu.result or 0), int(pdu.source or 0), int(pdu.reason_diagnostic or 0)))

    handlers = [*(evt_handlers or []), (evt.EVT_PDU_RECV, on_pdu)]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=ext_neg, evt_handlers=handlers)
    if assoc.is_established:
        return assoc
    where = f"{ae.ae_title}"
    if assoc.is_rejected and not rejections:
        prim = assoc.acceptor.primitive
        rejections.append((int(prim.result), int(prim.result_source), int(prim.diagnostic)))
    if rejections:
        result, source, reason = rejections[-1]
        text = describe_rejection(
            result, source, reason, our_aet=ae.ae_title, peer=str(peer), hint_host=_our_host(peer)
        )
        raise AssociationError(f"association with {peer} {text}")
    unreachable = _unreachable(peer, float(ae.acse_timeout or 10))
    if unreachable:
        raise AssociationError(
            f"no association with {peer}: {unreachable} — check the PACS's host and port "
            f"(echoscu -aet {ae.ae_title} -aec {peer.ae_title} {peer.host} {peer.port})"
        )
    if assoc.is_aborted:
        raise AssociationError(
            f"association with {peer} was aborted during negotiation — check that {peer.ae_title} accepts "
            f"{where} and the proposed SOP classes"
        )
    raise AssociationError(
        f"no association with {peer}: the connection failed or timed out — check host, port and firewall "
        f"(echoscu -aet {ae.ae_title} -aec {peer.ae_title} {peer.host} {peer.port})"
    )


def _unreachable(peer: Peer, timeout: float) -> str | None:
    """Why a TCP connection to ``peer`` fails, or None when something listens there."""
    import socket

    try:
        with socket.create_connection((peer.host, peer.port), timeout=min(timeout, 10.0)):
            return None
    except ConnectionRefusedError:
        return f"nothing listens at {peer.host}:{peer.port} (connection refused)"
    except TimeoutError:
        return f"{peer.host}:{peer.port} did not answer within {min(timeout, 10.0):g} s (host down or firewall)"
    except OSError as exc:
        return f"cannot connect to {peer.host}:{peer.port} ({exc.strerror or exc})"


def _our_host(peer: Peer) -> str:
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer.host, peer.port or 1))
            return str(s.getsockname()[0])
    except OSError:
        return "our address"


def _status_text(status: Any) -> tuple[str, str]:
    """``(hex, meaning)`` of a DIMSE response status dataset."""
    from pynetdicom.status import code_to_category

    code = int(getattr(status, "Status", 0xFFFF))
    comment = str(getattr(status, "ErrorComment", "") or "")
    category = code_to_category(code)
    return f"0x{code:04X}", f"{category}{': ' + comment if comment else ''}"


# ---------------------------------------------------------------------------------------------
# C-FIND with date slicing
# ---------------------------------------------------------------------------------------------


@dataclass
class FindReport:
    """The studies found and how the search was split."""

    studies: list[dict[str, Any]] = field(default_factory=list)
    queries: int = 0
    slices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _identifier(level: str, keys: Mapping[str, str], return_keys: Sequence[str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k in return_keys:
        setattr(ds, k, "")
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _to_dict(ds: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.keyword and elem.VR != "SQ":
            v = elem.value
            if v is None or v == "":
                out[elem.keyword] = None
            elif elem.VM > 1:
                out[elem.keyword] = "\\".join(str(x) for x in v)
            else:
                out[elem.keyword] = str(v)
    return out


class _Finder:
    """C-FINDs at one peer over one association, opened on first use and reopened when it drops."""

    def __init__(self, ae: Any, peer: Peer) -> None:
        self.ae = ae
        self.peer = peer
        self.assoc: Any = None

    def __enter__(self) -> _Finder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def find(
        self, level: str, keys: Mapping[str, str], return_keys: Sequence[str], *, find_limit: int = 0
    ) -> tuple[list[Any], bool]:
        """``(matches, limited)``: ``limited`` when the PACS stopped early or the answer reached ``find_limit``.

        A PACS that enforces a result limit either sends N pending answers and then 0xFE00
        (Cancel — Orthanc's ``LimitFindResults``/``LimitFindInstances``) or silently stops
        at N: both mean "split this query", never "failed".
        """
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = _associate(self.ae, self.peer)
        try:
            return c_find_limited(self.assoc, self.ae, self.peer, level, keys, return_keys, find_limit=find_limit)
        except AssociationError:
            if not self.assoc.is_established:
                self.assoc = None
            raise


def c_find_limited(
    assoc: Any,
    ae: Any,
    peer: Peer,
    level: str,
    keys: Mapping[str, str],
    return_keys: Sequence[str],
    *,
    find_limit: int = 0,
) -> tuple[list[Any], bool]:
    """One C-FIND (Study Root) on an open association: ``(matches, limited)``; see :meth:`_Finder.find`."""
    out: list[Any] = []
    limited = False
    t0 = time.monotonic()
    for status, ident in assoc.send_c_find(
        _identifier(level, keys, return_keys), StudyRootQueryRetrieveInformationModelFind
    ):
        if status is None or "Status" not in status:
            raise AssociationError(_no_answer(ae, peer, time.monotonic() - t0, len(out)))
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if ident is not None:
                out.append(ident)
        elif code == 0xFE00:
            limited = True
        elif code != 0x0000:
            hx, meaning = _status_text(status)
            raise AssociationError(f"C-FIND at {peer} failed with status {hx} ({meaning})")
    if find_limit and len(out) >= find_limit:
        limited = True
    return out, limited


def _no_answer(ae: Any, peer: Peer, seconds: float, answers: int) -> str:
    """Why a C-FIND ended without a status: the DIMSE timeout, or the PACS refused the query."""
    timeout = float(ae.dimse_timeout or 0)
    if timeout and seconds >= timeout - 0.5:
        return (
            f"C-FIND at {peer}: no answer within {timeout:g} s (dimse.pull.timeout_s) after {answers} match(es) — "
            "the PACS is slow or the query too broad; narrow it (--from/--to, --modality) or raise the timeout"
        )
    return (
        f"C-FIND at {peer} refused: the PACS ended the query without a status after {answers} match(es) — "
        f"most likely it does not know our AE title {ae.ae_title} (add {ae.ae_title} at {_our_host(peer)} to "
        f"its DICOM modalities) or does not allow it to query; see the PACS's log"
    )


def c_find(ae: Any, peer: Peer, level: str, keys: Mapping[str, str], return_keys: Sequence[str]) -> list[Any]:
    """One C-FIND (Study Root) at ``level``; the matching identifiers (a limited answer as it came)."""
    with _Finder(ae, peer) as finder:
        return finder.find(level, keys, return_keys)[0]


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def find_studies(
    ae: Any,
    peer: Peer,
    keys: Mapping[str, str],
    *,
    find_limit: int,
    today: dt.date | None = None,
) -> FindReport:
    """Study-level C-FIND; a limited answer splits its date range in halves, then a day by Study Time.

    An answer is *limited* when the PACS says so (0xFE00 Cancel after the pending answers)
    or when it reaches ``find_limit`` (a PACS that truncates silently).
    """
    rep = FindReport()
    seen: dict[str, dict[str, Any]] = {}
    base = {k: v for k, v in keys.items() if k not in ("StudyDate", "StudyTime")}
    lo, hi = parse_range(keys.get("StudyDate", ""))
    finder = _Finder(ae, peer)

    def run(extra: Mapping[str, str]) -> tuple[list[Any], bool]:
        rep.queries += 1
        found, limited = finder.find("STUDY", {**base, **extra}, STUDY_KEYS, find_limit=find_limit)
        for ds in found:
            d = _to_dict(ds)
            uid = d.get("StudyInstanceUID")
            if uid:
                seen[uid] = d
        return found, limited

    def sliced(a: dt.date, b: dt.date) -> None:
        found, limited = run({"StudyDate": f"{_dicom_date(a)}-{_dicom_date(b)}"})
        if limited and a < b:
            mid = a + (b - a) // 2
            sliced(a, mid)
            sliced(mid + dt.timedelta(days=1), b)
        elif limited and "StudyTime" in keys:  # the caller's own time key: no further split
            rep.warnings.append(
                f"{_dicom_date(a)}: {len(found)} studies on one day reach the PACS's result limit; some may be "
                "missing — narrow the query (e.g. -k ModalitiesInStudy=…)"
            )
            rep.slices.append(_dicom_date(a))
        elif limited:
            rep.warnings.append(
                f"{_dicom_date(a)}: more studies on one day than the PACS answers at once; split by Study Time "
                "— studies of that day without a Study Time cannot be found this way"
            )
            timed(a, 0, 86399)
        else:
            rep.slices.append(f"{_dicom_date(a)}-{_dicom_date(b)}")

    def timed(day: dt.date, t0: int, t1: int) -> None:
        found, limited = run({"StudyDate": _dicom_date(day), "StudyTime": f"{_hhmmss(t0)}-{_hhmmss(t1)}"})
        if limited and t1 > t0:
            mid = t0 + (t1 - t0) // 2
            timed(day, t0, mid)
            timed(day, mid + 1, t1)
            return
        if limited:
            rep.warnings.append(
                f"{_dicom_date(day)} {_hhmmss(t0)}: {len(found)} studies in one second reach the PACS's result "
                "limit; some may be missing — narrow the query (e.g. -k ModalitiesInStudy=…)"
            )
        rep.slices.append(f"{_dicom_date(day)} {_hhmmss(t0)}-{_hhmmss(t1)}")

    try:
        if "StudyTime" in keys:
            base["StudyTime"] = keys["StudyTime"]
        if lo is None and hi is None:
            _found, limited = run({})
            if not limited:
                rep.slices.append("(all dates)")
            else:
                rep.warnings.append(
                    "the query without a date range reached the PACS's result limit; split by date from 1900 to "
                    "today — studies without a Study Date can only be found with narrower keys"
                )
                sliced(dt.date(1900, 1, 1), today or dt.date.today())
        else:
            sliced(lo or dt.date(1900, 1, 1), hi or today or dt.date.today())
    finally:
        finder.close()
    rep.studies = sorted(seen.values(), key=lambda d: (d.get("StudyDate") or "", d.get("StudyInstanceUID") or ""))
    return rep


# ---------------------------------------------------------------------------------------------
# Throttling
# ---------------------------------------------------------------------------------------------


class Throttle:
    """At most ``per_hour`` instances requested per hour, and only inside an off-peak window."""

    def __init__(
        self,
        per_hour: int = 0,
        window: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.per_hour = per_hour
        self.window = _parse_window(window) if window else None
        self.window_text = window
        self.clock = clock
        self.on_wait = on_wait
        """Told once per wait, in words, why and until when retrieval waits."""
        self._log: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._waiting: str | None = None

    def _say(self, why: str) -> None:
        if why != self._waiting:
            self._waiting = why
            LOG.info("%s", why)
            if self.on_wait is not None:
                self.on_wait(why)

    def window_opens(self, now: dt.datetime | None = None) -> dt.datetime:
        """When the off-peak window next opens (local time)."""
        assert self.window is not None
        now = now or dt.datetime.now()
        start = now.replace(hour=self.window[0].hour, minute=self.window[0].minute, second=0, microsecond=0)
        return start if start > now else start + dt.timedelta(days=1)

    def in_window(self, now: dt.datetime | None = None) -> bool:
        if self.window is None:
            return True
        t = (now or dt.datetime.now()).time()
        a, b = self.window
        return a <= t < b if a <= b else (t >= a or t < b)

    def acquire(self, n: int, stop: threading.Event) -> bool:
        """Wait until ``n`` more instances may be requested; False when stopped meanwhile."""
        while not stop.is_set():
            if self.in_window():
                with self._lock:
                    now = self.clock()
                    self._log = [(t, k) for t, k in self._log if now - t < 3600]
                    used = sum(k for _, k in self._log)
                    if not self.per_hour or used == 0 or used + n <= self.per_hour:
                        self._log.append((now, n))
                        self._waiting = None
                        return True
                    free_at = dt.datetime.fromtimestamp(self._log[0][0] + 3600)
                self._say(
                    f"{used:,} instances requested in the last hour (--per-hour {self.per_hour:,}): "
                    f"waiting until {free_at:%H:%M:%S} to request {n:,} more"
                )
            else:
                opens = self.window_opens()
                self._say(
                    f"outside the retrieval window {self.window_text}: waiting until {opens:%Y-%m-%d %H:%M} "
                    "local time (Ctrl-C stops; --resume continues later)"
                )
            stop.wait(1.0)
        return False


def _parse_window(text: str) -> tuple[dt.time, dt.time]:
    m = re.match(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$", text.strip())
    if not m:
        raise ValueError(f"window {text!r}: write HH:MM-HH:MM in local time, e.g. 19:00-07:00")
    a = dt.time(int(m.group(1)), int(m.group(2)))
    b = dt.time(int(m.group(3)) % 24, int(m.group(4)))
    return a, b


# ---------------------------------------------------------------------------------------------
# Pull state in the lake
# ---------------------------------------------------------------------------------------------

STATES = PULL_STATES


class PullState:
    """The pull state in the lake (``pull_runs``, ``pull_studies``), through the store's
    :meth:`~dicomlake.store.base.Store.pull_state`, under the service's write lock."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder
        with holder.lock:
            self._tables()  # an engine that cannot hold pull state says so before the pull starts

    def _store(self) -> Store:
        store: Store = self.holder.store  # the holder may have reopened it after a fault
        return store

    def _tables(self) -> PullStateTables:
        return self._store().pull_state()

    def last_run(self, pacs: str, method: str, query: str) -> str | None:
        with self.holder.lock:
            return self._tables().last_run(pacs, method, query)

    def start_run(self, run_id: str, pacs: str, method: str, query: str) -> None:
        with self.holder.lock:
            self._tables().start_run(run_id, pacs, method, query, dt.datetime.now())

    def finish_run(self, run_id: str, status: str, studies: int, received: int, failed: int) -> None:
        with self.holder.lock:
            self._tables().finish_run(run_id, status, studies, received, failed, dt.datetime.now())

    def resume_run(self, run_id: str) -> None:
        with self.holder.lock:
            self._tables().resume_run(run_id)

    def received_counts(self, run_id: str) -> dict[str, int]:
        with self.holder.lock:
            return self._tables().received_counts(run_id)

    def found(self, run_id: str, studies: Sequence[Mapping[str, Any]]) -> None:
        with self.holder.lock:
            self._tables().add_studies(run_id, studies, dt.datetime.now())

    def studies(self, run_id: str) -> list[dict[str, Any]]:
        with self.holder.lock:
            return self._tables().studies(run_id)

    def update(self, run_id: str, uid: str, state: str, **values: Any) -> None:
        with self.holder.lock:
            self._tables().update_study(run_id, uid, state, dt.datetime.now(), **values)

    def lake_count(self, study_uid: str) -> int:
        with self.holder.lock:
            t = self._store().query('SELECT count(*) AS n FROM instances WHERE "StudyInstanceUID" = ?', [study_uid])
        return int(t.column(0)[0].as_py()) if t.num_rows else 0


# ---------------------------------------------------------------------------------------------
# The pull
# ---------------------------------------------------------------------------------------------


@dataclass
class StudyOutcome:
    """What happened to one study."""

    StudyInstanceUID: str
    state: str
    expected: int | None = None
    received: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: str | None = None
    reason: str | None = None


@dataclass
class PullReport:
    """Counts of one pull, and each failed study with the PACS's status and reason."""

    run_id: str
    pacs: str
    method: str
    studies: int = 0
    done: int = 0
    failed: int = 0
    instances: int = 0
    expected: int = 0
    seconds: float = 0.0
    find: FindReport | None = None
    failures: list[StudyOutcome] = field(default_factory=list)
    outcomes: list[StudyOutcome] = field(default_factory=list)
    resumed_from: str | None = None

    @property
    def pending(self) -> int:
        return max(0, self.studies - self.done - self.failed)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pacs": self.pacs,
            "method": self.method,
            "studies": self.studies,
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "instances": self.instances,
            "expected": self.expected,
            "seconds": round(self.seconds, 2),
            "find": {
                "queries": self.find.queries,
                "slices": self.find.slices,
                "warnings": self.find.warnings,
            }
            if self.find
            else None,
            "failures": [f.__dict__ for f in self.failures],
            "resumed_from": self.resumed_from,
        }


def _make_ae(ae_title: str, settings: Any) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.pull.timeout_s
    ae.network_timeout = settings.network_timeout_s
    return ae


def _find_ae(ae_title: str, settings: Any) -> Any:

    ae = _make_ae(ae_title, settings)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    return ae


def _storage_contexts(sop_classes: Sequence[str]) -> list[str]:
    from pynetdicom import StoragePresentationContexts

    if sop_classes:
        return [u for u in dict.fromkeys(sop_classes) if valid_uid(u)][:127] or _storage_contexts(())
    return [str(cx.abstract_syntax) for cx in StoragePresentationContexts][:120]


class _Associations:
    """One association per worker thread, reused for every study it retrieves."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.local = threading.local()
        self.all: list[Any] = []
        self.lock = threading.Lock()

    def get(self) -> Any:
        assoc = getattr(self.local, "assoc", None)
        if assoc is None or not assoc.is_established:
            assoc = self.make()
            self.local.assoc = assoc
            with self.lock:
                self.all.append(assoc)
        return assoc

    def release(self) -> None:
        for a in self.all:
            if a.is_established:
                a.release()


def retrieve_study_move(assoc: Any, peer: Peer, study: Mapping[str, Any], destination: str) -> StudyOutcome:
    """C-MOVE one study to ``destination`` (our listener's AE title) on an open association."""

    uid = str(study["StudyInstanceUID"])
    out = StudyOutcome(uid, "requested")
    ident = _identifier("STUDY", {"StudyInstanceUID": uid}, ())
    last = None
    for status, _ident in assoc.send_c_move(ident, destination, StudyRootQueryRetrieveInformationModelMove):
        if status is None:
            out.state, out.reason = "failed", "no answer (DIMSE timeout or association aborted)"
            return out
        last = status
    _final(out, last)
    return out


def _final(out: StudyOutcome, status: Any) -> None:
    code = int(getattr(status, "Status", 0xFFFF))
    out.completed = int(getattr(status, "NumberOfCompletedSuboperations", 0) or 0)
    out.failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
    out.warning = int(getattr(status, "NumberOfWarningSuboperations", 0) or 0)
    hx, meaning = _status_text(status)
    out.status = hx
    if code == 0x0000 or (code == 0xB000 and not out.failed):
        out.state = "requested"
    else:
        out.state = "failed"
        out.reason = meaning + (f"; {out.failed} sub-operation(s) failed" if out.failed else "")


def retrieve_study_get(
    ae: Any, peer: Peer, study: Mapping[str, Any], spool: Spool, sop_classes: Sequence[str]
) -> StudyOutcome:
    """C-GET one study; each instance arrives on the same association into the spool."""
    from pynetdicom import build_role, evt

    uid = str(study["StudyInstanceUID"])
    out = StudyOutcome(uid, "requested")
    roles = [
        build_role(c, scp_role=True)
        for c in dict.fromkeys(cx.abstract_syntax for cx in ae.requested_contexts)
        if c != StudyRootQueryRetrieveInformationModelGet
    ]

    def on_store(event: Any) -> int:
        try:
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            problem = instance_uid_problem(sop_uid, str(event.request.AffectedSOPClassUID or ""))
            if problem:  # the rule C-STORE to our listener follows
                LOG.warning("C-GET sub-operation refused (0xC210): %s", problem)
                return 0xC210
            spool.put(sop_uid, event.encoded_dataset(), "c-get")
            return 0x0000
        except SpoolError as exc:
            LOG.warning("C-GET sub-operation for %s refused: %s", event.request.AffectedSOPInstanceUID, exc)
            return exc.status
        except Exception as exc:
            LOG.exception("C-GET sub-operation failed: %s", exc)
            return 0xC210

    assoc = _associate(ae, peer, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ident = _identifier("STUDY", {"StudyInstanceUID": uid}, ())
        last = None
        for status, _ident in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet):
            if status is None:
                out.state, out.reason = "failed", "no answer (DIMSE timeout or association aborted)"
                return out
            last = status
        _final(out, last)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


# Transfer syntaxes offered for C-GET, one presentation context each (the SCP accepts one
# transfer syntax per context, PS3.8 §9.3.3.2, and cannot always transcode compressed data).
_GET_SYNTAXES: tuple[tuple[str, ...], ...] = (
    ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"),
    ("1.2.840.10008.1.2.4.50",),
    ("1.2.840.10008.1.2.4.51",),
    ("1.2.840.10008.1.2.4.57",),
    ("1.2.840.10008.1.2.4.70",),
    ("1.2.840.10008.1.2.4.80",),
    ("1.2.840.10008.1.2.4.81",),
    ("1.2.840.10008.1.2.4.90",),
    ("1.2.840.10008.1.2.4.91",),
    ("1.2.840.10008.1.2.5",),
    ("1.2.840.10008.1.2.1.99",),
    ("1.2.840.10008.1.2.2",),
)


def _get_ae(ae_title: str, settings: Any, sop_classes: Sequence[str]) -> Any:

    ae = _make_ae(ae_title, settings)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    found = [u for u in dict.fromkeys(sop_classes) if re.match(r"^[0-9]+(\.[0-9]+)*$", u)]
    budget = 127
    if found and len(found) * len(_GET_SYNTAXES) <= budget:
        for uid in found:
            for tss in _GET_SYNTAXES:
                ae.add_requested_context(uid, list(tss))
        budget -= len(found) * len(_GET_SYNTAXES)
        found_set = set(found)
        # the PACS's answer may miss a class: fill up with the common ones, uncompressed
        for uid in _storage_contexts(()):
            if budget <= 0:
                break
            if uid not in found_set:
                ae.add_requested_context(uid, list(_GET_SYNTAXES[0]))
                budget -= 1
    else:  # many SOP classes: one context each, every transfer syntax offered
        for uid in (found or _storage_contexts(()))[:budget]:
            ae.add_requested_context(uid, [t for tss in _GET_SYNTAXES for t in tss])
    return ae


def collect_metadata(ae: Any, peer: Peer, study: Mapping[str, Any], spool: Spool, keys: Sequence[str]) -> StudyOutcome:
    """Image-level C-FIND of one study: each answer becomes a header-only instance in the spool."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    uid = str(study["StudyInstanceUID"])
    out = StudyOutcome(uid, "requested")
    missing: list[str] = []
    finder = _Finder(ae, peer)
    try:
        series = _find_all(
            finder,
            "SERIES",
            {"StudyInstanceUID": uid},
            SERIES_KEYS,
            "SeriesNumber",
            study.get("NumberOfStudyRelatedSeries"),
            missing,
        )
        image_keys = list(dict.fromkeys([*IMAGE_KEYS, *keys]))
        images = []
        for se in series:
            se_uid = str(getattr(se, "SeriesInstanceUID", "") or "")
            if se_uid:
                q = {"StudyInstanceUID": uid, "SeriesInstanceUID": se_uid}
                n_se = getattr(se, "NumberOfSeriesRelatedInstances", None)
                images += [
                    (se, img) for img in _find_all(finder, "IMAGE", q, image_keys, "InstanceNumber", n_se, missing)
                ]
    finally:
        finder.close()
    n = 0
    for se, img in images:
        ds = Dataset()
        for src in (study, _to_dict(se)):
            for k, v in src.items():
                if v not in (None, "") and k not in (
                    "QueryRetrieveLevel",
                    "RetrieveAETitle",
                    "state",
                    "NumberOfStudyRelatedInstances",
                    "NumberOfStudyRelatedSeries",
                    "ModalitiesInStudy",
                    "SOPClassesInStudy",
                ):
                    try:
                        setattr(ds, k, v)
                    except Exception:
                        pass
        for elem in img:
            if elem.keyword in ("QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability"):
                continue
            if elem.value not in (None, ""):
                ds[elem.tag] = elem
        sop_uid = str(getattr(ds, "SOPInstanceUID", "") or "")
        if not sop_uid:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = getattr(ds, "SOPClassUID", None) or "1.2.840.10008.5.1.4.1.1.7"  # type: ignore[assignment]
        meta.MediaStorageSOPInstanceUID = sop_uid  # type: ignore[assignment]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.SourceApplicationEntityTitle = peer.ae_title
        ds.file_meta = meta
        from dicomlake.ingest.dicomweb import encode_tolerant

        spool.put(sop_uid, encode_tolerant(ds), "c-find")
        n += 1
    out.completed = n
    if missing:
        out.state, out.status = "failed", "0xFE00"
        out.reason = "; ".join(missing)
    return out


def _find_all(
    finder: _Finder,
    level: str,
    keys: Mapping[str, str],
    return_keys: Sequence[str],
    number_key: str,
    expected: Any,
    missing: list[str],
) -> list[Any]:
    """Every match of a series- or image-level C-FIND, even when the PACS limits its answers.

    A limited answer is completed by matching ``number_key`` (SeriesNumber, InstanceNumber)
    one value at a time until the count the PACS announced (NumberOfStudyRelatedSeries,
    NumberOfSeriesRelatedInstances) is reached, or 20 numbers past the highest seen gave
    nothing. What is still missing is described in ``missing``.
    """
    uid_key = "SeriesInstanceUID" if level == "SERIES" else "SOPInstanceUID"
    found, limited = finder.find(level, keys, return_keys)
    if not limited:
        return found
    try:
        want = int(expected) if expected not in (None, "") else None
    except (TypeError, ValueError):
        want = None
    got: dict[str, Any] = {}

    def add(items: list[Any]) -> int:
        top = -1
        for ds in items:
            u = str(getattr(ds, uid_key, "") or "")
            if u:
                got.setdefault(u, ds)
            try:
                top = max(top, int(getattr(ds, number_key, -1) or -1))
            except (TypeError, ValueError):
                pass
        return top

    highest = add(found)
    number = 0
    while (want is None or len(got) < want) and number <= max(highest, want or 0) + 20:
        part, still = finder.find(level, {**keys, number_key: str(number)}, return_keys)
        highest = max(highest, add(part))
        if still:
            missing.append(f"{level.lower()}s with {number_key} {number} reach the PACS's result limit")
        number += 1
    if want is not None and len(got) < want:
        missing.append(
            f"the PACS limits {level.lower()}-level C-FIND answers: {len(got)} of {want} found by matching "
            f"{number_key} one value at a time"
        )
    return list(got.values())


def pull_dimse(
    peer: Peer,
    lake: str,
    *,
    keys: Mapping[str, str] | None = None,
    method: str = "move",
    metadata_only: bool = False,
    return_keys: Sequence[str] = (),
    resume: bool = False,
    settings: Any = None,
    dimse: Any = None,
    concurrency: int | None = None,
    instances_per_hour: int | None = None,
    window: str | None = None,
    find_limit: int | None = None,
    progress: Callable[[PullReport], None] | None = None,
    service: Any = None,
    on_wait: Callable[[str], None] | None = None,
) -> PullReport:
    """Find studies on ``peer`` and bring their headers into ``lake``.

    Parameters
    ----------
    peer
        The PACS (its AE title, host and port).
    keys
        Study-level matching keys (keyword → value), e.g. ``{"ModalitiesInStudy": "MG",
        "StudyDate": "20240101-20241231"}``.
    method
        ``"move"``: C-MOVE to our own listener (the PACS must know our AE title, host and
        port); ``"get"``: C-GET on the same association.
    metadata_only
        Collect image-level C-FIND answers instead of retrieving (no pixel data moves).
    resume
        Continue the last run with the same PACS, method and keys: studies already
        received are skipped, the rest retried.
    """
    from dicomlake.config import get_settings
    from dicomlake.ingest.service import Service

    settings = settings or get_settings()
    dimse = dimse or settings.dimse
    pull_cfg = dimse.pull
    keys = dict(keys or {})
    method = "c-find" if metadata_only else method
    if method not in ("move", "get", "c-find"):
        raise ValueError(f"method {method!r}: choose move or get")
    concurrency = max(1, concurrency or pull_cfg.concurrency)
    throttle = Throttle(
        instances_per_hour if instances_per_hour is not None else pull_cfg.instances_per_hour,
        window if window is not None else pull_cfg.window,
        on_wait=on_wait,
    )
    t0 = time.perf_counter()
    find_ae = _find_ae(dimse.ae_title, dimse)
    limit = find_limit or pull_cfg.find_limit
    # a new run asks the PACS before the lake is opened: a refused or unreachable PACS fails fast
    found = None if resume else find_studies(find_ae, peer, keys, find_limit=limit)
    own = service is None
    svc = service or Service(lake, settings, dimse=dimse, listen=(method == "move")).start()
    assert svc.spool is not None
    spool: Spool = svc.spool
    stop = threading.Event()
    try:
        state = PullState(svc.holder)
        query = json.dumps(keys, sort_keys=True)
        run_id = uuid.uuid4().hex[:12]
        report = PullReport(run_id=run_id, pacs=str(peer), method=method)
        previous = state.last_run(str(peer), method, query) if resume else None
        if previous:
            run_id = report.run_id = previous
            report.resumed_from = previous
            studies = state.studies(run_id)
            state.resume_run(run_id)
        else:
            state.start_run(run_id, str(peer), method, query)
            report.find = found or find_studies(find_ae, peer, keys, find_limit=limit)
            state.found(run_id, report.find.studies)
            studies = [{**s, "state": "found"} for s in report.find.studies]
        report.studies = len(studies)
        todo = []
        for s in studies:
            if s.get("state") == "received":
                report.done += 1
            else:
                todo.append(s)
        for s in studies:
            n = s.get("NumberOfStudyRelatedInstances")
            report.expected += int(n) if n not in (None, "") else 0
        if progress:
            progress(report)
        lock = threading.Lock()
        move_ae = _make_ae(dimse.ae_title, dimse)

        move_ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        movers = _Associations(lambda: _associate(move_ae, peer))

        def one(study: Mapping[str, Any]) -> None:
            uid = str(study["StudyInstanceUID"])
            n = study.get("NumberOfStudyRelatedInstances")
            if not throttle.acquire(int(n) if n not in (None, "") else 1, stop):
                return
            state.update(run_id, uid, "requested")
            try:
                if method == "move":
                    out = retrieve_study_move(movers.get(), peer, study, dimse.ae_title)
                elif method == "get":
                    classes = [c for c in str(study.get("SOPClassesInStudy") or "").split("\\") if c]
                    if not classes:  # the PACS does not answer SOPClassesInStudy: ask at image level
                        classes = sorted(
                            {
                                str(ds.SOPClassUID)
                                for ds in c_find(
                                    find_ae,
                                    peer,
                                    "IMAGE",
                                    {"StudyInstanceUID": uid},
                                    ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID"),
                                )
                                if getattr(ds, "SOPClassUID", None)
                            }
                        )
                    out = retrieve_study_get(_get_ae(dimse.ae_title, dimse, classes), peer, study, spool, classes)
                else:
                    out = collect_metadata(find_ae, peer, study, spool, return_keys)
            except AssociationError as exc:
                out = StudyOutcome(uid, "failed", reason=str(exc))
            except Exception as exc:
                out = StudyOutcome(uid, "failed", reason=f"{type(exc).__name__}: {exc}")
            out.expected = int(n) if n not in (None, "") else None
            if method == "move" and out.state == "failed" and not out.completed and out.status is not None:
                hint = _move_hint(svc, peer, dimse)
                out.reason = f"{out.reason or 'failed'} — {hint}" if hint else out.reason
            state.update(
                run_id,
                uid,
                # retrieved: what the PACS sent is acknowledged in the spool, so --resume skips the study
                "received" if out.state == "requested" else out.state,
                status=out.status,
                reason=out.reason,
                completed=out.completed,
                failed=out.failed,
                warning=out.warning,
            )
            with lock:
                report.outcomes.append(out)
                if out.state == "failed":
                    report.failed += 1
                    report.failures.append(out)
                else:
                    report.done += 1
                report.instances += out.completed + out.warning
                report.seconds = time.perf_counter() - t0
                if progress:
                    progress(report)

        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="pull")
        try:
            list(pool.map(one, todo))
        except BaseException:  # Ctrl-C: workers waiting for the throttle stop; what completed is kept
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            state.finish_run(run_id, "interrupted", report.studies, report.instances, report.failed)
            raise
        finally:
            pool.shutdown(wait=True)
            movers.release()
        # Retrieval never waits for extraction; now see what reached the lake.
        _reconcile(svc, state, run_id, report, pull_cfg.settle_s if method == "move" else 10.0)
        if progress:
            progress(report)
        report.seconds = time.perf_counter() - t0
        state.finish_run(run_id, "partial" if report.failed else "ok", report.studies, report.instances, report.failed)
        return report
    finally:
        stop.set()
        if own:
            svc.stop()


def _move_hint(svc: Any, peer: Peer, dimse: Any) -> str:
    """Why a C-MOVE sent nothing, as far as our listener saw it: never reached, refused, or it refused instances."""
    scp = getattr(svc, "scp", None)
    if scp is None:
        return ""
    st = scp.stats
    if st.rejected:
        return f"the PACS reached our listener but was refused: {st.last_reject}"
    if st.associations == 0:
        return (
            f"the PACS could not send to us: it must reach {dimse.ae_title} at {_our_host(peer)}:{scp.address[1]} "
            f"(its DICOM modality entry for {dimse.ae_title}: AE title, host and port; and no firewall between)"
        )
    if st.failed:
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(st.statuses.items()))
        return f"our listener refused {st.failed} instance(s) so far ({answered}); the warnings above say why"
    return ""


def _reconcile(svc: Any, state: PullState, run_id: str, report: PullReport, settle: float) -> None:
    """Wait for the spool to drain (C-MOVE sub-operations may still arrive), then count per study."""
    expected = {o.StudyInstanceUID: o.completed + o.warning for o in report.outcomes if o.state != "failed"}
    deadline = time.monotonic() + settle
    counts: dict[str, int] = {}
    seen, quiet_since = -1, time.monotonic()
    while True:
        arrived = svc.scp.stats.stored if svc.scp is not None else 0
        if arrived != seen:
            seen, quiet_since = arrived, time.monotonic()
        if svc.drainer is not None:
            svc.drainer.wait_idle(timeout=max(0.5, deadline - time.monotonic()))
        counts = state.received_counts(run_id)
        if all(counts.get(u, 0) >= n for u, n in expected.items()) or time.monotonic() >= deadline:
            break
        # nothing arrived for 2 s and the spool is drained: late sub-operations are not coming
        if time.monotonic() - quiet_since > 2.0 and (svc.spool is None or svc.spool.count() == 0):
            break
        time.sleep(0.2)
    report.instances = 0
    for o in report.outcomes:
        if o.state == "failed":
            continue
        o.received = counts.get(o.StudyInstanceUID, 0)
        report.instances += o.received
        if o.received == 0 and o.completed + o.warning > 0:
            o.state, o.reason = (
                "failed",
                (
                    f"the PACS reported {o.completed + o.warning} instance(s) sent but none arrived "
                    "within dimse.pull.settle_s — check that it sends to our AE title at our host and port"
                ),
            )
            report.done -= 1
            report.failed += 1
            report.failures.append(o)
        else:
            o.state = "received"
            if o.received < o.completed + o.warning:
                o.reason = (
                    f"{o.completed + o.warning} sub-operations, {o.received} distinct SOP Instance UIDs "
                    "in the lake (copies of one instance are kept once)"
                )
        state.update(run_id, o.StudyInstanceUID, o.state, received=o.received, reason=o.reason)


def iter_failures(report: PullReport) -> Iterator[str]:
    """One line per failed study: UID, status and reason."""
    for f in report.failures:
        yield f"{f.StudyInstanceUID}: {f.status or 'no status'} — {f.reason or describe_abort(0, 0)}"


__all__ = [
    "ConfigError",
    "Peer",
    "PullReport",
    "StudyOutcome",
    "Throttle",
    "find_studies",
    "parse_keys",
    "pull_dimse",
]
