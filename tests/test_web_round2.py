"""The web service's smaller defects of issue 19: 500s, audit XML, tokens for disabled users, the
DICOMweb challenge, the analyst's sort order, /api/docs without a CDN, and dose charts under a
Modality filter."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from tests import web_support as ws
from tests.integration.netpeers import REPO, dicomlake

CT_RDSR = REPO / "tests" / "data" / "corpus" / "openrem" / "CT-RDSR-GEPixelMed.dcm"
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Cache-Control")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app

    root = tmp_path_factory.mktemp("round2")
    uids = ws.planted_files(root / "in")
    shutil.copy(CT_RDSR, root / "in" / "rdsr.dcm")
    # an instance without a Study Instance UID (broken or hostile input the lake keeps)
    ds = pydicom.dcmread(root / "in" / "001.dcm")
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(root / "in" / "nostudy.dcm")
    uids["nostudy"] = str(ds.SOPInstanceUID)
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    app = create_app(root / "lake", ws.settings())

    def boom() -> None:
        raise RuntimeError("a defect in a handler")

    app.add_api_route("/studies-boom", boom, methods=["GET"])  # an unexpected error in a route
    with TestClient(app, raise_server_exceptions=False) as c:
        yield {"app": app, "client": c, "uids": uids, "root": root}


def test_a_500_has_the_security_headers_and_is_in_the_access_log(world: dict[str, Any]) -> None:
    app, c = world["app"], world["client"]
    r = c.get("/studies-boom", headers=ws.bearer(app, "ada"))
    assert r.status_code == 500
    assert r.json()["error"].startswith("internal error (RuntimeError)")
    for h in SECURITY_HEADERS:
        assert h in r.headers, h
    log = c.get("/access-log.json", params={"status": "500"}, headers=ws.bearer(app, "aud")).json()
    assert [e["path"] for e in log["rows"]] == ["/studies-boom"]
    assert log["rows"][0]["user"] == "ada" and "RuntimeError" in log["rows"][0]["detail"]


def test_audit_xml_of_an_event_about_an_instance_without_a_study_uid(world: dict[str, Any]) -> None:
    app, c = world["app"], world["client"]
    uid = world["uids"]["nostudy"]
    shown = c.get(f"/instances/{uid}.json", headers=ws.bearer(app, "ada"))
    assert shown.status_code == 200, shown.text
    events = c.get("/access-log.json", params={"path": f"/instances/{uid}.json"}, headers=ws.bearer(app, "aud"))
    (event,) = events.json()["rows"]
    r = c.get(f"/access-log/{event['id']}.xml", headers=ws.bearer(app, "aud"))
    assert r.status_code == 200, r.text
    root = ElementTree.fromstring(r.content)  # the oracle: a well-formed audit message
    assert root.tag == "AuditMessage"
    assert [i.get("UID") for i in root.iter("Instance")] == [uid]


def test_no_token_for_a_disabled_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    ws.make_users(lake)
    monkeypatch.setenv("DICOMLAKE_WEB__SECRET", ws.SECRET)
    ok = dicomlake("token", "ann", "--lake", str(lake))
    assert ok.returncode == 0 and ok.stdout.count(".") == 2, ok.stderr
    assert dicomlake("user", "disable", "ann", "--lake", str(lake)).returncode == 0
    for extra in ([], ["--opaque"]):
        r = dicomlake("token", "ann", "--lake", str(lake), *extra)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        assert r.stdout.strip() == ""
        assert "disabled" in r.stderr and "Traceback" not in r.stderr


def test_a_dicomweb_401_offers_bearer_and_basic(world: dict[str, Any]) -> None:
    r = world["client"].get("/dicomweb/studies", headers={"Accept": "application/dicom+json"})
    assert r.status_code == 401
    schemes = {m.lower() for m in re.findall(r"(\w+) realm=", r.headers["WWW-Authenticate"])}
    assert schemes == {"bearer", "basic"}, r.headers["WWW-Authenticate"]


def test_the_analyst_cannot_sort_on_a_value_the_profile_replaces(world: dict[str, Any]) -> None:
    app, c = world["app"], world["client"]
    analyst = ws.bearer(app, "ann")
    for key in ("PatientName", "-PatientName", "PatientID", "StudyDate"):
        r = c.get("/studies.json", params={"_sort": key}, headers=analyst)
        assert r.status_code == 403, (key, r.text)
        assert "may not sort" in r.json()["error"]
    assert c.get("/studies.json", params={"_sort": "Modality", "_level": "series"}, headers=analyst).status_code == 200
    assert c.get("/studies.json", params={"_sort": "PatientName"}, headers=ws.bearer(app, "ada")).status_code == 200


def test_api_docs_come_from_this_service(world: dict[str, Any]) -> None:
    app, c = world["app"], world["client"]
    r = c.get("/api/docs", headers=ws.bearer(app, "ada"))
    assert r.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(x.startswith("/") and not x.startswith("//") for x in refs), refs
    assert "<script>" not in r.text  # nothing inline: the CSP allows scripts from 'self' only
    for ref in refs:
        asset = c.get(ref, headers=ws.bearer(app, "ada"))
        assert asset.status_code == 200, ref
    js = c.get("/static/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in js and len(js) > 100_000


def test_dose_charts_under_modality_ct_keep_the_ct_dose_reports(world: dict[str, Any]) -> None:
    app, c = world["app"], world["client"]
    admin = ws.bearer(app, "ada")
    # the oracle: pydicom reads the RDSR as Modality SR, and the CT dose events are its irradiation events
    assert pydicom.dcmread(CT_RDSR).Modality == "SR"
    everything = c.get("/dashboards.json", params={"_chart": "ct-dose"}, headers=admin).json()["charts"][0]["rows"]
    assert everything
    ct = c.get("/dashboards.json", params={"_chart": "ct-dose", "Modality": "CT"}, headers=admin).json()
    assert len(ct["charts"][0]["rows"]) == len(everything)
    mg = c.get("/dashboards.json", params={"_chart": "ct-dose", "Modality": "MG"}, headers=admin).json()
    assert mg["charts"][0]["rows"] == []


def test_the_study_list_is_newest_first_with_names_as_people_write_them(world: dict[str, Any]) -> None:
    from html.parser import HTMLParser

    from pydicom.valuerep import PersonName

    app, c = world["app"], world["client"]
    # the oracle: pydicom's reading of the files that went in
    files = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((world["root"] / "in").glob("*.dcm"))]
    by_study = {str(d.StudyInstanceUID): d for d in files if "StudyInstanceUID" in d}
    expected_dates = sorted({str(d.StudyDate) for d in by_study.values() if d.get("StudyDate")}, reverse=True)

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[tuple[str, str | None]]] = []
            self._cell: list[str] | None = None
            self._href: str | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "tr":
                self.rows.append([])
            elif tag == "td":
                self._cell, self._href = [], None
            elif tag == "a" and self._cell is not None:
                self._href = dict(attrs).get("href")

        def handle_endtag(self, tag: str) -> None:
            if tag == "td" and self._cell is not None:
                self.rows[-1].append(("".join(self._cell).strip(), self._href))
                self._cell = None

        def handle_data(self, data: str) -> None:
            if self._cell is not None:
                self._cell.append(data)

    r = c.get("/studies", headers={**ws.bearer(app, "ada"), "Accept": "text/html"})
    parser = Rows()
    parser.feed(r.text)
    rows = [row for row in parser.rows if row]
    cols = ["StudyDate", "PatientID", "PatientName", "AccessionNumber", "StudyDescription", "StudyInstanceUID"]
    shown = [dict(zip(cols, row, strict=False)) for row in rows]
    dates = [s["StudyDate"][0].replace("-", "") for s in shown if s["StudyDate"][0]]
    assert dates == sorted(dates, reverse=True) and dates[0] == expected_dates[0], dates
    shown = [s for s in shown if s["StudyInstanceUID"][0]]  # the instance without a study UID has its own row
    for s in shown:
        uid = s["StudyInstanceUID"][0]
        ds = by_study[uid]
        pn = PersonName(str(ds.PatientName))
        assert s["PatientName"][0] == f"{pn.family_name}, {pn.given_name}", s
        # the description and the date link to the study, like its UID
        assert s["StudyInstanceUID"][1] == f"/studies/{uid}"
        for key in ("StudyDescription", "StudyDate"):
            if ds.get(key):
                assert s[key][1] == f"/studies/{uid}", (key, s)
    assert len(shown) == len(by_study)
