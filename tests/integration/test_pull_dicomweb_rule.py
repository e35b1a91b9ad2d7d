"""One rule for an instance, whether it comes by C-STORE or by `pull --dicomweb`.

Three files: a plain one, one without SOP Class UID (Orthanc stores it and its WADO-RS
metadata then has no (0008,0016)), one whose SOP Instance UID is not a UID (a leading
zero). C-STORE to our listener (pynetdicom sends each file as it is) and a DICOMweb pull
from Orthanc must accept and refuse the same ones. Oracles: the statuses pynetdicom
reports, Orthanc's REST API, the lake read with duckdb.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netpeers import DICOMLAKE, REPO
from tests.integration.orthanc import Orthanc, require_orthanc

pytestmark = [pytest.mark.integration]

ROOT = "1.2.826.0.1.3680043.10.1428.21"
FILES = {  # name → (SOP Instance UID, with a SOP Class UID in the data set)
    "plain": (f"{ROOT}.1.1.1", True),
    "no-class": (f"{ROOT}.2.1.1", False),
    "leading-zero": (f"{ROOT}.3.1.01", True),
}
ACCEPTED = {"plain", "no-class"}


def _file(key: str) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    uid, with_class = FILES[key]
    study = uid.rsplit(".", 2)[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    if with_class:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, study, f"{study}.1"
    ds.PatientID, ds.Modality = f"RULE-{key}", "OT"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require_orthanc(dicomweb=True)
    with Orthanc(tmp_path_factory.mktemp("orthanc-rule"), aet="PACS", dicomweb=True) as o:
        for key in FILES:
            status, body = o.request("POST", "/instances", _file(key), headers={"Content-Type": "application/dicom"})
            assert status == 200, (key, body)
        yield o


def test_c_store_accepts_and_refuses_by_the_rule(tmp_path: Path) -> None:
    from pynetdicom import AE, _config

    from dicomlake.ingest.listener import StoreSCP
    from dicomlake.ingest.settings import DimseSettings
    from dicomlake.ingest.spool import Spool

    scp = StoreSCP(
        Spool(tmp_path / "lake", fsync=False, min_free_bytes=0), DimseSettings(fsync=False, min_free_bytes=0)
    )
    scp.start("127.0.0.1", 0)
    statuses = {}
    _config.STORE_SEND_CHUNKED_DATASET = True  # each file's data set goes as it is
    try:
        ae = AE("RULE")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", scp.address[1], ae_title="DICOMLAKE")
        assert assoc.is_established
        for key in FILES:
            path = tmp_path / f"{key}.dcm"
            path.write_bytes(_file(key))
            statuses[key] = int(assoc.send_c_store(path).Status)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        scp.stop()
    assert {k for k, v in statuses.items() if v == 0x0000} == ACCEPTED
    assert statuses["leading-zero"] == 0xC210


def test_dicomweb_pull_accepts_and_refuses_by_the_same_rule(pacs: Orthanc, tmp_path: Path) -> None:
    import duckdb

    held = {pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances()}
    assert held == {uid for uid, _ in FILES.values()}  # Orthanc holds all three
    lake = tmp_path / "lake"
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    argv = [*DICOMLAKE, "pull", "--lake", str(lake), "-q", "--dicomweb", pacs.dicomweb_url]
    proc = subprocess.run(pacs.command(argv), capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one study has a refused instance
    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        got = {str(r[0]) for r in con.execute("SELECT SOPInstanceUID FROM instances").fetchall()}
    finally:
        con.close()
    assert got == {FILES[k][0] for k in ACCEPTED}
    report = json.loads(next((lake / "reports").glob("pull-*.json")).read_text())
    assert len(report["failures"]) == 1 and f"'{FILES['leading-zero'][0]}' is not a UID" in report["failures"][0]
