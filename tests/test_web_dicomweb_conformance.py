"""DICOMweb conformance fixes of issue #19, each against the section of PS3.18 / PS3.4 it follows.

The expected values come from pydicom's reading of the files the lake was built from (and
dcmtk's ``dcm2xml --native-format`` for the XML metadata), not from the server's own output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests import web_support as ws

STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"
BAD_DS = b"1.06,0.206"
"""A Spatial Resolution as a vendor wrote it: a comma, not a decimal string (PS3.5 Table 6.2-1)."""


def bad_ds_file(folder: Path) -> Path:
    """One CT instance of its own study: Spatial Resolution ``1.06,0.206``, Accession Number empty."""
    ds = ws._base(ws.CT, ws.ROOT + "3", ws.ROOT + "3.1", ws.ROOT + "3.1.1", "CT", 1)
    ds.AccessionNumber = ""
    ds.SpatialResolution = "1.06000206"  # same length as the bad value, patched in below
    ds.SeriesDescription = "bad DS series"
    path = folder / "bad_ds.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    assert raw.count(b"1.06000206") == 1
    path.write_bytes(raw.replace(b"1.06000206", BAD_DS))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from dicomlake.ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("conformance")
    uids = ws.planted_files(root / "in")
    bad_ds_file(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    return root, uids


@pytest.fixture(scope="module")
def app(corpus: tuple[Path, dict[str, Any]]) -> Any:
    from dicomlake.web.app import create_app

    return create_app(corpus[0] / "lake", ws.settings())


@pytest.fixture(scope="module")
def admin(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        c.headers.update(ws.bearer(app, "ada"))
        yield c


@pytest.fixture(scope="module")
def analyst(app: Any, admin: TestClient) -> Iterator[TestClient]:
    with TestClient(app) as c:
        c.headers.update(ws.bearer(app, "ann"))
        yield c


def files_read(corpus: tuple[Path, dict[str, Any]]) -> list[pydicom.Dataset]:
    """The oracle: pydicom's reading of every file the lake was built from."""
    return [pydicom.dcmread(p) for p in sorted((corpus[0] / "in").glob("*.dcm"))]


def warnings_of(resp: Any) -> list[str]:
    return resp.headers.get_list("warning")


# ---- one bad value never fails a page --------------------------------------------------------


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_analyst_qido_survives_a_ds_that_is_not_a_decimal_string(
    analyst: TestClient, corpus: tuple[Path, dict[str, Any]], level: str
) -> None:
    """PS3.18 §8.3.4 / §6.8.1.2: a 299 Warning, not a failed search, when a value cannot be served.

    The bad DS (PS3.5 §6.2: DS is a decimal string; ``1.06,0.206`` is not) made pydicom's
    ``Dataset.from_json`` raise inside the analyst's de-identification: a 500 for the page.
    """
    r = analyst.get(f"/dicomweb/{level}")
    assert r.status_code == 200, r.text
    visible = [d for d in files_read(corpus) if d.get("BurnedInAnnotation", "") != "YES"]
    key = {"studies": "StudyInstanceUID", "series": "SeriesInstanceUID", "instances": "SOPInstanceUID"}[level]
    assert len(r.json()) == len({str(d.get(key)) for d in visible})
    if level == "instances":
        ws_ = warnings_of(r)
        assert any("(0018,1050)" in w for w in ws_), ws_
        assert all(re.fullmatch(r'299 \S+: ".*"', w) for w in ws_), ws_
        assert BAD_DS.decode() not in r.text
        # every other planted instance is served as before: the bad instance is there, without 00181050
        bad = [x for x in r.json() if x.get("00080018")]
        assert len(bad) == len(visible)


def test_analyst_metadata_survives_the_bad_ds(analyst: TestClient, corpus: tuple[Path, dict[str, Any]]) -> None:
    studies = analyst.get("/dicomweb/studies?ModalitiesInStudy=CT").json()
    assert studies
    for st in studies:
        uid = st[STUDY]["Value"][0]
        r = analyst.get(f"/dicomweb/studies/{uid}/metadata")
        assert r.status_code == 200, r.text
        assert all("00181050" not in d or d["00181050"].get("Value") != [BAD_DS.decode()] for d in r.json())


