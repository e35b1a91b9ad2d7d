"""The planted-PHI corpus: every Table E.1-1 attribute filled with a traceable identifying value.

Values go into every row of PS3.15 Table E.1-1 (concrete tags, overlay/curve groups, private
groups), inside nested sequences, inside free text (descriptions, comments, SR text) and in odd
character sets. Each planted value is recorded with where it went, so a scan of the output can
say which value leaked from which attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from dicomlake.deid.table import StandardTables, standard_tables
from tests.support import missing

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class Planted:
    """One identifying value put into the corpus."""

    value: str
    where: str
    kind: str
    """row (a Table E.1-1 attribute), sequence (a Table E.1-1 sequence; its items hold nested
    values), nested (inside a sequence item), private, safe-private,
    free-text (the patient's identifiers written inside text)."""
    row: int | None = None
    vr: str = ""


@dataclass(frozen=True)
class Patient:
    """Identifiers of one planted patient, in one character set."""

    charset: str | list[str]
    family: str
    given: str
    name: str
    patient_id: str
    birth: date
    accession: str
    phone: str
    address: str


PATIENTS = {
    "latin1": Patient(
        "ISO_IR 100",
        "Müllerhäuser",
        "Jürgenolf",
        "Müllerhäuser^Jürgenolf",
        "MRN4471902",
        date(1957, 3, 14),
        "ACC99017731",
        "+44 20 7946 0912",
        "12 Quernmore Road, London N4 4QT",
    ),
    "utf8": Patient(
        "ISO_IR 192",
        "Παπαδόπουλος",
        "Χρυσάνθη",
        "Παπαδόπουλος^Χρυσάνθη",
        "GRC7730051",
        date(1961, 11, 2),
        "ACC55120984",
        "+30 210 555 0147",
        "Odos Ermou 44, Athens 10563",
    ),
    "japanese": Patient(
        ["", "ISO 2022 IR 87"],
        "Yamadaka",
        "Tarouzo",
        "Yamadaka^Tarouzo=山田花^太郎蔵",
        "JPN0042917",
        date(1949, 7, 30),
        "ACC31187455",
        "03-5555-0199",
        "Chiyoda 1-1, Tokyo 100-0001",
    ),
}


@dataclass
class _Counter:
    seed: str
    n: int = 0
    planted: list[Planted] = field(default_factory=list)

    def token(self, width: int = 10) -> str:
        self.n += 1
        return f"PHI{self.seed}{self.n:05d}Q"[:width] if width < 10 else f"PHI{self.seed}{self.n:05d}Q"

    def value(self, vr: str) -> object:
        """A unique identifying value valid for the VR (tracked when textual)."""
        self.n += 1
        n, s = self.n, self.seed
        if vr in ("LO", "SH", "LT", "ST", "UT", "UC"):
            return f"PHI{s}{n:05d}Q"
        if vr == "PN":
            return f"PHIFAM{s}{n:05d}^PHIGIV{s}{n:05d}"
        if vr in ("CS", "AE"):
            return f"PHI{s.upper()}{n:05d}Q"
        if vr == "DA":
            return (date(1930, 1, 1) + timedelta(days=37 * n + 3)).strftime("%Y%m%d")
        if vr == "DT":
            return (date(1930, 6, 1) + timedelta(days=41 * n + 5)).strftime("%Y%m%d") + f"1010{n % 60:02d}.4{n:05d}"
        if vr == "TM":
            return f"{n % 24:02d}{(n * 7) % 60:02d}{(n * 13) % 60:02d}.7{n:05d}"
        if vr == "UI":
            return f"1.2.826.0.1.3680043.10.543.{ord(s)}.{n + 10000}"
        if vr == "DS":
            return f"7{n:05d}.3{ord(s)}"
        if vr == "IS":
            return f"8{n:06d}"
        if vr == "AS":
            return f"{n % 89 + 10:03d}Y"
        if vr == "UR":
            return f"http://phi.example.org/PHI{s}{n:05d}Q"
        if vr in ("OB", "UN", "OW"):
            return f"PHIB{s}{n:05d}Q".encode()
        if vr in ("US", "SS", "UL", "SL"):
            return 4000 + n
        if vr in ("FL", "FD"):
            return 4000.5 + n
        raise ValueError(vr)


def _text_of(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (int, float)):
        return None  # binary numbers are checked on the dataset, not in the bytes
    return str(value)


def _nested_item(c: _Counter, where: str) -> Dataset:
    """An item holding identifying values of table rows and a nested sequence below them."""
    item = Dataset()
    spec = [
        ("PersonName", "PN"),
        ("ReferencedSOPInstanceUID", "UI"),
        ("InstitutionName", "LO"),
        ("Date", "DA"),
        ("PatientComments", "LT"),
    ]
    for kw, vr in spec:
        v = c.value(vr)
        setattr(item, kw, v)
        c.planted.append(Planted(str(v), f"{where} > {kw}", "nested", None, vr))
    item.ReferencedSOPClassUID = CT_IMAGE
    inner = Dataset()
    v = c.value("UI")
    inner.ReferencedSOPClassUID = CT_IMAGE
    inner.ReferencedSOPInstanceUID = v
    c.planted.append(
        Planted(str(v), f"{where} > ReferencedImageSequence > ReferencedSOPInstanceUID", "nested", None, "UI")
    )
    item.ReferencedImageSequence = Sequence([inner])
    return item


def phi_dataset(
    variant: str = "latin1", tables: StandardTables | None = None, command_rows: bool = False
) -> tuple[Dataset, list[Planted]]:
    """A CT image dataset with a planted value in every Table E.1-1 row, and the list of them.

    Rows of the command group (0000,eeee) cannot be written to a file; they are planted only with
    ``command_rows`` (for tests that de-identify the dataset object directly).
    """
    tables = tables or standard_tables()
    p = PATIENTS[variant]
    c = _Counter(variant[0])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.SpecificCharacterSet = p.charset
    ds.SOPClassUID = CT_IMAGE
    ds.Modality = "CT"
    for row in tables.rows:
        if row.tag == "private" or "x" in row.tag:
            continue
        tag = int(row.tag, 16)
        if tag >> 16 == 0 and not command_rows:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        where = f"({row.tag[:4]},{row.tag[4:]}) {row.name}"
        if vr == "SQ":
            items = [_nested_item(c, where)]
            ds.add_new(tag, "SQ", Sequence(items))
            c.planted.append(Planted("", where, "sequence", row.index, "SQ"))
            continue
        value = c.value(vr)
        if tag >> 16 == 0x0002:
            ds.file_meta.add_new(tag, vr, value)
        else:
            ds.add_new(tag, vr, value)
        text = _text_of(value)
        c.planted.append(Planted(text if text is not None else repr(value), where, "row", row.index, vr))
    # The patient's own identifiers, in this character set.
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth.strftime("%Y%m%d")
    ds.AccessionNumber = p.accession
    ds.PatientTelephoneNumbers = p.phone
    ds.PatientAddress = p.address
    ds.SOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    name_row = tables.by_tag[0x00100010].index
    for value, where in [
        (p.family, "PatientName family"),
        (p.given, "PatientName given"),
        (p.patient_id, "PatientID"),
        (p.accession, "AccessionNumber"),
        (p.phone, "PatientTelephoneNumbers"),
        (p.address, "PatientAddress"),
        (p.birth.strftime("%Y%m%d"), "PatientBirthDate"),
    ]:
        c.planted.append(Planted(value, where, "free-text", name_row, ""))
    if "=" in p.name:
        for part in p.name.split("=")[1].split("^"):
            c.planted.append(Planted(part, "PatientName ideographic", "free-text", name_row, ""))
    # Free text that carries the patient's identifiers (Clean Descriptors must take them out).
    dob = p.birth
    story = (
        f"{p.given} {p.family} ({p.patient_id}) born {dob:%d/%m/%Y}, acc {p.accession}, "
        f"tel {p.phone}, seen {dob:%Y-%m-%d}"
    )
    ds.StudyDescription = f"CT head {p.family} {p.patient_id}"[:64]
    ds.SeriesDescription = f"Axial {p.given} {dob:%d.%m.%Y}"[:64]
    ds.ImageComments = story
    ds.AdditionalPatientHistory = story
    ds.Manufacturer = f"Scanner of {p.family}"[:64]  # not in the table: kept, text scrubbed
    ds.ConvolutionKernel = p.patient_id[:16]
    # SR-style content: text, person and date items below Content Sequence (D / Clean Structured Content).
    text_item = Dataset()
    text_item.RelationshipType = "CONTAINS"
    text_item.ValueType = "TEXT"
    text_item.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    text_item.TextValue = f"Patient {p.name.split('=')[0]} ID {p.patient_id} DOB {dob:%Y%m%d}: no change"
    pname = Dataset()
    pname.RelationshipType = "HAS OBS CONTEXT"
    pname.ValueType = "PNAME"
    pname.ConceptNameCodeSequence = Sequence([_code("121008", "DCM", "Person Observer Name")])
    pname.PersonName = p.name
    ds.ContentSequence = Sequence([text_item, pname])
    # Overlay and curve groups (rows 60xx and 50xx) in two repeating groups each.
    for group in (0x6000, 0x6002):
        v = c.value("OB")
        ds.add_new((group << 16) | 0x0010, "US", 8)
        ds.add_new((group << 16) | 0x0011, "US", 8)
        ds.add_new((group << 16) | 0x0040, "CS", "G")
        ds.add_new((group << 16) | 0x0050, "SS", [1, 1])
        ds.add_new((group << 16) | 0x0100, "US", 1)
        ds.add_new((group << 16) | 0x0102, "US", 0)
        ds.add_new((group << 16) | 0x3000, "OW", v)
        c.planted.append(
            Planted(
                v.decode(),
                f"({group:04X},3000) Overlay Data",
                "row",  # type: ignore[union-attr]
                tables.row_for((group << 16) | 0x3000).index,
                "OW",
            )
        )  # type: ignore[union-attr]
        t = f"Overlay {p.family} {c.token()}"
        ds.add_new((group << 16) | 0x4000, "LT", t)
        c.planted.append(
            Planted(
                t, f"({group:04X},4000) Overlay Comments", "row", tables.row_for((group << 16) | 0x4000).index, "LT"
            )
        )  # type: ignore[union-attr]
    for group in (0x5000, 0x5002):
        v = c.value("OB")
        ds.add_new((group << 16) | 0x3000, "OB", v)
        c.planted.append(
            Planted(
                v.decode(),
                f"({group:04X},3000) Curve Data",
                "row",  # type: ignore[union-attr]
                tables.row_for((group << 16) | 0x3000).index,
                "OB",
            )
        )  # type: ignore[union-attr]
    # Private attributes: an unknown creator (always removed), a TCIA-safe element (kept only with
    # Retain Safe Private), and a known-unsafe one (removed even then).
    private_row = tables.private_row.index
    block = ds.private_block(0x0029, "PHI HOSPITAL PRIVATE", create=True)
    t = c.token()
    block.add_new(0x01, "LO", f"{p.name.split('=')[0]} {t}")
    c.planted.append(Planted(t, "(0029,xx01) private LO", "private", private_row, "LO"))
    inner = Dataset()
    t2 = c.token()
    inner.add_new(0x00091001, "LO", t2)  # private element without its creator
    block.add_new(0x02, "SQ", Sequence([inner]))
    c.planted.append(Planted(t2, "(0029,xx02) private SQ > (0009,1001)", "private", private_row, "LO"))
    safe = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    safe.add_new(0x2B, "DS", "1234.5678")  # GEMS_ACQU_01 0x2B Xray Off Position: k in the KB
    c.planted.append(Planted("1234.5678", "(0019,xx2B) GEMS_ACQU_01 safe", "safe-private", private_row, "DS"))
    unsafe = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    t3 = c.token()
    unsafe.add_new(0x02, "SH", t3[:16])  # GEMS_IDEN_01 0x02 Suite Id: d in the KB
    c.planted.append(Planted(t3[:16], "(0009,xx02) GEMS_IDEN_01 Suite Id", "private", private_row, "SH"))
    return ds, c.planted


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


# --- outside oracles ----------------------------------------------------------------------------


def require_tool(name: str) -> str:
    """Path of a dcmtk/dicom3tools binary; a missing one fails under CI=true and skips elsewhere."""
    import os
    import shutil

    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        missing(f"{name} is required under CI (apt-get install dcmtk dicom3tools)")
    return path


def dcmdump_text(path: str) -> str:
    """dcmdump of a file with every value printed in full and converted to UTF-8."""
    import subprocess

    tool = require_tool("dcmdump")
    res = subprocess.run([tool, "+L", "+U8", "-q", path], capture_output=True, check=False)
    return res.stdout.decode("utf-8", "replace")


def dciodvfy_errors(path: str) -> set[str]:
    """dciodvfy's Error lines, with UIDs and values masked so input and output compare."""
    import re
    import subprocess

    tool = require_tool("dciodvfy")
    res = subprocess.run([tool, path], capture_output=True, check=False)
    text = (res.stdout + res.stderr).decode("utf-8", "replace")
    out = set()
    for line in text.splitlines():
        if line.startswith("Error"):
            line = re.sub(r"\d+(\.\d+)+", "<n>", line.split(" = <")[0])
            out.add(line.strip())
    return out


def encodings_of(value: str, charset: object) -> list[bytes]:
    """The byte forms a text value can take in a file of this character set."""
    from pydicom.charset import encode_string

    forms = {value.encode("utf-8")}
    try:
        forms.add(value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    charsets = charset if isinstance(charset, list) else [charset]
    try:
        forms.add(encode_string(value, [c or "ISO_IR 6" for c in charsets]))
    except (LookupError, UnicodeError, ValueError):
        pass  # not representable in this character set
    for part in value.split("="):
        if part and part != value:
            try:
                forms.add(encode_string(part, [c or "ISO_IR 6" for c in charsets]))
            except (LookupError, UnicodeError, ValueError):
                pass  # not representable in this character set
    return [f for f in forms if f]
