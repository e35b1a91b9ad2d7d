"""DICOMweb of the web app: QIDO-RS matching on any attribute, WADO-RS, STOW-RS, the error shape."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests import web_support as ws


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from dicomlake.ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("dicomweb")
    uids = ws.planted_files(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    return root, uids


@pytest.fixture(scope="module")
def client(planted: tuple[Path, dict[str, Any]]) -> Iterator[TestClient]:
    from dicomlake.web.app import create_app

    app = create_app(planted[0] / "lake", ws.settings())
    with TestClient(app) as c:
        c.headers.update(ws.bearer(app, "ada"))
        yield c


def uids_of(resp: Any, tag: str) -> list[str]:
    assert resp.status_code == 200, resp.text
    return sorted(r[tag]["Value"][0] for r in resp.json())


STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


def test_error_shape_is_pinned(client: TestClient) -> None:
    r = client.get("/dicomweb/studies?orderby=StudyDate")
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"ok", "error", "errors", "status"}
    assert body["ok"] is False and body["status"] == 400 and isinstance(body["errors"], list)
    assert "orderby" in body["error"] and "limit, offset, fuzzymatching, includefield" in body["error"]
    r = TestClient(client.app).get("/dicomweb/studies")
    assert r.status_code == 401 and set(r.json()) == {"ok", "error", "errors", "status"}
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json()["status"] == 404 and r.json()["ok"] is False


def test_qido_lists_every_problem_at_once(client: TestClient) -> None:
    r = client.get("/dicomweb/studies?limit=x&offset=-1&NoSuchKeyword=1")
    assert r.status_code == 400
    assert len(r.json()["errors"]) == 3


def test_qido_single_value_and_uid_list(client: TestClient, planted: tuple[Path, dict[str, Any]]) -> None:
    _, uids = planted
    assert uids_of(client.get("/dicomweb/studies?Modality=CT"), STUDY) == [uids["studies"][0]]
    assert uids_of(client.get("/dicomweb/studies?ModalitiesInStudy=MG"), STUDY) == [uids["studies"][1]]
    both = ",".join(uids["studies"])
    assert uids_of(client.get(f"/dicomweb/studies?StudyInstanceUID={both}"), STUDY) == sorted(uids["studies"])
    backslash = "\\".join(uids["instances"][:2])
    assert len(uids_of(client.get(f"/dicomweb/instances?00080018={backslash}"), SOP)) == 2


def test_qido_wildcards_and_fuzzy_person_names(client: TestClient) -> None:
    assert len(client.get("/dicomweb/studies?PatientName=PLANTED*").json()) == 2
    assert len(client.get("/dicomweb/studies?PatientName=PLANTEDNAM?^ZELDA").json()) == 2
    assert client.get("/dicomweb/studies?PatientName=zelda").json() == []
    assert len(client.get("/dicomweb/studies?PatientName=zelda&fuzzymatching=true").json()) == 2
    assert len(client.get("/dicomweb/studies?PatientName=plantedn&fuzzymatching=true").json()) == 2


def test_qido_date_range_includes_both_ends_and_open_ends(client: TestClient) -> None:
    for q in ("20190607-20190607", "20190101-", "-20190607", "20190607"):
        assert len(client.get(f"/dicomweb/studies?StudyDate={q}").json()) == 2, q
    assert client.get("/dicomweb/studies?StudyDate=20190608-").json() == []
    assert len(client.get("/dicomweb/studies?StudyTime=1000-1100").json()) == 2


def test_qido_on_attributes_that_are_not_required_keys(
    client: TestClient, planted: tuple[Path, dict[str, Any]]
) -> None:
    _, uids = planted
    # a typed column that QIDO does not require
    assert uids_of(client.get("/dicomweb/instances?CTDIvol=25"), SOP) == [uids["instances"][1]]
    # an attribute without a typed column (elements), by tag
    r = client.get("/dicomweb/instances?00181110=1085.6&includefield=00181110")
    assert len(r.json()) == 3 and r.json()[0]["00181110"]["Value"] == [1085.6]
    # a nested attribute
    assert len(client.get("/dicomweb/instances?CTDIPhantomTypeCodeSequence.CodeMeaning=*Body*").json()) == 3
    # a private attribute named by its creator
    assert len(client.get('/dicomweb/series?(0019,"PLANT_CREATOR",11)=42.5').json()) == 3


def test_qido_limit_offset_and_warning_header(client: TestClient) -> None:
    r = client.get("/dicomweb/instances?limit=2")
    assert len(r.json()) == 2 and r.headers["Warning"].startswith("299 ")
    r2 = client.get("/dicomweb/instances?limit=2&offset=2")
    assert not {x[SOP]["Value"][0] for x in r.json()} & {x[SOP]["Value"][0] for x in r2.json()}
    r3 = client.get("/dicomweb/instances?limit=100")
    assert "Warning" not in r3.headers and len(r3.json()) == 6


def test_qido_returns_required_computed_and_included_fields(
    client: TestClient, planted: tuple[Path, dict[str, Any]]
) -> None:
    _, uids = planted
    study = client.get("/dicomweb/studies?Modality=CT").json()[0]
    assert study["00201208"]["Value"] == [3] and study["00201206"]["Value"] == [1]
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{uids['studies'][0]}")
    assert "00180060" not in study
    inc = client.get("/dicomweb/studies?Modality=CT&includefield=KVP,00080070").json()[0]
    assert inc["00180060"]["Value"] == [120] and inc["00080070"]["Value"] == ["ACME"]
    everything = client.get("/dicomweb/instances?limit=1&includefield=all").json()[0]
    assert "00191010" in everything and "00400275" in everything
    series = client.get(f"/dicomweb/studies/{uids['studies'][1]}/series").json()
    assert {s["00080060"]["Value"][0] for s in series} == {"MG", "OT"}
    inst = client.get(f"/dicomweb/studies/{uids['studies'][1]}/series/{uids['series'][1]}/instances").json()
    assert len(inst) == 2 and all("00080016" in i for i in inst)


def test_wado_metadata_study_series_instance(client: TestClient, planted: tuple[Path, dict[str, Any]]) -> None:
    _, uids = planted
    s, se, i = uids["studies"][0], uids["series"][0], uids["instances"][0]
    assert len(client.get(f"/dicomweb/studies/{s}/metadata").json()) == 3
    assert len(client.get(f"/dicomweb/studies/{s}/series/{se}/metadata").json()) == 3
    one = client.get(f"/dicomweb/studies/{s}/series/{se}/instances/{i}/metadata")
    assert one.headers["content-type"].startswith("application/dicom+json")
    assert one.json()[0][SOP]["Value"] == [i]
    r = client.get("/dicomweb/studies/1.2.3.4/metadata")
    assert r.status_code == 404 and r.json()["ok"] is False


def test_wado_retrieves_kept_instance_files(client: TestClient, planted: tuple[Path, dict[str, Any]]) -> None:
    from dicomlake.web.dicomweb import split_multipart

    _, uids = planted
    s, se, i = uids["studies"][0], uids["series"][0], uids["instances"][0]
    r = client.get(
        f"/dicomweb/studies/{s}/series/{se}/instances/{i}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related")
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 1
    ds = pydicom.dcmread(io.BytesIO(parts[0][1]))
    assert ds.SOPInstanceUID == i
    whole = client.get(f"/dicomweb/studies/{s}")
    assert len(split_multipart(whole.content, whole.headers["content-type"])) == 3


def _multipart(files: list[bytes], boundary: str = "dlboundary") -> tuple[bytes, str]:
    body = b""
    for f in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_stores_instances_with_a_per_instance_result(client: TestClient, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    files = [
        Path(get_testdata_file("CT_small.dcm")).read_bytes(),
        Path(get_testdata_file("MR_small.dcm")).read_bytes(),
        b"not dicom at all",
    ]
    body, ctype = _multipart(files)
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202, r.text
    res = r.json()
    stored = res["00081199"]["Value"]
    failed = res["00081198"]["Value"]
    assert len(stored) == 2 and len(failed) == 1
    assert failed[0]["00081197"]["Value"] == [0xC000]
    ct_uid = pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID
    assert ct_uid in {s["00081155"]["Value"][0] for s in stored}
    found = client.get(f"/dicomweb/instances?SOPInstanceUID={ct_uid}").json()
    assert len(found) == 1
    # WADO-RS retrieve of what STOW-RS kept
    url = next(s for s in stored if s["00081155"]["Value"][0] == ct_uid)["00081190"]["Value"][0]
    got = client.get(url.replace("http://testserver", ""))
    assert got.status_code == 200 and ct_uid.encode() in got.content
    # a study UID in the URL that the instance does not belong to
    body, ctype = _multipart(files[:1])
    r = client.post("/dicomweb/studies/1.2.3.999", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_stow_refuses_other_media_types(client: TestClient) -> None:
    r = client.post("/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.json()["status"] == 415


def test_unsupported_accept_is_406(client: TestClient) -> None:
    r = client.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406


def test_every_request_is_in_the_access_log(client: TestClient) -> None:
    client.get("/dicomweb/studies?Modality=CT")
    log = client.get("/access-log.json?path=/dicomweb/studies").json()["rows"]
    assert log and log[0]["event"] == "Query" and log[0]["user"] == "ada" and log[0]["query"] == "Modality=CT"
    meta = client.get("/access-log.json?event_id=110103").json()["rows"]
    assert all(json.loads(m["instances"] or "[]") or m["n_instances"] == 0 for m in meta)
