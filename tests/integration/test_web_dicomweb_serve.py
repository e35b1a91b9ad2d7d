"""DICOMweb under ``dicomlake serve`` (the service: spool, drainer, web app on one lake), driven by
dicomweb-client as an independent client: STOW-RS, then WADO-RS of the RetrieveURL it returned."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
import pytest

from dicomlake.config import get_settings
from dicomlake.ingest.service import Service
from dicomlake.ingest.settings import DimseSettings
from tests import web_support as ws
from tests.integration.netpeers import free_port

pytestmark = [pytest.mark.integration]


def _service(lake: Path, **web: Any) -> Service:
    ws.make_users(lake)
    dimse = DimseSettings(port=0, min_free_bytes=0, drain_workers=0, drain_interval_s=0.1)  # type: ignore[call-arg]
    settings = ws.settings(http_port=free_port(), bind="127.0.0.1", **web)
    return Service(lake, get_settings(), dimse=dimse, control=False, listen=False, web=True, web_settings=settings)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    lake = tmp_path / "lake"
    lake.mkdir()
    svc = _service(lake).start()
    try:
        assert svc.web_url is not None
        yield svc, svc.web_url
    finally:
        svc.stop()


def _client(url: str, svc: Service) -> Any:
    from dicomweb_client.api import DICOMwebClient

    app = svc._web.config.app  # the app serve_in_thread started (for a bearer token)
    return DICOMwebClient(url=f"{url}/dicomweb", headers=ws.bearer(app, "ada"))


def test_stow_under_serve_keeps_files_and_the_retrieve_url_returns_them(served: tuple[Service, str]) -> None:
    """PS3.18 §10.5.3 (Table 10.5.3-3): each stored instance's RetrieveURL (0008,1190) must
    retrieve it; web.stow_keep_files (default true) keeps the file under ``dicomlake serve``
    too (before: the drainer dropped the spool copy and the RetrieveURL answered 404)."""
    from pydicom.data import get_testdata_file

    svc, url = served
    client = _client(url, svc)
    paths = [Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm"))]
    sent = [pydicom.dcmread(p) for p in paths]
    result = client.store_instances(datasets=sent)
    stored = result.ReferencedSOPSequence
    assert len(stored) == 2 and "FailedSOPSequence" not in result
    for p, ds in zip(paths, sent, strict=True):
        item = next(s for s in stored if s.ReferencedSOPInstanceUID == ds.SOPInstanceUID)
        retrieve_url = item.RetrieveURL
        assert retrieve_url.endswith(
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
        # WADO-RS of that URL, by dicomweb-client: the instance as it was sent
        got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        original = pydicom.dcmread(p)
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.PixelData == original.PixelData
        for elem in original:
            assert got[elem.tag].value == elem.value, elem.tag
        # and the same bytes over plain HTTP at the RetrieveURL itself (its path: dicomweb-client
        # sends ``Host: 127.0.0.1`` without the port, and the URL's origin follows the Host header)
        path = urlsplit(retrieve_url).path
        assert path.startswith("/dicomweb/studies/")
        r = httpx.get(
            url + path,
            headers={"Accept": 'multipart/related; type="application/dicom"', **ws.bearer(svc._web.config.app, "ada")},
        )
        assert r.status_code == 200, r.text[:300]
        from dicomlake.web.dicomweb import split_multipart

        (part,) = split_multipart(r.content, r.headers["content-type"])
        again = pydicom.dcmread(io.BytesIO(part[1]))
        assert again.PixelData == original.PixelData and again.SOPInstanceUID == original.SOPInstanceUID
    kept = sorted((svc.lake / "files").rglob("*.dcm"))
    assert {p.stem for p in kept} >= {str(d.SOPInstanceUID) for d in sent}


def test_stow_keep_files_off_keeps_nothing(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    lake = tmp_path / "lake"
    lake.mkdir()
    svc = _service(lake, stow_keep_files=False).start()
    try:
        assert svc.web_url is not None
        client = _client(svc.web_url, svc)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        result = client.store_instances(datasets=[ds])
        assert len(result.ReferencedSOPSequence) == 1
        assert not list((lake / "files").rglob("*.dcm")) if (lake / "files").exists() else True
        # the metadata is in the lake all the same
        meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
    finally:
        svc.stop()