def test_admin_gets_the_bad_ds_as_a_json_string(admin: TestClient) -> None:
    """PS3.18 F.2.3.1 (CP 1861): DS values may be JSON Strings; the value is served as it was received."""
    r = admin.get(f"/dicomweb/instances?SOPInstanceUID={ws.ROOT}3.1.1&includefield=00181050")
    assert r.status_code == 200, r.text
    assert r.json()[0]["00181050"]["Value"] == [BAD_DS.decode()]


# ---- QIDO-RS matching -------------------------------------------------------------------------


def test_asterisk_alone_is_universal_matching(admin: TestClient, corpus: tuple[Path, dict[str, Any]]) -> None:
    """PS3.4 C.2.2.2.4: a value of ``*`` alone is universal matching: studies whose Accession
    Number is empty match too (before: 2 of 3)."""
    studies = {str(d.StudyInstanceUID) for d in files_read(corpus)}
    empty = {str(d.StudyInstanceUID) for d in files_read(corpus) if not d.get("AccessionNumber")}
    assert empty, "the corpus must hold a study with an empty Accession Number"
    r = admin.get("/dicomweb/studies?AccessionNumber=*")
    assert r.status_code == 200
    assert {x[STUDY]["Value"][0] for x in r.json()} == studies
    # the attribute is returned (empty for the study without one), as for universal matching
    assert all("00080050" in x for x in r.json())
    # a wildcard with more than "*" is wildcard matching: empty values do not match it
    r = admin.get("/dicomweb/studies?AccessionNumber=ACC*")
    assert {x[STUDY]["Value"][0] for x in r.json()} == studies - empty


