"""Side by side with Orthanc's DICOMweb plugin on the same files (issue #19): where Orthanc is the
reference, our QIDO-RS and WADO-RS answers must agree with its answers. Our server is driven by
dicomweb-client (an independent client); Orthanc by its REST API inside its namespace."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pydicom
import pytest

from tests import web_support as ws

pytestmark = [pytest.mark.integration]

STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"
INSTANCE_LEVEL = {"00080018", "00080016", "00200013", "00280010", "00280011", "7FE00010"}
SERIES_LEVEL = {"0020000E", "0008103E", "00200011", "00080060"}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same files in our lake (served by uvicorn on 127.0.0.1) and in an Orthanc."""
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app
    from tests.integration.orthanc import Orthanc, require_orthanc
    from tests.test_web_dicomweb_conformance import bad_ds_file

    require_orthanc(dicomweb=True)
    root = tmp_path_factory.mktemp("orthanc-side-by-side")
    uids = ws.planted_files(root / "in")
    bad_ds_file(root / "in")
    files = sorted((root / "in").glob("*.dcm"))
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    app = create_app(root / "lake", ws.settings())
    with ws.served(app) as url, Orthanc(root / "orthanc", dicomweb=True) as pacs:
        for f in files:
            pacs.post("/instances", f.read_bytes(), content_type="application/dicom")
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=f"{url}/dicomweb", headers=ws.bearer(app, "ada"))
        yield {"url": url, "app": app, "pacs": pacs, "client": client, "files": files, "uids": uids}


def _by_study(answers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a[STUDY]["Value"][0]: a for a in answers}


