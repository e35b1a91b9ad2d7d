"""Pull logic against a pynetdicom Query/Retrieve SCP that truncates answers like a PACS limit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomlake.ingest.qr import Peer, Throttle, _find_ae, find_studies, parse_keys, parse_range
from dicomlake.ingest.settings import DimseSettings

LIMIT = 10


@pytest.fixture
def limited_pacs() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """A C-FIND SCP over 60 studies that silently returns at most LIMIT matches."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    studies = [
        (f"1.2.826.0.1.3680043.10.1428.9.{i}", (dt.date(2024, 1, 1) + dt.timedelta(days=6 * i)).strftime("%Y%m%d"))
        for i in range(60)
    ]

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        q = event.identifier
        lo, hi = parse_range(str(q.get("StudyDate", "") or ""))
        sent = 0
        for uid, date in studies:
            d = dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
            if (lo and d < lo) or (hi and d > hi):
                continue
            if sent == LIMIT:
                break  # the PACS's result limit: no warning, just fewer matches
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID, ds.StudyDate, ds.PatientID = uid, date, "P1"
            sent += 1
            yield 0xFF00, ds
        yield 0x0000, None

    ae = AE("PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        yield server.server_address[1], studies
    finally:
        server.shutdown()


def test_find_splits_date_ranges_so_a_result_limit_drops_nothing(
    limited_pacs: tuple[int, list[tuple[str, str]]],
) -> None:
    port, studies = limited_pacs
    ae = _find_ae("DICOMLAKE", DimseSettings())
    rep = find_studies(ae, Peer("PACS", "127.0.0.1", port), {"StudyDate": "20240101-20251231"}, find_limit=LIMIT)
    assert {s["StudyInstanceUID"] for s in rep.studies} == {u for u, _ in studies}
    assert rep.queries > 6 and len(rep.slices) >= 6 and not rep.warnings


def test_find_without_a_date_range_splits_when_the_limit_is_reached(
    limited_pacs: tuple[int, list[tuple[str, str]]],
) -> None:
    port, studies = limited_pacs
    ae = _find_ae("DICOMLAKE", DimseSettings())
    rep = find_studies(ae, Peer("PACS", "127.0.0.1", port), {}, find_limit=LIMIT, today=dt.date(2025, 12, 31))
    assert len(rep.studies) == len(studies)
    assert rep.warnings  # undated studies could still be missed: said, not hidden


def _refusal_from_a_listener_that_knows_only_pacs(tmp_path: Path) -> str:
    """What ``_associate`` raises when our listener LAKE2 refuses the calling AE DICOMLAKE."""
    from dicomlake.errors import AssociationError
    from dicomlake.ingest.listener import StoreSCP
    from dicomlake.ingest.qr import _associate
    from dicomlake.ingest.spool import Spool

    ae = _find_ae("DICOMLAKE", DimseSettings())
    ae.add_requested_context("1.2.840.10008.1.1")
    scp = StoreSCP(Spool(tmp_path), DimseSettings(ae_title="LAKE2", allowed_calling_aets=["PACS"], min_free_bytes=0))
    scp.start("127.0.0.1", 0)
    try:
        with pytest.raises(AssociationError) as err:
            _associate(ae, Peer("LAKE2", "127.0.0.1", scp.address[1]))
        return str(err.value)
    finally:
        scp.stop()


def test_refused_association_is_reported_in_the_standards_words(tmp_path: Path) -> None:
    msg = _refusal_from_a_listener_that_knows_only_pacs(tmp_path)
    assert "rejected permanent, source: service user, reason: calling AE title not recognised" in msg
    assert "check that the PACS knows us as DICOMLAKE at" in msg


def test_parse_keys_accepts_keywords_and_tags() -> None:
    assert parse_keys(["StudyDate=20240101-20241231", "(0008,0061)=MG", "PatientID"]) == {
        "StudyDate": "20240101-20241231",
        "ModalitiesInStudy": "MG",
        "PatientID": "",
    }
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        parse_keys(["Modalty=MG"])
    assert Peer.parse("PACS@10.0.0.5:104") == Peer("PACS", "10.0.0.5", 104)


def test_throttle_window_wraps_midnight() -> None:
    t = Throttle(window="19:00-07:00")
    assert t.in_window(dt.datetime(2024, 1, 1, 23, 0)) and t.in_window(dt.datetime(2024, 1, 1, 6, 59))
    assert not t.in_window(dt.datetime(2024, 1, 1, 12, 0))


def test_a_c_find_timeout_is_one_clear_error_not_an_attribute_error() -> None:
    """pynetdicom ends a C-FIND that outlives dimse_timeout with an empty status Dataset."""
    import threading

    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from dicomlake.errors import AssociationError

    release = threading.Event()

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        release.wait(10)  # a PACS busy with a broad query
        yield 0x0000, None

    scp = AE("PACS")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        ae = _find_ae("DICOMLAKE", DimseSettings())
        ae.dimse_timeout = 1
        with pytest.raises(AssociationError, match=r"no answer within 1 s \(dimse.pull.timeout_s\)"):
            find_studies(ae, Peer("PACS", "127.0.0.1", server.server_address[1]), {}, find_limit=LIMIT)
    finally:
        release.set()
        server.shutdown()


def test_a_rejection_is_named_when_the_negotiating_thread_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy machine pynetdicom's negotiating thread can look at the socket after the
    rejection closed it and report an abort (CI: "aborted during negotiation"); the reason
    comes from the A-ASSOCIATE-RJ PDU as received."""
    import threading
    import time

    from pynetdicom import transport

    class SlowReady(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            time.sleep(0.5)  # the DUL thread meanwhile receives the rejection and closes the socket
            return super().wait(timeout)

    real_init = transport.AssociationSocket.__init__

    def init(self: transport.AssociationSocket, *args: object, **kw: object) -> None:
        real_init(self, *args, **kw)  # type: ignore[arg-type]
        ready = SlowReady()
        if self._ready.is_set():
            ready.set()
        self._ready = ready

    monkeypatch.setattr(transport.AssociationSocket, "__init__", init)
    msg = _refusal_from_a_listener_that_knows_only_pacs(tmp_path)
    assert "rejected permanent, source: service user, reason: calling AE title not recognised" in msg
