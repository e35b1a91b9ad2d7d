"""Real DICOMweb clients against our server: dicomweb-client (Python) and Orthanc's DICOMweb plugin
configured with our server as a remote DICOMweb server (bearer token in ``HttpHeaders``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import web_support as ws

pytestmark = pytest.mark.integration

LAKE_PORT_IN_NETNS = 8999
"""Our port inside Orthanc's private network namespace (nothing else listens there)."""


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from dicomlake.ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("peers")
    uids = ws.planted_files(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    return root / "lake", uids


@pytest.fixture(scope="module")
def server(lake: tuple[Path, dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    from dicomlake.web.app import create_app

    app = create_app(lake[0], ws.settings())
    with ws.served(app) as url:
        yield url, app


def test_dicomweb_client_searches_and_retrieves_metadata(
    server: tuple[str, Any], lake: tuple[Path, dict[str, Any]]
) -> None:
    from dicomweb_client.api import DICOMwebClient

    url, app = server
    _, uids = lake
    client = DICOMwebClient(url=f"{url}/dicomweb", headers=ws.bearer(app, "ada"))
    studies = client.search_for_studies()
    assert sorted(s["0020000D"]["Value"][0] for s in studies) == sorted(uids["studies"])
    ct = client.search_for_studies(
        search_filters={"ModalitiesInStudy": "CT", "PatientName": "plantedname*"}, fuzzymatching=True
    )
    assert [s["0020000D"]["Value"][0] for s in ct] == [uids["studies"][0]]
    page = client.search_for_instances(limit=2, offset=1)
    assert len(page) == 2
    series = client.search_for_series(study_instance_uid=uids["studies"][1], fields=["BodyPartExamined"])
    assert {s["0020000E"]["Value"][0] for s in series} == {uids["series"][1], uids["series"][2]}
    inst = client.search_for_instances(search_filters={"CTDIvol": "25"}, get_remaining=True)
    assert [i["00080018"]["Value"][0] for i in inst] == [uids["instances"][1]]
    meta = client.retrieve_study_metadata(uids["studies"][0])
    assert len(meta) == 3 and {m["00080018"]["Value"][0] for m in meta} == set(uids["instances"][:3])
    one = client.retrieve_instance_metadata(uids["studies"][0], uids["series"][0], uids["instances"][0])
    assert one["00100020"]["Value"] == [ws.PLANTED["PatientID"]]
    ds = client.retrieve_instance(uids["studies"][0], uids["series"][0], uids["instances"][0])
    assert ds.SOPInstanceUID == uids["instances"][0]
    # STOW-RS through dicomweb-client
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    mr = dcmread(get_testdata_file("MR_small.dcm"))
    result = client.store_instances([mr])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == mr.SOPInstanceUID
    # an analyst through the same client: pseudonyms only
    analyst = DICOMwebClient(url=f"{url}/dicomweb", headers=ws.bearer(app, "ann"))
    seen = analyst.search_for_studies()
    assert seen and not {s["0020000D"]["Value"][0] for s in seen} & set(uids["studies"])
    print(f"\ndicomweb-client: {len(studies)} studies, {len(meta)} metadata, 1 instance, 1 STOW-RS against {url}")


def test_orthanc_queries_our_server_as_a_remote_dicomweb_server(
    lake: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from tests.integration.orthanc import Orthanc, require_orthanc

    require_orthanc(dicomweb=True)
    from dicomlake.web.app import create_app

    lake_dir, uids = lake
    app = create_app(lake_dir, ws.settings())
    token = app.state.ctx.auth.issue_jwt("ada")
    servers = {
        "lake": {
            "Url": f"http://127.0.0.1:{LAKE_PORT_IN_NETNS}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {token}"},
        }
    }
    with Orthanc(
        tmp_path / "orthanc",
        dicomweb=True,
        extra_config={"DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers}},
    ) as pacs:
        if pacs.rootless:
            pytest.skip("in_netns() needs root to put our server inside Orthanc's namespace")

        def bind() -> socket.socket:
            s = socket.socket()
            s.bind(("127.0.0.1", LAKE_PORT_IN_NETNS))
            s.listen(16)
            return s

        sock = pacs.call_in_netns(bind)
        with ws.served(app, sock):
            found = pacs.post(
                "/dicom-web/servers/lake/qido", {"Uri": "/studies", "Arguments": {"ModalitiesInStudy": "MG"}}
            )
            # Orthanc answers in its own JSON flavour: {"Name": ..., "Value": "text"}
            assert [s["0020000D"]["Value"] for s in found] == [uids["studies"][1]]
            assert found[0]["00100010"]["Value"] == ws.PLANTED["PatientName"]
            series = pacs.post("/dicom-web/servers/lake/qido", {"Uri": f"/studies/{uids['studies'][0]}/series"})
            assert [s["0020000E"]["Value"] for s in series] == [uids["series"][0]]
            ctdi = pacs.post(
                "/dicom-web/servers/lake/qido",
                {"Uri": "/instances", "Arguments": {"CTDIPhantomTypeCodeSequence.CodeMeaning": "*Body*"}},
            )
            assert len(ctdi) == 3
            meta = pacs.post("/dicom-web/servers/lake/get", {"Uri": f"/studies/{uids['studies'][0]}/metadata"})
            assert len(meta) == 3
            # Orthanc pulls the study's instances over WADO-RS into its own storage
            pacs.post("/dicom-web/servers/lake/retrieve", {"Resources": [{"Study": uids["studies"][0]}]})
            got = {pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances()}
            assert set(uids["instances"][:3]) <= got
            log = app.state.ctx.db.events(where={"user": "ada", "event_id": "110112"}, limit=50)[0]
            assert any(e["path"] == "/dicomweb/studies" and e["query"] == "ModalitiesInStudy=MG" for e in log)
            print(
                f"\nOrthanc via DICOMweb: QIDO studies/series/instances, metadata of {len(meta)}, "
                f"WADO-RS retrieve of {len(got)} instances into Orthanc"
            )