def _only_part(body: bytes) -> bytes:
    """The content of a one-part multipart body (its first line is the delimiter)."""
    delim = body.split(b"\r\n", 1)[0]
    part = body.split(delim)[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


def _comparable(el: dict[str, Any]) -> Any:
    vals = el.get("Value") or []
    return [str(v) if not isinstance(v, dict) else v.get("Alphabetic") for v in vals]


def test_universal_matching_count_equals_orthancs(both: dict[str, Any]) -> None:
    """PS3.4 C.2.2.2.4: ``AccessionNumber=*`` is universal matching; Orthanc returns every study
    (the one with an empty Accession Number too), and so do we."""
    every = {str(pydicom.dcmread(f).StudyInstanceUID) for f in both["files"]}
    orthanc = {a[STUDY]["Value"][0] for a in both["pacs"].get("/dicom-web/studies?AccessionNumber=*")}
    ours = {a[STUDY]["Value"][0] for a in both["client"].search_for_studies(search_filters={"AccessionNumber": "*"})}
    assert ours == orthanc == every
    # and both leave the empty value out of a wildcard that is more than "*"
    orthanc_acc = {a[STUDY]["Value"][0] for a in both["pacs"].get("/dicom-web/studies?AccessionNumber=ACC*")}
    ours_acc = {
        a[STUDY]["Value"][0] for a in both["client"].search_for_studies(search_filters={"AccessionNumber": "ACC*"})
    }
    assert ours_acc == orthanc_acc and len(ours_acc) == len(every) - 1


def test_includefield_all_agrees_with_orthanc(both: dict[str, Any]) -> None:
    """PS3.18 §8.3.4.3: includefield=all at the study level gives study and patient attributes,
    at the series level series ones too; never an instance's. Every attribute Orthanc returns we
    return, with the same value."""
    client, pacs = both["client"], both["pacs"]
    for level, path, forbidden in (
        ("studies", "/dicom-web/studies?includefield=all", INSTANCE_LEVEL | SERIES_LEVEL),
        ("series", "/dicom-web/series?includefield=all", INSTANCE_LEVEL),
    ):
        theirs = pacs.get(path)
        ours = (
            client.search_for_studies(fields=["all"])
            if level == "studies"
            else client.search_for_series(fields=["all"])
        )
        key = STUDY if level == "studies" else SERIES
        t = {a[key]["Value"][0]: a for a in theirs}
        o = {a[key]["Value"][0]: a for a in ours}
        assert set(o) == set(t)
        for uid, answer in o.items():
            assert not set(answer) & forbidden, (level, set(answer) & forbidden)
            assert not set(t[uid]) & forbidden
            missing = set(t[uid]) - set(answer)
            assert not missing, (level, uid, missing)
            for tag in set(t[uid]) - {"00081190"}:
                assert _comparable(answer[tag]) == _comparable(t[uid][tag]) or (
                    tag == "00080061" and sorted(_comparable(answer[tag])) == sorted(_comparable(t[uid][tag]))
                ), (level, tag, answer[tag], t[uid][tag])


def test_ignored_matching_parameters_answer_like_orthanc(both: dict[str, Any]) -> None:
    """PS3.18 §8.3.4.5/6: Orthanc ignores emptyvaluematching; we ignore it too, and say so."""
    pacs, client = both["pacs"], both["client"]
    theirs = {a[STUDY]["Value"][0] for a in pacs.get("/dicom-web/studies?emptyvaluematching=true")}
    resp = client._http_get(f"{both['url']}/dicomweb/studies", params={"emptyvaluematching": "true"})
    assert {a[STUDY]["Value"][0] for a in resp.json()} == theirs
    assert resp.headers["Warning"].startswith("299 ")


def test_metadata_json_and_xml_by_dicomweb_client_agree_with_orthanc(both: dict[str, Any]) -> None:
    """WADO-RS metadata (PS3.18 §10.4.1.1.2) of one instance: JSON by dicomweb-client, XML through
    its HTTP session and multipart decoder; Pixel Data is a BulkDataURI in both (as in Orthanc's),
    and the bulk data dicomweb-client retrieves is pydicom's Pixel Data."""
    from dicomlake.web.dicomweb import NATIVE_NS

    client, pacs, uids = both["client"], both["pacs"], both["uids"]
    sop = uids["instances"][0]
    study = next(s for s in uids["studies"] if sop.startswith(s + "."))
    series = next(s for s in uids["series"] if sop.startswith(s + "."))
    original = next(pydicom.dcmread(f) for f in both["files"] if pydicom.dcmread(f).SOPInstanceUID == sop)
    ours = client.retrieve_instance_metadata(study, series, sop)
    theirs = pacs.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata")[0]
    assert "BulkDataURI" in ours["7FE00010"] and "BulkDataURI" in theirs["7FE00010"]
    # every public top-level attribute Orthanc gives, we give with the same value
    for tag, el in theirs.items():
        if int(tag[:4], 16) & 1 or "Value" not in el or el.get("vr") in ("SQ",):
            continue
        assert tag in ours, tag
        mine = _comparable(ours[tag])
        ref = _comparable(el)
        if el["vr"] in ("DS", "FL", "FD", "IS"):
            assert [float(x) for x in mine] == pytest.approx([float(x) for x in ref]), tag
        else:
            assert mine == ref, tag
    # the bulk data, retrieved by dicomweb-client (the URI's path: dicomweb-client sends no port in Host)
    bulk_path = urlsplit(ours["7FE00010"]["BulkDataURI"]).path
    (pixels,) = client.retrieve_bulkdata(f"{both['url']}{bulk_path}")
    assert pixels == original.PixelData
    # the same metadata as the Native DICOM Model, through dicomweb-client's session and decoder
    resp = client._http_get(
        f"{both['url']}/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata",
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    (xml_part,) = list(client._decode_multipart_message(resp, stream=False))
    tree = ET.fromstring(xml_part)
    ns = "{" + NATIVE_NS + "}"
    xml_tags = {a.get("tag") for a in tree if not a.get("privateCreator")}
    assert {t for t in ours if not int(t[:4], 16) & 1} <= xml_tags
    raw = pacs.get_bytes(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata",
        accept='multipart/related; type="application/dicom+xml"',
    )
    their_xml = ET.fromstring(_only_part(raw))
    mine = {a.get("tag"): a for a in tree if not a.get("privateCreator")}
    compared = 0
    for attr in their_xml:
        if not attr.tag.endswith("DicomAttribute") or attr.get("privateCreator"):
            continue
        tag = attr.get("tag")
        if tag not in mine or attr.get("vr") in ("SQ", "OB", "OW", "UN"):
            continue
        assert mine[tag].get("vr") == attr.get("vr"), tag
        values = [v.text for v in attr if v.tag.endswith("Value")]
        my_values = [v.text for v in mine[tag] if v.tag == f"{ns}Value"]
        if attr.get("vr") in ("DS", "FL", "FD", "IS"):
            assert [float(x or 0) for x in my_values] == pytest.approx([float(x or 0) for x in values]), tag
        else:
            assert my_values == values, tag
        compared += 1
    assert compared >= 20, compared


def test_stow_by_dicomweb_client_then_qido_finds_it(both: dict[str, Any]) -> None:
    """STOW-RS (PS3.18 §10.5) by dicomweb-client, then QIDO-RS finds the instance."""
    from pydicom.data import get_testdata_file

    client = both["client"]
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    result = client.store_instances(datasets=[ds])
    assert [s.ReferencedSOPInstanceUID for s in result.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    found = client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    assert [f[SOP]["Value"][0] for f in found] == [ds.SOPInstanceUID]
