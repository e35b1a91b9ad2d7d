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
