"""Shared pieces of the web tests: a lake with planted identifiers, users, an app and its clients."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SECRET = "test-secret-" + "x" * 40
PASSWORDS = {"ada": "admin-pass-123", "ann": "analyst-pass-123", "aud": "auditor-pass-123"}
ROLES = {"ada": "admin", "ann": "analyst", "aud": "auditor"}

CT = "1.2.840.10008.5.1.4.1.1.2"
MG = "1.2.840.10008.5.1.4.1.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
ROOT = "1.2.826.0.1.3680043.10.1428.77."

# Values that identify the patient (PS3.15 Table E.1-1 attributes the research profile removes
# or replaces). An analyst response must never contain one of them.
PLANTED = {
    "PatientName": "PLANTEDNAME^ZELDA",
    "PatientID": "PLANT-ID-4711",
    "PatientBirthDate": "19450304",
    "AccessionNumber": "ACCPLANT99",
    "OtherPatientIDs": "PLANT-OTHER-77",
    "PatientAddress": "12 Plantagenet Street, Leeds LS1 4AP",
    "ReferringPhysicianName": "PLANTDOC^HAROLD",
    "OperatorsName": "PLANTOP^OSCAR",
    "InstitutionName": "Plantation General Infirmary",
    "InstitutionAddress": "1 Infirmary Plantation Road",
    "RequestedProcedureID": "PLANTRPID5",
    "StudyID": "PLANTSTUDY1",
    "PatientTelephoneNumbers": "0113-PLANT-555",
    "PrivateValue": "PLANT-PRIVATE-SECRET",
    "MedicalRecordLocator": "PLANTMRN-31337",
}
STUDY_DATE = "20190607"


def _base(sop_class: str, study: str, series: str, sop: str, modality: str, n: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.PatientName = PLANTED["PatientName"]
    ds.PatientID = PLANTED["PatientID"]
    ds.PatientBirthDate = PLANTED["PatientBirthDate"]
    ds.PatientSex = "F"
    ds.PatientAge = "074Y"
    ds.OtherPatientIDs = PLANTED["OtherPatientIDs"]
    ds.PatientAddress = PLANTED["PatientAddress"]
    ds.PatientTelephoneNumbers = PLANTED["PatientTelephoneNumbers"]
    ds.AccessionNumber = PLANTED["AccessionNumber"]
    ds.ReferringPhysicianName = PLANTED["ReferringPhysicianName"]
    ds.OperatorsName = PLANTED["OperatorsName"]
    ds.InstitutionName = PLANTED["InstitutionName"]
    ds.InstitutionAddress = PLANTED["InstitutionAddress"]
    ds.StudyID = PLANTED["StudyID"]
    ds.StudyDate = STUDY_DATE
    ds.SeriesDate = STUDY_DATE
    ds.ContentDate = STUDY_DATE
    ds.StudyTime = "101500"
    ds.StudyDescription = f"{modality} exam of Zelda Plantedname"
    ds.SeriesNumber = 1 if modality != "SC" else 99
    ds.InstanceNumber = n
    ds.Manufacturer = "ACME"
    ds.StationName = "CT1" if modality == "CT" else "MAMMO1"
    ds.ImageComments = f"MRN {PLANTED['PatientID']}"
    ds.BurnedInAnnotation = "NO"
    item = Dataset()
    item.RequestedProcedureID = PLANTED["RequestedProcedureID"]
    item.ScheduledProcedureStepID = "SPS1"
    ds.RequestAttributesSequence = Sequence([item])
    ds.add_new(0x00190010, "LO", "PLANT_CREATOR")
    ds.add_new(0x00191010, "LO", PLANTED["PrivateValue"])
    ds.add_new(0x00191011, "DS", "42.5")
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00\x01" * 16
    return ds


def planted_files(folder: Path) -> dict[str, Any]:
    """Write the planted corpus; returns its UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    ct_study, mg_study = ROOT + "1", ROOT + "2"
    uids: dict[str, Any] = {"studies": [ct_study, mg_study], "series": [], "instances": [], "burned": None}
    n = 0
    for study, modality, sop_class, count in ((ct_study, "CT", CT, 3), (mg_study, "MG", MG, 2)):
        series = study + ".1"
        uids["series"].append(series)
        for k in range(count):
            n += 1
            sop = f"{series}.{k + 1}"
            ds = _base(sop_class, study, series, sop, modality, k + 1)
            if modality == "CT":
                ds.CTDIvol = 20.0 + 5 * k
                ds.KVP = 120
                ds.DistanceSourceToDetector = 1085.6
                ds.SliceThickness = 5.0
                ph = Dataset()
                ph.CodeValue = "113691"
                ph.CodingSchemeDesignator = "DCM"
                ph.CodeMeaning = "IEC Body Dosimetry Phantom"
                ds.CTDIPhantomTypeCodeSequence = Sequence([ph])
            else:
                ds.ViewPosition = "CC" if k == 0 else "MLO"
                ds.ImageLaterality = "L"
                ds.BodyPartThickness = 52 + k
                ds.CompressionForce = 110.0 + k
                ds.OrganDose = 0.15 + 0.01 * k
                ds.KVP = 29
                ds.BodyPartExamined = "BREAST"
            uids["instances"].append(sop)
            ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)
    # one Secondary Capture with burned-in text: never shown to an analyst
    series = mg_study + ".99"
    sop = series + ".1"
    ds = _base(SC, mg_study, series, sop, "OT", 1)
    ds.BurnedInAnnotation = "YES"
    ds.SeriesDescription = "scanned request form"
    ds.save_as(folder / "sc.dcm", enforce_file_format=True)
    uids["burned"] = sop
    uids["series"].append(series)
    return uids


def forbidden_strings(uids: dict[str, Any], view: Any = None) -> list[str]:
    """Everything an analyst must never receive: planted values, real UIDs, real dates."""
    out = list(PLANTED.values())
    out += ["PLANTEDNAME", "ZELDA", "Zelda", "Plantedname", "PLANTDOC", "PLANTOP", "Plantation"]
    out += [STUDY_DATE, "2019-06-07", PLANTED["PatientBirthDate"], "1945-03-04"]
    out += [u for u in uids["studies"] + uids["series"] + uids["instances"]]
    out.append(uids["burned"])
    if view is not None:
        out.append(view.pseudo_uid(uids["burned"]))
    return out


def make_users(lake: Path) -> None:
    from dicomlake.web.audit_log import AccessDB
    from dicomlake.web.auth import Auth
    from dicomlake.web.settings import WebSettings

    db = AccessDB(lake / "access.db")
    auth = Auth(db, WebSettings(secret=SECRET), SECRET.encode())
    for name, role in ROLES.items():
        auth.add_user(name, role, PASSWORDS[name])
    db.close()


def settings(**kw: Any) -> Any:
    from dicomlake.web.settings import WebSettings

    return WebSettings(secret=SECRET, **kw)


def bearer(app: Any, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.state.ctx.auth.issue_jwt(name)}"}


def today() -> str:
    return dt.date.today().isoformat()


def iter_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from iter_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from iter_strings(v)
    elif obj is not None:
        yield str(obj)


__all__ = ["generate_uid"]


@contextlib.contextmanager
def served(app: Any, sock: socket.socket | None = None, timeout: float = 30.0) -> Iterator[str]:
    """The app on a real uvicorn in a thread, on ``sock`` or a free port of 127.0.0.1: yields its URL."""
    import uvicorn

    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
