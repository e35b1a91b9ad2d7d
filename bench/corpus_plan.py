"""Benchmark corpus, part 2: who, where and what — the plan of studies, series and instances.

Sites with spelling variants of their names, stations with their templates and dose
objects, CT/MR/US/MG protocols, synthetic patients who come back, and per-exposure
technique and dose values, all drawn from one seeded random stream.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from bench.corpus_templates import FAMILIES, Instance, decimal_string, derived_uid

START_DATE = dt.date(2015, 1, 1)
END_DATE = dt.date(2024, 12, 31)
MAX_STUDY_INSTANCES = 300
"""Largest study; smaller corpora cap studies at n/20 instances so they hold many studies."""

# ---------------------------------------------------------------------------------------------
# Who, where, what: sites, stations, protocols, people
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """An institution; ``names`` are the spellings its devices send, most common first."""

    code: str
    names: tuple[str, ...]
    department: str
    upper_names: bool
    """Its RIS sends patient names in upper case."""


@dataclass(frozen=True)
class Station:
    """A device: its kind of studies, templates of its images and of its dose object."""

    site: str
    kind: str
    names: tuple[str, ...]
    images: tuple[str, ...]
    dose: str | None
    weight: float
    serial: str
    operator_style: str = "pn"
    """How OperatorsName is written: ``pn`` (Family^Given), ``upper`` or ``login``."""
    model: tuple[str, str] | None = None
    """(Manufacturer, ManufacturerModelName) for all its objects, where templates differ."""


# fmt: off
GE_SENO_DS = ("GE MEDICAL SYSTEMS", "Senograph DS ADS_43.10.1")
SITES = {
    s.code: s
    for s in [
        Site("RIE", ("ROYAL INFIRMARY", "Royal Infirmary", "Royal Infirmary NHS Trust",
                     "ROYAL INFIRMARY OF EDINBURGH"), "RADIOLOGY", True),
        Site("SMH", ("St Mary's Hospital", "ST MARYS HOSPITAL", "St. Mary's Hosp.",
                     "ST MARY'S HOSPITAL"), "Imaging", False),
        Site("NBS", ("North Breast Screening Service", "NORTH BREAST SCREENING", "NBSS",
                     "North Breast Screening Svc"), "Breast Screening", False),
        Site("WIC", ("Westside Imaging Centre", "WESTSIDE IMAGING CENTRE",
                     "Westside Imaging Center"), "", True),
    ]
}

STATIONS = [
    Station("RIE", "CT", ("RIECT1", "RIE_CT1"), ("ct_cq500",), "sr_ct_siemens", 0.07, "CT71234",
            model=("SIEMENS", "SOMATOM Confidence")),
    Station("RIE", "CT", ("RIECT2",), ("ct_ge",), "sr_ct_ge", 0.05, "GE4471CT", "upper",
            model=("GE MEDICAL SYSTEMS", "LightSpeed RT16")),
    Station("RIE", "MR", ("RIEMR1", "RIE-MR1"), ("mr_siemens",), None, 0.05, "MR41266"),
    Station("RIE", "US", ("RIEUS1",), ("us_siemens",), "sr_text", 0.07, "S2K-3318"),
    Station("RIE", "MG", ("RIEMAMMO1", "RIE MAMMO 1"), ("mg_ge_pres",), "sr_mg_ge", 0.08, "87654",
            "login", model=GE_SENO_DS),
    Station("SMH", "CT", ("SMHCT01", "SMH-CT01"), ("ct_cq500",), "ct_sc_philips", 0.05,
            "PH16P-2210", model=("Philips", "Brilliance 16P")),
    Station("SMH", "MR", ("SMHMR01",), ("mr_philips",), None, 0.03, "T5-0091"),
    Station("SMH", "US", ("SMHUS01", "smhus01"), ("us_philips", "us_philips_epiq"), None, 0.07,
            "EPIQ-5521", "login"),
    Station("SMH", "MG", ("SMHMG1",), ("mg_ge_pres2",), "sr_mg_ge", 0.07, "88120", model=GE_SENO_DS),
    Station("NBS", "MG", ("NBSMG01", "NBS_MG01"), ("mg_ge_proc", "mg_ge_pres"), "sr_mg_ge", 0.10,
            "87001", "upper", model=GE_SENO_DS),
    Station("NBS", "MG", ("NBSMG02",), ("mg_ge_scaled",), "sr_mg_ge", 0.08, "87002", model=GE_SENO_DS),
    Station("NBS", "MGSR", ("NBSVAN1", "NBS-VAN1"), (), "sr_mg_hologic", 0.04, "SDM-7716"),
    Station("WIC", "CT", ("WICCT1",), ("ct_cq500",), "sr_ct_toshiba", 0.04, "TSX-101",
            model=("TOSHIBA", "Aquilion")),
    Station("WIC", "MR", ("WICMR1",), ("mr_toshiba",), None, 0.03, "MRT50-07"),
    Station("WIC", "US", ("WICUS1",), ("us_ge", "us_aloka"), "sr_text", 0.06, "L700-22", "upper"),
    Station("WIC", "OT", ("WICSCAN1",), ("sc_cookie", "sc_rgb"), None, 0.05, "SCAN-01"),
]

# (StudyDescription, BodyPartExamined, kVp choices, median CTDIvol mGy,
#  [(SeriesDescription, min, max instances, slice thickness mm)])
CT_PROTOCOLS = [
    ("CT HEAD", "HEAD", (120,), 52.0, [("Head 5mm", 28, 36, 5.0), ("Head 0.625mm", 150, 240, 0.625)]),
    ("CT CHEST", "CHEST", (100, 120), 8.0, [("Chest 5mm", 50, 70, 5.0), ("Lung 1mm", 180, 260, 1.0)]),
    ("CT ABDOMEN PELVIS", "ABDOMEN", (100, 120), 12.0,
     [("Abdo 5mm Portal", 80, 100, 5.0), ("Coronal 3mm", 50, 70, 3.0), ("Sagittal 3mm", 40, 60, 3.0)]),
    ("CT CHEST ABDOMEN PELVIS", "CHEST", (120,), 14.0, [("CAP 5mm", 110, 140, 5.0),
                                                      ("Coronal 3mm", 60, 80, 3.0)]),
    ("CTPA", "CHEST", (80, 100), 6.5, [("CTPA 1mm", 180, 240, 1.0), ("MIP 10mm", 25, 35, 10.0)]),
    ("CT KUB", "ABDOMEN", (120,), 4.0, [("KUB 3mm", 90, 130, 3.0)]),
]
# (StudyDescription, BodyPartExamined, [(SeriesDescription, min, max, slice thickness mm)])
MR_PROTOCOLS = [
    ("MR BRAIN", "HEAD", [("T1 SAG", 20, 26, 5.0), ("T2 AX", 24, 30, 5.0), ("FLAIR AX", 24, 30, 5.0),
                          ("DWI", 48, 75, 5.0), ("SWI", 60, 100, 2.0)]),
    ("MR LUMBAR SPINE", "LSPINE", [("T2 SAG", 13, 17, 4.0), ("T1 SAG", 13, 17, 4.0),
                                   ("T2 AX", 24, 40, 4.0)]),
    ("MR KNEE", "KNEE", [("PD FS COR", 24, 30, 3.0), ("PD SAG", 26, 32, 3.0),
                         ("T1 COR", 24, 30, 3.0), ("PD FS AX", 24, 30, 3.0)]),
    ("MR PROSTATE", "PROSTATE", [("T2 AX", 24, 30, 3.0), ("T2 SAG", 20, 26, 3.0),
                                 ("DWI b1400", 24, 30, 3.0), ("ADC", 24, 30, 3.0),
                                 ("DCE", 60, 120, 3.0)]),
]
US_PROTOCOLS = [
    ("US ABDOMEN", "ABDOMEN", 8, 30, ""), ("US KIDNEYS", "KIDNEY", 4, 16, ""),
    ("US OBSTETRIC 20 WEEK", "ABDOMEN", 15, 40, "F"), ("US THYROID", "NECK", 4, 14, ""),
    ("US DOPPLER LEG VEINS", "LEG", 6, 20, ""),
]
OT_PROTOCOLS = [("SCANNED DOCUMENT", "", 1, 3), ("CLINICAL PHOTOGRAPH", "SKIN", 1, 4)]
# ViewPosition → ViewCodeSequence (SNOMED-RT codes as GE Senographe sends them, CID 4014)
MG_VIEWS = {
    "CC": ("R-10242", "cranio-caudal"), "MLO": ("R-10226", "medio-lateral oblique"),
    "ML": ("R-10224", "medio-lateral"), "XCCL": ("R-1024A", "cranio-caudal exaggerated laterally"),
}

FAMILY_NAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robertson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood",
    "Jackson", "Clarke", "Patel", "Khan", "Lewis", "James", "Phillips", "Mason", "Mitchell",
    "Rose", "Davis", "Rodríguez", "Cox", "Alexander", "Campbell", "MacDonald", "Stewart",
    "O'Brien", "Murphy", "Kelly", "Müller", "Schäfer", "García", "Núñez", "Nowak", "Kowalski",
    "Novák", "Rossi", "Ferreira", "Nguyen", "Chen", "Singh", "Ahmed", "Hussain", "Ali",
    "Okafor", "Mensah", "Van der Berg", "De la Cruz", "Fitzgerald", "Søndergaard", "Ó Briain",
)
GIVEN_F = (
    "Mary", "Margaret", "Elizabeth", "Sarah", "Helen", "Anne", "Susan", "Karen", "Linda",
    "Fiona", "Emma", "Olivia", "Sophie", "Chloe", "Amelia", "Grace", "Isla", "Aisha", "Fatima",
    "Zoë", "Chloé", "Agnieszka", "Maria", "Ana", "Priya", "Mei", "Ngozi", "Siobhán", "Ingrid",
    "Joan", "Jean", "Patricia", "Janet", "Catherine", "Alison", "Claire", "Nicola", "Lorraine",
)
GIVEN_M = (
    "John", "David", "James", "Robert", "Michael", "William", "Thomas", "Andrew", "Peter",
    "Ian", "Alan", "Stephen", "Paul", "Mark", "George", "Jack", "Oliver", "Harry", "Mohammed",
    "Omar", "Piotr", "José", "Luis", "Raj", "Wei", "Chinedu", "Seán", "Björn", "Jürgen",
    "Kenneth", "Brian", "Gordon", "Colin", "Graham", "Derek", "Francis", "Patrick", "Liam",
)
STAFF = (
    ("Reid", "Alison"), ("Grant", "Lesley"), ("Fraser", "Mhairi"), ("Ross", "Gillian"),
    ("Kerr", "Dawn"), ("Shaw", "Karen"), ("Hughes", "Megan"), ("Lowe", "Tracey"),
    ("Hart", "Daniel"), ("Boyd", "Scott"), ("Baird", "Kirsty"), ("Munro", "Eilidh"),
)
PHYSICIANS = (
    ("Anderson", "Neil"), ("Black", "Ruth"), ("Cameron", "Ewan"), ("Duncan", "Morag"),
    ("Ferguson", "Iain"), ("Gibson", "Heather"), ("Hamilton", "Craig"), ("Irvine", "Shona"),
    ("Johnston", "Alastair"), ("Kennedy", "Louise"), ("Lindsay", "Rory"), ("McKenzie", "Isobel"),
    ("Nicol", "Douglas"), ("Ogilvie", "Catriona"), ("Paterson", "Fergus"), ("Quinn", "Orla"),
)
# fmt: on


@dataclass
class Patient:
    """A synthetic patient, who may come back for later studies."""

    patient_id: str
    family: str
    given: str
    middle: str
    sex: str
    birth: dt.date
    weight: float
    height: float

    def name(self, upper: bool) -> str:
        """Patient's Name as a site's RIS would send it (PS3.5 6.2.1.2 component groups)."""
        parts = [self.family, self.given] + ([self.middle] if self.middle else [])
        text = "^".join(parts)
        return text.upper() if upper else text

    def age_at(self, day: dt.date) -> int:
        return day.year - self.birth.year - ((day.month, day.day) < (self.birth.month, self.birth.day))


def _staff_name(rng: random.Random, style: str) -> str:
    family, given = rng.choice(STAFF)
    if style == "login":
        return (given[0] + family).lower()
    if style == "upper":
        return f"{family.upper()}^{given[0]}"
    return f"{family}^{given}"


def _physician_name(rng: random.Random) -> str | None:
    r = rng.random()
    if r < 0.12:
        return None
    family, given = rng.choice(PHYSICIANS)
    if r < 0.5:
        return f"{family}^{given}^^Dr"
    if r < 0.8:
        return f"{family.upper()}^{given.upper()}"
    return f"DR {given[0]} {family.upper()}"


# ---------------------------------------------------------------------------------------------
# The plan: studies, series, instances
# ---------------------------------------------------------------------------------------------


def _da(day: dt.date | dt.datetime) -> str:
    return day.strftime("%Y%m%d")


def _tm(when: dt.datetime, fraction: bool = False) -> str:
    return when.strftime("%H%M%S") + (f".{when.microsecond // 1000:03d}" if fraction else "")


class Planner:
    """Draws studies one after the other from a seeded random stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.patients: list[Patient] = []
        self.ids: set[str] = set()
        self.station_weights = [s.weight for s in STATIONS]

    # -- people ---------------------------------------------------------------------------------
    def _age(self, kind: str, description: str) -> int:
        rng = self.rng
        if kind in ("MG", "MGSR"):
            return rng.randint(50, 70) if "SCREENING" in description or kind == "MGSR" else rng.randint(30, 88)
        if "OBSTETRIC" in description:
            return rng.randint(18, 44)
        if kind == "US" and rng.random() < 0.06:
            return rng.randint(0, 15)
        return min(99, max(16, int(rng.triangular(16, 98, 68))))

    def patient_for(self, kind: str, description: str, sex_needed: str, day: dt.date) -> Patient:
        rng = self.rng
        female_only = kind in ("MG", "MGSR") or sex_needed == "F"
        if self.patients and rng.random() < 0.3:
            for _ in range(4):
                p = rng.choice(self.patients)
                age = p.age_at(day)
                fits = (not female_only or p.sex == "F") and 0 <= age <= 99 and p.birth < day
                if fits and (kind not in ("MG", "MGSR") or 40 <= age <= 90):
                    return p
        sex = "F" if female_only else rng.choices("FMO", (0.5, 0.497, 0.003))[0]
        age = self._age(kind, description)
        birth = day - dt.timedelta(days=int(age * 365.25) + rng.randint(1, 364))
        pid = ""
        while not pid or pid in self.ids:
            pid = f"{rng.randint(10**9, 10**10 - 1)}"
        self.ids.add(pid)
        given = rng.choice(GIVEN_F if sex == "F" else GIVEN_M if sex == "M" else GIVEN_F + GIVEN_M)
        middle = rng.choice(GIVEN_F if sex == "F" else GIVEN_M) if rng.random() < 0.25 else ""
        weight = rng.gauss(70 if sex == "F" else 82, 14)
        height = rng.gauss(1.63 if sex == "F" else 1.77, 0.07)
        if age < 16:
            weight, height = 8 + age * 3.2, 0.75 + age * 0.06
        p = Patient(
            pid,
            rng.choice(FAMILY_NAMES),
            given,
            middle,
            sex,
            birth,
            round(max(weight, 3.0), 1),
            round(height, 2),
        )
        self.patients.append(p)
        return p

    def _study_start(self, kind: str) -> dt.datetime:
        rng = self.rng
        span = (END_DATE - START_DATE).days
        day = START_DATE + dt.timedelta(days=rng.randint(0, span))
        while day.weekday() >= 5 and rng.random() < 0.85 and kind != "CT":
            day = START_DATE + dt.timedelta(days=rng.randint(0, span))
        seconds = rng.randint(0, 86399) if kind == "CT" and rng.random() < 0.2 else rng.randint(8 * 3600, 18 * 3600)
        return dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=seconds)

    # -- studies --------------------------------------------------------------------------------
    def studies(self, n: int) -> Iterator[list[Instance]]:
        """Yield the instances of one study at a time until ``n`` instances are planned."""
        planned = 0
        index = 0
        # A small corpus still holds many studies: studies are capped at n/20 instances.
        cap = min(MAX_STUDY_INSTANCES, max(4, n // 20))
        while planned < n:
            station = self.rng.choices(STATIONS, self.station_weights)[0]
            study = _shorten(self._study(index, station), min(cap, n - planned))
            planned += len(study)
            index += 1
            yield study

    def _study(self, index: int, station: Station) -> list[Instance]:
        rng = self.rng
        site = SITES[station.site]
        kind = station.kind
        start = self._study_start(kind)
        series: list[tuple[str, dict[str, object], list[dict[str, object]]]] = []
        sex_needed = ""
        if kind == "CT":
            desc, body, kvps, ctdi, recon = rng.choice(CT_PROTOCOLS)
            series = self._ct_series(station, start, body, rng.choice(kvps), ctdi, recon)
        elif kind == "MR":
            desc, body, seq = rng.choice(MR_PROTOCOLS)
            series = self._mr_series(station, start, body, seq)
        elif kind in ("MG", "MGSR"):
            desc = "MAMMOGRAPHY SCREENING" if rng.random() < 0.8 else "MAMMOGRAPHY DIAGNOSTIC"
            body = "BREAST"
            series = self._mg_series(station, start, desc) if kind == "MG" else []
        elif kind == "US":
            desc, body, lo, hi, sex_needed = rng.choice(US_PROTOCOLS)
            series = self._simple_series(station, start, "US", body, desc, rng.randint(lo, hi), 8, 60)
        else:
            desc, body, lo, hi = rng.choice(OT_PROTOCOLS)
            series = self._simple_series(station, start, "OT", body, desc, rng.randint(lo, hi), 20, 90)
        end = start + dt.timedelta(minutes=2)
        for _, _, images in series:
            for v in images:
                end = max(end, v["_when"])  # type: ignore[type-var]
        if station.dose and (kind != "US" or rng.random() < 0.25):
            series.append(self._dose_series(station, end + dt.timedelta(seconds=rng.randint(30, 240))))

        patient = self.patient_for(kind, desc, sex_needed, start.date())
        upper = site.upper_names or station.operator_style == "upper"
        physician = _physician_name(rng)
        operator = _staff_name(rng, station.operator_style)
        names = site.names
        institution = rng.choices(names, (0.7, 0.15, 0.1, 0.05)[: len(names)])[0]
        station_name = station.names[0] if rng.random() < 0.85 else rng.choice(station.names)
        study_uid = derived_uid(f"{self.seed}/study/{index}")
        study_values: dict[str, object] = {
            "PatientName": patient.name(upper),
            "PatientID": patient.patient_id,
            "PatientBirthDate": _da(patient.birth),
            "PatientSex": patient.sex,
            "PatientAge": f"{patient.age_at(start.date()):03d}Y",
            "PatientWeight": decimal_string(round(patient.weight * rng.uniform(0.97, 1.03), 1)),
            "PatientSize": decimal_string(patient.height),
            "StudyDate": _da(start),
            "StudyTime": _tm(start),
            "AccessionNumber": f"{site.code}{rng.randint(10**7, 10**8 - 1)}",
            "StudyID": str(rng.randint(1, 99999)),
            "StudyDescription": desc,
            "RequestedProcedureDescription": desc,
            "PerformedProcedureStepDescription": desc,
            "PerformedProcedureStepStartDate": _da(start),
            "PerformedProcedureStepStartTime": _tm(start),
            "ReferringPhysicianName": physician,
            "InstitutionName": institution,
            "InstitutionalDepartmentName": site.department or None,
            "StationName": station_name,
            "OperatorsName": operator,
            "PerformingPhysicianName": None,
            "DeviceSerialNumber": station.serial,
            "BodyPartExamined": body or None,
            "_aet": station.names[0][:16],
        }
        if station.model:
            study_values["Manufacturer"], study_values["ManufacturerModelName"] = station.model
        factors = {f: rng.lognormvariate(0.0, 0.3 if f == "dose" else 0.15) for f in FAMILIES}
        for_uid = derived_uid(f"{self.seed}/for/{index}")
        instances: list[Instance] = []
        for s_index, (template, series_values, images) in enumerate(series, start=1):
            series_uid = derived_uid(f"{self.seed}/series/{index}/{s_index}")
            base = {**study_values, **series_values}
            for i_index, image in enumerate(images, start=1):
                values = {**base, **image}
                when = values.pop("_when")
                assert isinstance(when, dt.datetime)
                values.setdefault("InstanceNumber", str(i_index))
                values.setdefault("ContentDate", _da(when))
                values.setdefault("ContentTime", _tm(when, True))
                created = when + dt.timedelta(seconds=2)
                values.setdefault("InstanceCreationDate", _da(created))
                values.setdefault("InstanceCreationTime", _tm(created))
                instances.append(
                    Instance(
                        path=f"ST{index:05d}/SE{s_index:03d}/IM{i_index:04d}.dcm",
                        template=template,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=derived_uid(f"{self.seed}/sop/{index}/{s_index}/{i_index}"),
                        for_uid=for_uid,
                        study_start=start,
                        factors=factors,
                        values=values,
                    )
                )
        return instances

    # -- series of each kind -------------------------------------------------------------------
    def _series_values(self, number: int, desc: str, when: dt.datetime) -> dict[str, object]:
        return {
            "SeriesNumber": str(number),
            "SeriesDescription": desc,
            "ProtocolName": desc,
            "SeriesDate": _da(when),
            "SeriesTime": _tm(when),
        }

    def _ct_series(
        self,
        station: Station,
        start: dt.datetime,
        body: str,
        kvp: int,
        ctdi: float,
        recon: list[tuple[str, int, int, float]],
    ) -> list:
        rng = self.rng
        template = station.images[0]
        scan = start + dt.timedelta(seconds=rng.randint(90, 400))
        ctdivol = ctdi * rng.lognormvariate(0.0, 0.25) * (1.25 if kvp == 140 else 1.0)
        ma_base = ctdivol * rng.uniform(14, 22)
        out = []
        for number, (desc, lo, hi, thickness) in enumerate(recon, start=2):
            count = rng.randint(lo, hi)
            z0 = rng.uniform(-50, 150)
            series_time = scan + dt.timedelta(seconds=40 + 25 * number)
            images = []
            for i in range(count):
                z = z0 - i * thickness
                ma = int(ma_base * rng.uniform(0.7, 1.3))
                images.append(
                    {
                        "_when": series_time,
                        "AcquisitionDate": _da(scan),
                        "AcquisitionTime": _tm(scan + dt.timedelta(seconds=i * 0.05), True),
                        "AcquisitionNumber": "1",
                        "KVP": str(kvp),
                        "XRayTubeCurrent": str(ma),
                        "ExposureTime": "500",
                        "Exposure": str(max(1, ma // 2)),
                        "CTDIvol": round(ctdivol, 2),
                        "SliceThickness": decimal_string(thickness),
                        "ImagePositionPatient": f"-249.51\\-249.51\\{z:.2f}",
                        "SliceLocation": f"{z:.2f}",
                    }
                )
            out.append((template, self._series_values(number, desc, series_time), images))
        return out

    def _mr_series(
        self,
        station: Station,
        start: dt.datetime,
        body: str,
        sequences: list[tuple[str, int, int, float]],
    ) -> list:
        rng = self.rng
        template = station.images[0]
        when = start + dt.timedelta(seconds=rng.randint(120, 420))
        out = []
        for number, (desc, lo, hi, thickness) in enumerate(sequences, start=1):
            count = rng.randint(lo, hi)
            duration = rng.uniform(120, 360)
            z0 = rng.uniform(-60, 60)
            images = []
            for i in range(count):
                z = z0 + i * thickness * 1.1
                images.append(
                    {
                        "_when": when + dt.timedelta(seconds=duration),
                        "AcquisitionDate": _da(when),
                        "AcquisitionTime": _tm(when + dt.timedelta(seconds=duration * i / count), True),
                        "AcquisitionNumber": "1",
                        "SliceThickness": decimal_string(thickness),
                        "ImagePositionPatient": f"-120.0\\-118.5\\{z:.2f}",
                        "SliceLocation": f"{z:.2f}",
                    }
                )
            out.append((template, self._series_values(number, desc, when), images))
            when += dt.timedelta(seconds=duration + rng.uniform(20, 90))
        return out

    def _mg_series(self, station: Station, start: dt.datetime, desc: str) -> list:
        rng = self.rng
        if desc.endswith("SCREENING"):
            views = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
            if rng.random() < 0.08:  # a repeated exposure
                views.append(rng.choice(views))
        else:
            side = rng.choice("RL")
            views = [(side, v) for v in rng.sample(["CC", "MLO", "ML", "XCCL"], rng.randint(2, 4))]
        thickness_cc = {s: min(95.0, max(18.0, rng.gauss(55, 13))) for s in "RL"}
        force_bias = rng.gauss(0, 20)
        when = start + dt.timedelta(seconds=rng.randint(60, 240))
        images = []
        for side, view in views:
            when += dt.timedelta(seconds=max(25.0, rng.gauss(70, 20)))
            t = thickness_cc[side] + (max(0.0, rng.gauss(5, 3)) if view in ("MLO", "ML") else 0.0)
            t = round(t)
            force = min(200.0, max(35.0, rng.gauss(110, 25) + force_bias))
            kvp = min(35, 26 + round((t - 20) / 11))
            mgd = 0.45 * math.exp(0.022 * t) * rng.lognormvariate(0.0, 0.1)  # mGy
            mas = (20 + 1.3 * t) * rng.lognormvariate(0.0, 0.15)
            ma = rng.randint(70, 110)
            code, meaning = MG_VIEWS[view]
            images.append(
                {
                    "_when": when,
                    "AcquisitionDate": _da(when),
                    "AcquisitionTime": _tm(when),
                    "AcquisitionDateTime": _da(when) + _tm(when, True),
                    "ImageLaterality": side,
                    "Laterality": None,
                    "ViewPosition": view,
                    "CodeValue": code,
                    "CodeMeaning": meaning,
                    "PatientOrientation": "A\\R" if side == "L" else "P\\L",
                    "KVP": str(kvp),
                    "BodyPartThickness": str(t),
                    "CompressionForce": decimal_string(round(force, 1)),
                    "OrganDose": decimal_string(round(mgd / 10, 5)),  # PS3.3 C.8.7.6: Organ Dose is in dGy
                    "EntranceDoseInmGy": decimal_string(round(mgd * (2.0 + 0.06 * t), 3)),
                    "XRayTubeCurrent": str(ma),
                    "Exposure": str(round(mas)),
                    "ExposureTime": str(round(mas / ma * 1000)),
                    "ExposureInuAs": str(round(mas * 1000)),
                }
            )
        out = []
        for number, template in enumerate(station.images, start=1):
            label = "For Processing" if template.endswith("proc") else "For Presentation"
            out.append((template, self._series_values(number, f"{desc.title()} {label}", start), images))
        return out

    def _simple_series(
        self,
        station: Station,
        start: dt.datetime,
        modality: str,
        body: str,
        desc: str,
        count: int,
        gap_lo: int,
        gap_hi: int,
    ) -> list:
        rng = self.rng
        template = rng.choice(station.images)
        when = start + dt.timedelta(seconds=rng.randint(30, 120))
        images = []
        for _ in range(count):
            when += dt.timedelta(seconds=rng.randint(gap_lo, gap_hi))
            images.append({"_when": when, "AcquisitionDate": _da(when), "AcquisitionTime": _tm(when)})
        return [(template, self._series_values(1, desc, start), images)]

    def _dose_series(self, station: Station, when: dt.datetime) -> tuple:
        assert station.dose
        is_sr = station.dose.startswith("sr_")
        desc = ("Report" if station.dose == "sr_text" else "Radiation Dose Report") if is_sr else "Dose Info"
        values = self._series_values(999 if is_sr else 998, desc, when)
        return (station.dose, values, [{"_when": when}])


def _shorten(study: list[Instance], limit: int) -> list[Instance]:
    """Cut a study to ``limit`` instances, keeping its dose object (the last series)."""
    if len(study) <= limit:
        return study
    last = study[-1]
    if limit > 1 and last.values.get("SeriesNumber") in ("998", "999"):
        return [*study[: limit - 1], last]
    return study[:limit]
