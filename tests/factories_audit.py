"""A synthetic lake with an answer key: mammography, radiography and CT dose, exam timing,
Secondary Captures, and planted errors (impossible values, wrong body parts, future dates,
clock drift, duplicates, name variants, out-of-order acquisitions, missing attributes)."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image – For Presentation
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image – For Presentation
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
RDSR_CLASS = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
PREFIX = "1.2.826.0.1.3680043.10.1001."

# X-ray sets: station, site variants written on its images, a and b of AGD = a·exp(b·t)
MG_SETS = {
    "MAMMO1": (["St Mary's Hospital", "ST MARYS HOSP"], 0.35, 0.026),
    "MAMMO2": (["St. Mary's", "St Mary's Hospital"], 0.42, 0.022),
    "MAMMO3": (["Royal Surrey County Hospital", "RSCH"], 0.30, 0.030),
    "MAMMO4": (["ROYAL SURREY COUNTY HOSP", "Royal Surrey County Hospital"], 0.38, 0.024),
}
SITE_OF = {"MAMMO1": "St Mary's", "MAMMO2": "St Mary's", "MAMMO3": "Royal Surrey", "MAMMO4": "Royal Surrey"}
OPERATORS = ["SMITH^JANE", "Smith^Jane", "JONES^AMY", "PATEL^RIYA", "BROWN^LUCY"]
OPERATOR_KEY = {"SMITH^JANE": "SMITH^JANE", "Smith^Jane": "SMITH^JANE", "JONES^AMY": "JONES^AMY",
                "PATEL^RIYA": "PATEL^RIYA", "BROWN^LUCY": "BROWN^LUCY"}  # fmt: skip
VIEWS = [("R", "CC", "R-10242", "cranio-caudal"), ("L", "CC", "R-10242", "cranio-caudal"),
         ("R", "MLO", "R-10226", "medio-lateral oblique"), ("L", "MLO", "R-10226", "medio-lateral oblique")]  # fmt: skip
DRIFT_ROOM = "DXR2"
DRIFT_MINUTES = 45
RECEIPT_LAG_MINUTES = 2


@dataclass
class AnswerKey:
    """What the synthetic lake holds, computed while writing it (never read back)."""

    mg: list[dict] = field(default_factory=list)  # one per counted exposure
    dx: list[dict] = field(default_factory=list)
    ct_events: list[dict] = field(default_factory=list)
    ct_studies: list[dict] = field(default_factory=list)
    exams: dict[tuple[str, str], list[dt.datetime]] = field(default_factory=dict)  # (study, room) → times
    planted: set[tuple[str, str]] = field(default_factory=set)  # (SOPInstanceUID, rule)
    sc: list[dict] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    receipt: dict[str, dt.datetime] = field(default_factory=dict)  # uid → received_at
    drift_uids: set[str] = field(default_factory=set)
    bpe_judged: int = 0  # instances with a Body Part Examined
    bpe_wrong: set[str] = field(default_factory=set)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _base(modality: str, sop_class: str, patient: dict, study: dict, series_uid: str, series_no: int,
          instance_no: int, uid: str | None = None) -> Dataset:  # fmt: skip
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid or generate_uid(PREFIX)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth"].strftime("%Y%m%d")
    ds.PatientSex = patient["sex"]
    ds.StudyInstanceUID = study["uid"]
    ds.StudyDate = study["start"].strftime("%Y%m%d")
    ds.StudyTime = study["start"].strftime("%H%M%S")
    ds.AccessionNumber = study["accession"]
    ds.ReferringPhysicianName = "GP^REFERRER"
    ds.StudyID = study["accession"][-4:]
    ds.StudyDescription = study["description"]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_no
    ds.InstanceNumber = instance_no
    ds.Modality = modality
    ds.Manufacturer = study.get("manufacturer", "ACME")
    ds.ManufacturerModelName = study.get("model", "Model 1")
    ds.StationName = study["room"]
    ds.DeviceSerialNumber = study["room"] + "-SN"
    ds.InstitutionName = study["institution"]
    return ds


def _pixels(ds: Dataset, seed: int) -> None:
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes((seed + i) % 251 for i in range(128))


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - (1 if (on.month, on.day) < (birth.month, birth.day) else 0)
    return f"{years:03d}Y"


def _write(ds: Dataset, folder: Path, key: AnswerKey) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    key.uids.append(ds.SOPInstanceUID)
    return path


def _num(code: str, meaning: str, value: float, unit: str, unit_meaning: str) -> Dataset:
    it = Dataset()
    it.RelationshipType, it.ValueType = "CONTAINS", "NUM"
    it.ConceptNameCodeSequence = Sequence([_code(code, "DCM", meaning)])
    mv = Dataset()
    mv.NumericValue = f"{value:.4f}"[:16]
    mv.MeasurementUnitsCodeSequence = Sequence([_code(unit, "UCUM", unit_meaning)])
    it.MeasuredValueSequence = Sequence([mv])
    return it


def _container(code: str, meaning: str, items: list[Dataset]) -> Dataset:
    c = Dataset()
    c.RelationshipType, c.ValueType, c.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    c.ConceptNameCodeSequence = Sequence([_code(code, "DCM", meaning)])
    c.ContentSequence = Sequence(items)
    return c


def ct_rdsr(patient: dict, study: dict, events: list[dict]) -> Dataset:
    """A minimal CT Radiation Dose SR (TID 10011): one CT Acquisition (TID 10013) per event and
    the CT Accumulated Dose Data (TID 10012)."""
    ds = _base("SR", RDSR_CLASS, patient, study, generate_uid(PREFIX), 999, 1)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("113701", "DCM", "X-Ray Radiation Dose Report")])
    tpl = Dataset()
    tpl.MappingResource, tpl.TemplateIdentifier = "DCMR", "10011"
    ds.ContentTemplateSequence = Sequence([tpl])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentDate = study["start"].strftime("%Y%m%d")
    ds.ContentTime = study["start"].strftime("%H%M%S")
    proc = Dataset()
    proc.RelationshipType, proc.ValueType = "HAS CONCEPT MOD", "CODE"
    proc.ConceptNameCodeSequence = Sequence([_code("121058", "DCM", "Procedure reported")])
    proc.ConceptCodeSequence = Sequence([_code("P5-08000", "SRT", "Computed Tomography X-Ray")])
    items = [proc]
    total = sum(e["dlp"] for e in events)
    items.append(_container("113811", "CT Accumulated Dose Data", [
        _num("113812", "Total Number of Irradiation Events", len(events), "{events}", "events"),
        _num("113813", "CT Dose Length Product Total", total, "mGy.cm", "mGy.cm"),
    ]))  # fmt: skip
    for e in events:
        prot = Dataset()
        prot.RelationshipType, prot.ValueType = "CONTAINS", "TEXT"
        prot.ConceptNameCodeSequence = Sequence([_code("125203", "DCM", "Acquisition Protocol")])
        prot.TextValue = e["protocol"]
        typ = Dataset()
        typ.RelationshipType, typ.ValueType = "CONTAINS", "CODE"
        typ.ConceptNameCodeSequence = Sequence([_code("113820", "DCM", "CT Acquisition Type")])
        typ.ConceptCodeSequence = Sequence([_code("P5-08001", "SRT", "Spiral Acquisition")])
        ev_uid = Dataset()
        ev_uid.RelationshipType, ev_uid.ValueType = "CONTAINS", "UIDREF"
        ev_uid.ConceptNameCodeSequence = Sequence([_code("113769", "DCM", "Irradiation Event UID")])
        ev_uid.UID = e["event_uid"]
        dose = _container("113829", "CT Dose", [
            _num("113830", "Mean CTDIvol", e["ctdivol"], "mGy", "mGy"),
            _num("113838", "DLP", e["dlp"], "mGy.cm", "mGy.cm"),
        ])  # fmt: skip
        items.append(_container("113819", "CT Acquisition", [prot, typ, ev_uid, dose]))
    ds.ContentSequence = Sequence(items)
    return ds


def build(folder: Path, seed: int = 20240601) -> AnswerKey:
    """Write the synthetic corpus into ``folder``; the answer key."""
    rnd = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    key = AnswerKey()
    pn = 0

    def patient(age_years: int, on: dt.date, sex: str = "F") -> dict:
        nonlocal pn
        pn += 1
        birth = dt.date(on.year - age_years, 1 + rnd.randrange(12), 1 + rnd.randrange(28))
        if (birth.month, birth.day) > (on.month, on.day):
            birth = birth.replace(year=birth.year - 1)
        return {"id": f"P{pn:05d}", "name": f"PATIENT^{pn:05d}", "birth": birth, "sex": sex}

    days = [dt.date(2024, 3, 4) + dt.timedelta(days=d) for d in (0, 1, 2, 3, 7, 8)]  # Mon–Thu, Mon–Tue
    # ---- mammography -------------------------------------------------------------------------
    plants = {(0, 3): "force", (1, 4): "thickness", (2, 5): "organdose", (3, 6): "kvp", (0, 5): "chest",
              (1, 6): "order", (2, 7): "laterality", (0, 8): "duplicate", (1, 8): "age"}  # fmt: skip
    for s_idx, (room, (inst_variants, a, b)) in enumerate(MG_SETS.items()):
        t = None
        for n in range(10):
            day = days[n // 4 if n < 8 else 4 + (n - 8)]
            if t is None or t.date() != day:
                t = dt.datetime.combine(day, dt.time(8, 30)) + dt.timedelta(minutes=7 * s_idx)
            p = patient(rnd.randrange(50, 71), day)
            study = {"uid": generate_uid(PREFIX), "start": t, "accession": f"MG{s_idx}{n:04d}", "room": room,
                     "description": "MAMMO SCREENING", "institution": inst_variants[n % len(inst_variants)],
                     "manufacturer": "HOLOGIC", "model": "Selenia Dimensions"}  # fmt: skip
            series = generate_uid(PREFIX)
            op = OPERATORS[(s_idx + n) % len(OPERATORS)]
            plant = plants.get((s_idx, n))
            times = []
            thickness_base = rnd.uniform(35, 80)
            force = rnd.uniform(70, 140)
            for v_idx, (lat, view, vcode, vmeaning) in enumerate(VIEWS):
                acq = t + dt.timedelta(seconds=40 + 75 * v_idx + rnd.randrange(20))
                thick = round(thickness_base + (6 if view == "MLO" else 0) + rnd.uniform(-3, 3), 1)
                agd = round(a * math.exp(b * thick) * math.exp(rnd.gauss(0, 0.08)), 4)
                f_n = round(force + rnd.uniform(-15, 15), 1)
                kvp = 26 + round(thick / 12)
                ds = _base("MG", MG_CLASS, p, study, series, 1, v_idx + 1)
                ds.SeriesDescription = f"{lat} {view}"
                ds.ProtocolName = f"{lat}{view}"
                ds.BodyPartExamined = "BREAST"
                ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
                ds.PresentationIntentType = "FOR PRESENTATION"
                ds.ImageLaterality = lat
                ds.ViewPosition = view
                ds.ViewCodeSequence = Sequence([_code(vcode, "SRT", vmeaning)])
                ds.OperatorsName = op
                ds.PatientAge = _age(p["birth"], day)
                ds.KVP = kvp
                ds.AnodeTargetMaterial, ds.FilterMaterial = "TUNGSTEN", "RHODIUM"
                ds.BodyPartThickness = thick
                ds.CompressionForce = f_n
                ds.OrganDose = round(agd / 100.0, 6)  # dGy
                ds.AcquisitionDate = acq.strftime("%Y%m%d")
                ds.AcquisitionTime = acq.strftime("%H%M%S")
                ds.ContentDate, ds.ContentTime = ds.AcquisitionDate, ds.AcquisitionTime
                _pixels(ds, pn * 4 + v_idx)
                uid = ds.SOPInstanceUID
                rule = None
                if plant == "force" and v_idx == 0:
                    ds.CompressionForce = f_n = 900.0
                    rule = "mg-compression-force"
                elif plant == "thickness" and v_idx == 1:
                    ds.BodyPartThickness = thick = 4.0
                    rule = "mg-breast-thickness"
                elif plant == "organdose" and v_idx == 2:
                    ds.OrganDose = 0.9  # 90 mGy
                    agd = 90.0
                    rule = "mg-organ-dose"
                elif plant == "kvp" and v_idx == 3:
                    ds.KVP = kvp = 80
                    rule = "mg-kvp"
                elif plant == "chest" and v_idx == 0:
                    ds.BodyPartExamined = "CHEST"
                    rule = "bpe-modality"
                    key.bpe_wrong.add(uid)
                elif plant == "laterality" and v_idx == 2:
                    del ds.ImageLaterality
                    rule = "type1-mammography-image"
                elif plant == "age" and v_idx == 0:
                    with warnings.catch_warnings():  # the point: "54" is not an AS value
                        warnings.simplefilter("ignore")
                        ds.PatientAge = str(int(ds.PatientAge[:3]))
                    rule = "age-format"
                if plant == "order" and v_idx == 3:
                    acq = times[-1] - dt.timedelta(seconds=30)  # acquired before instance 3
                    ds.AcquisitionTime = acq.strftime("%H%M%S")
                    ds.ContentTime = ds.AcquisitionTime
                    rule = "acquisition-order"
                if rule:
                    key.planted.add((uid, rule))
                times.append(acq)
                key.bpe_judged += 1
                key.receipt[uid] = acq + dt.timedelta(minutes=RECEIPT_LAG_MINUTES)
                _write(ds, folder, key)
                key.mg.append({"uid": uid, "study": study["uid"], "set": room, "site": SITE_OF[room], "view": view,
                               "laterality": ds.get("ImageLaterality"), "agd": agd, "thickness": thick,
                               "force": f_n, "kvp": kvp, "operator": OPERATOR_KEY[op]})  # fmt: skip
                if plant == "duplicate" and v_idx == 1:
                    copy = Dataset()
                    copy.update(ds)
                    copy.SOPInstanceUID = generate_uid(PREFIX)
                    _write(copy, folder, key)
                    key.planted.add((copy.SOPInstanceUID, "duplicate"))
                    key.receipt[copy.SOPInstanceUID] = acq + dt.timedelta(minutes=RECEIPT_LAG_MINUTES + 30)
                    key.bpe_judged += 1
            key.exams[(study["uid"], room)] = [min(times), max(times)]
            t = max(times) + dt.timedelta(minutes=rnd.randrange(6, 16))
    # ---- radiography --------------------------------------------------------------------------
    for r_idx, room in enumerate(("DXR1", DRIFT_ROOM)):
        for n in range(12):
            day = days[n // 3]
            true_t = dt.datetime.combine(day, dt.time(9 + (n % 3) * 2, 5 * r_idx + rnd.randrange(0, 30)))
            written_t = true_t + dt.timedelta(minutes=DRIFT_MINUTES if room == DRIFT_ROOM else 0)
            p = patient(rnd.randrange(20, 90), day, rnd.choice("MF"))
            chest = n % 3 != 2
            study = {"uid": generate_uid(PREFIX), "start": written_t, "accession": f"DX{r_idx}{n:04d}", "room": room,
                     "description": "XR CHEST" if chest else "XR KNEE", "institution": "St Mary's Hospital"}  # fmt: skip
            series = generate_uid(PREFIX)
            times = []
            for k in range(2):
                acq = written_t + dt.timedelta(minutes=2 * k, seconds=rnd.randrange(30))
                ds = _base("DX", DX_CLASS, p, study, series, 1, k + 1)
                ds.SeriesDescription = (
                    ("PA CHEST" if k == 0 else "LAT CHEST") if chest else ("AP KNEE" if k == 0 else "LAT KNEE")
                )
                ds.ProtocolName = "CHEST" if chest else "KNEE"
                ds.BodyPartExamined = "CHEST" if chest else "KNEE"
                ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
                ds.PresentationIntentType = "FOR PRESENTATION"
                ds.PatientAge = _age(p["birth"], day)
                ds.KVP = 110 if chest else 65
                dap = round(rnd.uniform(0.5, 2.0) * (1.0 if chest else 0.4) * (1.3 if room == DRIFT_ROOM else 1.0), 4)
                ds.ImageAndFluoroscopyAreaDoseProduct = dap  # dGy·cm²
                ds.OperatorsName = OPERATORS[n % len(OPERATORS)]
                ds.AcquisitionDate = acq.strftime("%Y%m%d")
                ds.AcquisitionTime = acq.strftime("%H%M%S")
                ds.ContentDate, ds.ContentTime = ds.AcquisitionDate, ds.AcquisitionTime
                _pixels(ds, 1000 + pn * 2 + k)
                uid = ds.SOPInstanceUID
                if r_idx == 0 and n == 1 and k == 0:
                    ds.BodyPartExamined = "SKULL"
                    key.planted.add((uid, "bpe-description"))
                    key.bpe_wrong.add(uid)
                if r_idx == 0 and n == 4 and k == 0:
                    ds.BodyPartExamined = "THORAX"
                    key.planted.add((uid, "bpe-not-defined-term"))
                    key.bpe_wrong.add(uid)
                if r_idx == 0 and n == 5 and k == 1:
                    ds.StudyDate = "20990101"
                    del ds.PatientAge  # else it would disagree with the (future) study date too
                    key.planted.add((uid, "date-in-future"))
                    if (dt.date(2099, 1, 1) - p["birth"]).days / 365.25 > 120:
                        key.planted.add((uid, "age-range"))  # the age computed from that date
                if r_idx == 0 and n == 7 and k == 0:
                    ds.ImageAndFluoroscopyAreaDoseProduct = dap = 99999.0
                    key.planted.add((uid, "dx-dap-header"))
                if r_idx == 0 and n == 8 and k == 0:
                    del ds.PatientSex
                    key.planted.add((uid, "type2-patient"))
                if r_idx == 0 and n == 10 and k == 0:
                    ds.PatientBirthDate = "20300101"
                    del ds.PatientAge
                    key.planted.add((uid, "date-in-future"))
                    key.planted.add((uid, "study-before-birth"))
                if room == DRIFT_ROOM:
                    key.planted.add((uid, "clock-drift"))
                    key.drift_uids.add(uid)
                key.bpe_judged += 1
                # the receipt time is the true time: a drifting clock writes acquisitions ahead of it
                key.receipt[uid] = (
                    acq
                    - dt.timedelta(minutes=DRIFT_MINUTES if room == DRIFT_ROOM else 0)
                    + dt.timedelta(minutes=RECEIPT_LAG_MINUTES)
                )
                times.append(acq)
                _write(ds, folder, key)
                key.dx.append(
                    {
                        "uid": uid,
                        "study": study["uid"],
                        "room": room,
                        "protocol": ds.ProtocolName,
                        "dap_cGycm2": dap * 10.0,
                    }
                )  # 1 dGy·cm² = 10 cGy·cm²
            key.exams[(study["uid"], room)] = [min(times), max(times)]
    # ---- CT dose reports ---------------------------------------------------------------------
    for c_idx, room in enumerate(("CT1", "CT2")):
        for n in range(6):
            day = days[n % 4]
            t = dt.datetime.combine(day, dt.time(10 + n, 15))
            p = patient(rnd.randrange(30, 85), day, rnd.choice("MF"))
            head = n % 2 == 0
            study = {"uid": generate_uid(PREFIX), "start": t, "accession": f"CT{c_idx}{n:04d}", "room": room,
                     "description": "CT HEAD" if head else "CT CHEST", "institution": "Royal Surrey County Hospital",
                     "manufacturer": "ACME CT", "model": "Scanner 64"}  # fmt: skip
            events = [{"protocol": "Topogram", "ctdivol": round(rnd.uniform(0.1, 0.3), 3), "dlp": round(rnd.uniform(3, 8), 2),
                       "event_uid": generate_uid(PREFIX)}]  # fmt: skip
            main = {
                "protocol": "Head" if head else "Chest",
                "event_uid": generate_uid(PREFIX),
                "ctdivol": round((rnd.uniform(40, 60) if head else rnd.uniform(5, 12)) * (1 + 0.2 * c_idx), 2),
            }
            main["dlp"] = round(main["ctdivol"] * rnd.uniform(14, 35), 2)
            events.append(main)
            ds = ct_rdsr(p, study, events)
            ds.PatientAge = _age(p["birth"], day)
            if c_idx == 1 and n == 5:
                events[1]["ctdivol"] = 900.0
                ds = ct_rdsr(p, study, events)
                ds.PatientAge = _age(p["birth"], day)
                key.planted.add((ds.SOPInstanceUID, "rdsr-ctdivol"))
            key.receipt[ds.SOPInstanceUID] = t + dt.timedelta(minutes=RECEIPT_LAG_MINUTES)
            _write(ds, folder, key)
            for e in events:
                key.ct_events.append({"study": study["uid"], "scanner": room, **e})
            key.ct_studies.append({"study": study["uid"], "scanner": room, "description": study["description"],
                                   "dlp_total": sum(e["dlp"] for e in events)})  # fmt: skip
    # ---- Secondary Captures ------------------------------------------------------------------
    sc_specs = [("WSD", "Dose Report", "054Y", "Dose Report Screenshot"), ("DV", "Wound photo", None, "Clinical Photo"),
                ("SD", "Consent form", "030Y", "Scanned Document")]  # fmt: skip
    for k, (conv, desc, age, category) in enumerate(sc_specs):
        day = days[k]
        p = patient(54 if age == "054Y" else 41 if age is None else 30, day)
        study = {"uid": generate_uid(PREFIX), "start": dt.datetime.combine(day, dt.time(15, 0)), "accession": f"SC{k:05d}",
                 "room": "WORKSTATION", "description": desc, "institution": "St Mary's Hospital"}  # fmt: skip
        ds = _base("OT", SC_CLASS, p, study, generate_uid(PREFIX), 100, 1)
        ds.ConversionType = conv
        ds.SeriesDescription = desc
        ds.BurnedInAnnotation = "YES" if k == 0 else "NO"
        if age:
            ds.PatientAge = age
        _pixels(ds, 5000 + k)
        ds.Rows, ds.Columns = 8, 8
        key.receipt[ds.SOPInstanceUID] = study["start"] + dt.timedelta(minutes=5)
        path = _write(ds, folder, key)
        born = p["birth"]
        years = day.year - born.year - (1 if (day.month, day.day) < (born.month, born.day) else 0)
        key.sc.append({"uid": ds.SOPInstanceUID, "Gender": "Female", "Age": age or f"{years:03d}Y",
                       "Description": category, "Size_bytes": os.path.getsize(path), "Matrix": "8 × 8",
                       "ConversionType": conv})  # fmt: skip
    return key


def simulate_receipt(con: object, key: AnswerKey, source: str = "dimse") -> None:
    """Make the lake look as if a listener had received each instance at its answer-key time."""
    import pyarrow as pa

    rec = pa.table({"u": list(key.receipt), "t": pa.array(list(key.receipt.values()), pa.timestamp("us"))})  # noqa: F841
    con.execute(
        "UPDATE instances SET received_at = rec.t, source = ? FROM rec WHERE instances.SOPInstanceUID = rec.u",  # type: ignore[attr-defined]
        [source],
    )


# Name variants as found in real PACS, with the true groups (institution names).
NAME_VARIANTS: list[list[str]] = [
    [
        "St Mary's",
        "ST MARYS HOSP",
        "St. Mary's Hospital",
        "Saint Marys Hospital",
        "ST MARY'S HOSPITAL NHS TRUST",
        "St Marys",
    ],
    [
        "Royal Surrey County Hospital",
        "RSCH",
        "ROYAL SURREY COUNTY HOSP",
        "Royal Surrey Cty Hospital",
        "Royal Surrey County Hospital NHS Foundation Trust",
    ],
    ["Royal Berkshire Hospital", "ROYAL BERKSHIRE HOSP", "RBH"],
    ["St Thomas' Hospital", "ST THOMAS HOSPITAL", "St. Thomas Hosp"],
    ["Frimley Park Hospital", "FRIMLEY PARK", "Frimley Pk Hosp"],
    ["Jarvis Breast Screening Centre", "JARVIS BREAST SCREENING", "Jarvis Centre"],
    ["Addenbrooke's Hospital", "ADDENBROOKES", "Addenbrookes Hosp"],
    ["University College Hospital", "UCH", "Univ College Hosp"],
    ["St George's Hospital", "ST GEORGES", "St. George's Hosp"],
    ["Queen Alexandra Hospital", "QUEEN ALEXANDRA HOSP", "QAH"],
]