def test_includefield_all_at_study_level_returns_study_and_patient_attributes(
    admin: TestClient, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """PS3.18 §8.3.4.3 with PS3.4 C.6.1.1: ``includefield=all`` at the study level returns the
    study's and the patient's attributes, not one arbitrary instance's SOP Instance UID or
    Series Description."""
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for d in files_read(corpus):
        by_study.setdefault(str(d.StudyInstanceUID), []).append(d)
    r = admin.get("/dicomweb/studies?includefield=all")
    assert r.status_code == 200
    assert len(r.json()) == len(by_study)
    for st in r.json():
        for tag in ("00080018", "0008103E", "00200013", "00280010", "0020000E", "00191010"):
            assert tag not in st, (tag, st[STUDY])
        files = by_study[st[STUDY]["Value"][0]]
        for keyword in ("StudyDescription", "PatientSex", "PatientAge", "StudyTime", "StudyID"):
            tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
            assert st[tag]["Value"][0] in {str(d.get(keyword)) for d in files}, keyword
    series = admin.get("/dicomweb/series?includefield=all").json()
    assert all("00080018" not in s and "00200013" not in s for s in series)
    assert any("0008103E" in s for s in series)
    # at the instance level "all" is the instance's attributes, as before
    inst = admin.get(f"/dicomweb/instances?SOPInstanceUID={ws.ROOT}3.1.1&includefield=all").json()[0]
    assert inst["0008103E"]["Value"] == ["bad DS series"]


@pytest.mark.parametrize("param", ["emptyvaluematching", "multiplevaluematching"])
def test_unsupported_optional_matching_parameters_are_ignored_with_a_warning(admin: TestClient, param: str) -> None:
    """PS3.18 §8.3.4.5 / §8.3.4.6: a server that does not support emptyvaluematching or
    multiplevaluematching ignores it and says so in a ``Warning: 299 {+service}: …`` header."""
    plain = admin.get("/dicomweb/studies?Modality=CT")
    r = admin.get(f"/dicomweb/studies?Modality=CT&{param}=true")
    assert r.status_code == 200, r.text
    assert r.json() == plain.json()
    ws_ = warnings_of(r)
    assert len(ws_) == 1 and re.fullmatch(rf'299 testserver: "{param}=true is not supported and was ignored"', ws_[0])
    assert not warnings_of(plain)


# ---- WADO-RS metadata: BulkDataURI, /bulkdata, XML -------------------------------------------

PAYLOAD = "</script><h1 id=pwned>INJECTED</h1>&amp;<![CDATA[x]]>\x01"


def _instance_url(uids: dict[str, Any], k: int = 0) -> str:
    study = next(s for s in uids["studies"] if uids["instances"][k].startswith(s + "."))
    series = next(s for s in uids["series"] if uids["instances"][k].startswith(s + "."))
    return f"/dicomweb/studies/{study}/series/{series}/instances/{uids['instances'][k]}"


def test_metadata_gives_bulk_data_as_retrievable_bulkdata_uris(
    admin: TestClient, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """PS3.18 §8.7.3.3.2 / §10.4.1.1.2: bulk data in metadata is a BulkDataURI, and the URI
    retrieves it (§10.4.1.1.4: multipart/related; type="application/octet-stream")."""
    from dicomlake.web.dicomweb import split_multipart

    root, uids = corpus
    url = _instance_url(uids)
    (meta,) = admin.get(f"{url}/metadata").json()
    original = pydicom.dcmread(sorted((root / "in").glob("*.dcm"))[0])
    assert original.SOPInstanceUID == uids["instances"][0]
    pixel = meta["7FE00010"]
    assert pixel["vr"] == original["PixelData"].VR and set(pixel) == {"vr", "BulkDataURI"}
    bulk_url = pixel["BulkDataURI"]
    assert bulk_url.startswith("http://testserver/dicomweb/") and bulk_url.endswith("/bulkdata/7FE00010")
    r = admin.get(bulk_url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    (part,) = split_multipart(r.content, r.headers["content-type"])
    assert part[0]["content-type"] == "application/octet-stream"
    assert part[1] == original.PixelData
    assert admin.get(bulk_url.replace("7FE00010", "00100010")).status_code in (200, 404)
    assert admin.get(bulk_url.replace("7FE00010", "7FE0001X")).status_code == 404
    assert admin.get(bulk_url, headers={"Accept": "application/dicom+json"}).status_code == 406


def test_analyst_bulkdata_is_the_deidentified_pixel_data(
    analyst: TestClient, corpus: tuple[Path, dict[str, Any]]
) -> None:
    from dicomlake.web.dicomweb import split_multipart

    root, uids = corpus
    studies = analyst.get("/dicomweb/studies?ModalitiesInStudy=MG").json()
    meta = analyst.get(f"/dicomweb/studies/{studies[0][STUDY]['Value'][0]}/metadata").json()
    assert meta and all("7FE00010" in m for m in meta)
    forbidden = ws.forbidden_strings(uids)
    uri = meta[0]["7FE00010"]["BulkDataURI"]
    assert not [f for f in forbidden if f in uri]
    r = analyst.get(uri)
    assert r.status_code == 200, r.text
    (part,) = split_multipart(r.content, r.headers["content-type"])
    sizes = {len(pydicom.dcmread(p).PixelData) for p in (root / "in").glob("*.dcm")}
    assert len(part[1]) in sizes
    assert analyst.get(uri.replace("7FE00010", "00191010")).status_code == 404


def _dcmtk_native(path: Path) -> Any:
    """dcmtk's Native DICOM Model of a file (``dcm2xml --native-format``): the oracle."""
    import subprocess
    import xml.etree.ElementTree as ET

    from tests.conftest import require_tool

    require_tool("dcm2xml")
    out = subprocess.run(["dcm2xml", "--native-format", str(path)], capture_output=True, check=True, timeout=60)
    return ET.fromstring(out.stdout)


def _xml_values(attr: Any, ns: str) -> list[Any]:
    vals: list[Any] = []
    for child in attr:
        name = child.tag.removeprefix(ns)
        if name == "Value":
            vals.append(child.text or "")
        elif name == "PersonName":
            vals.append({g.tag.removeprefix(ns): {c.tag.removeprefix(ns): c.text for c in g} for g in child if len(g)})
        elif name == "Item":
            vals.append(len(child))
        else:
            vals.append(name)
    return vals


def _xml_key(doc: dict[str, Any], key: str) -> tuple[str, str | None]:
    """How PS3.19 §A.1.1 names an attribute: a private data element (gggg,xxee) as gggg00ee with
    its creator, the value of (gggg,00xx)."""
    group, elem = int(key[:4], 16), int(key[4:], 16)
    if group & 1 and elem >= 0x1000:
        creator = doc[f"{group:04X}{elem >> 8:04X}"]["Value"][0]
        return f"{group:04X}00{elem & 0xFF:02X}", creator
    return key, None


def _same(vr: str, a: str, b: str) -> bool:
    if vr in ("DS", "FL", "FD", "IS", "SL", "SS", "UL", "US", "SV", "UV"):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except ValueError:
            return a.strip() == b.strip()
    return a.rstrip(" \x00") == b.rstrip(" \x00")


def test_metadata_as_native_dicom_model_xml_matches_dcmtk(
    admin: TestClient, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """PS3.18 §10.4.1.1.2 / Table 8.7.3-? (XML metadata is Required): ``Accept: application/dicom+xml``
    answers multipart/related of Native DICOM Model documents (PS3.19 §A.1). Each is well-formed
    and carries, attribute by attribute, the values dcmtk's ``dcm2xml --native-format`` writes."""
    import xml.etree.ElementTree as ET

    from dicomlake.web.dicomweb import NATIVE_NS, split_multipart

    root, uids = corpus
    study = uids["studies"][0]
    r = admin.get(f"/dicomweb/studies/{study}/metadata", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom+xml"')
    parts = split_multipart(r.content, r.headers["content-type"])
    js = admin.get(f"/dicomweb/studies/{study}/metadata").json()
    assert len(parts) == len(js) == 3
    files = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in (root / "in").glob("*.dcm")}
    ns = "{" + NATIVE_NS + "}"
    compared = 0
    for (headers, body), doc in zip(parts, js, strict=True):
        assert headers["content-type"] == "application/dicom+xml"
        ours = ET.fromstring(body)  # well-formed, or this raises
        assert ours.tag == f"{ns}NativeDicomModel"
        mine = {(a.get("tag"), a.get("privateCreator")): a for a in ours}
        assert set(mine) == {_xml_key(doc, t) for t in doc}  # the same attributes as the JSON
        for t, el in doc.items():
            assert mine[_xml_key(doc, t)].get("vr") == el["vr"]
            if "Value" in el and el["vr"] not in ("SQ", "PN"):
                assert [str(v) for v in _xml_values(mine[_xml_key(doc, t)], ns)] == [
                    str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in el["Value"]
                ]
        oracle = _dcmtk_native(files[doc[SOP]["Value"][0]])
        for attr in oracle:
            tag, vr = attr.get("tag"), attr.get("vr")
            if tag.startswith("0002") or vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                continue
            key = (tag, attr.get("privateCreator"))
            assert key in mine, key
            assert mine[key].get("vr") == vr, key
            # dcmtk leaves the keyword out for retired attributes (OtherPatientIDs); PS3.19 names them too
            assert attr.get("keyword") in (None, mine[key].get("keyword")), key
            a, b = _xml_values(mine[key], ns), _xml_values(attr, "")
            assert len(a) == len(b), (tag, a, b)
            for x, y in zip(a, b, strict=True):
                assert x == y if not isinstance(x, str) else _same(vr, x, y), (tag, x, y)
            compared += 1
    assert compared > 100


def test_xml_metadata_escapes_hostile_values_and_reads_back(admin: TestClient) -> None:
    """A value with markup, an entity, CDATA and a control character stays text in well-formed XML."""
    import xml.etree.ElementTree as ET

    from dicomweb_client.web import _load_xml_dataset

    from dicomlake.web.dicomweb import NATIVE_NS, to_native_xml

    doc = {
        "00081010": {"vr": "SH", "Value": [PAYLOAD]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00180060": {"vr": "DS", "Value": [120]},
        "00280010": {"vr": "US", "Value": [4]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane<&>"}]},
    }
    tree = ET.fromstring(to_native_xml(doc))
    ns = "{" + NATIVE_NS + "}"
    station = tree.find(f"{ns}DicomAttribute[@tag='00081010']/{ns}Value")
    assert station is not None and station.text == PAYLOAD.replace("\x01", "\ufffd")
    pn = tree.find(f"{ns}DicomAttribute[@tag='00100010']/{ns}PersonName/{ns}Alphabetic")
    assert pn is not None and [c.text for c in pn] == ["Doe", "Jane<&>"]
    # dicomweb-client's reader of the Native DICOM Model (it takes no person names: left out)
    for el in list(tree):
        if el.get("vr") == "PN":
            tree.remove(el)
    ds = _load_xml_dataset(tree)
    assert ds.StationName == PAYLOAD.replace("\x01", "\ufffd") and ds.KVP == 120 and ds.Rows == 4


# ---- person name case sensitivity -------------------------------------------------------------


def test_person_name_matching_is_case_sensitive_unless_fuzzy_and_the_statement_says_so(
    admin: TestClient, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """PS3.4 C.2.2.2.1: single value matching of PN is case-sensitive; fuzzymatching=true
    (PS3.18 §8.3.4.1, PS3.4 C.2.2.2.1.1) is case-insensitive here. The Conformance Statement
    (PS3.2 asks for matching behaviour) states both."""
    names = {str(d.PatientName) for d in files_read(corpus)}
    assert names == {ws.PLANTED["PatientName"]}
    studies = {str(d.StudyInstanceUID) for d in files_read(corpus)}
    exact = ws.PLANTED["PatientName"]
    lower = exact.lower()

    def found(q: str) -> set[str]:
        r = admin.get(f"/dicomweb/studies?{q}")
        assert r.status_code == 200, r.text
        return {x[STUDY]["Value"][0] for x in r.json()}

    assert found(f"PatientName={exact}") == studies
    assert found(f"PatientName={lower}") == set()
    assert found(f"PatientName={lower[:5]}*") == set()
    assert found(f"PatientName={lower}&fuzzymatching=true") == studies
    assert found(f"PatientName={lower.split('^')[1]}&fuzzymatching=true") == studies  # a given name starts
    statement = (Path(__file__).parents[1] / "docs" / "conformance.md").read_text("utf-8")
    assert "**case-sensitive**" in statement and "**case-insensitive**" in statement
    assert "`fuzzymatching=true`" in statement


def test_analyst_xml_metadata_is_the_deidentified_json(
    analyst: TestClient, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """The XML metadata of the analyst role carries what its JSON carries: pseudonyms, no identifier."""
    import xml.etree.ElementTree as ET

    from dicomlake.web.dicomweb import split_multipart

    _, uids = corpus
    forbidden = ws.forbidden_strings(uids)
    for st in analyst.get("/dicomweb/studies").json():
        url = f"/dicomweb/studies/{st[STUDY]['Value'][0]}/metadata"
        js = analyst.get(url).json()
        r = analyst.get(url, headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
        assert r.status_code == 200, r.text
        parts = split_multipart(r.content, r.headers["content-type"])
        assert len(parts) == len(js)
        text = r.content.decode("utf-8")
        assert not [f for f in forbidden if f in text]
        for (_h, body), doc in zip(parts, js, strict=True):
            tags = {a.get("tag") for a in ET.fromstring(body) if not a.get("privateCreator")}
            assert tags == {t for t in doc if not int(t[:4], 16) & 1}
