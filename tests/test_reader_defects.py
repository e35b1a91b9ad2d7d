"""Reader defects that lost dose data (issue #18): vendor encodings read as the outside readers do.

Each defect is a synthetic file in tests/data/reader/ (made by ``tests/reader_defects.py``,
which this module checks reproduces them byte for byte). The expected values are read by
pydicom, dcmtk's ``dcmdump`` or GDCM's ``gdcmdump`` — never by dicomlake itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files

import dicomlake
from dicomlake.config import get_settings
from dicomlake.dicom.reader import parse_all, read_header
from dicomlake.errors import ExtractionError
from dicomlake.ingest.pipeline import ingest_paths
from tests import reader_defects as F
from tests.support import IN_CI

DATA = Path(__file__).parent / "data" / "reader"
CLI = [sys.executable, "-m", "dicomlake.cli.main"]


def _dcmdump(path: Path) -> str:
    if shutil.which("dcmdump") is None:
        if IN_CI:
            pytest.fail("dcmdump (dcmtk) is missing")
        pytest.skip("dcmdump (dcmtk) is not installed")
    return subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True, check=False).stdout


def _dump_value(dump: str, tag: str) -> str:
    m = re.search(rf"^\s*\({tag}\) \S\S (.*?)\s+#", dump, re.M)
    assert m, f"({tag}) not in dcmdump's output"
    return m.group(1).strip()


@pytest.mark.parametrize("name", sorted(F.FILES))
def test_committed_files_are_what_the_factory_makes(name: str) -> None:
    assert (DATA / name).read_bytes() == F.FILES[name](), f"regenerate: python -m tests.reader_defects {DATA}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("defects-src")
    for p in DATA.glob("*.dcm"):
        shutil.copy(p, src / p.name)
    shutil.copy(get_charset_files("chrH31.dcm")[0], src / "chrH31.dcm")
    out = tmp_path_factory.mktemp("defects-lake")
    ingest_paths([src], out, workers=1)
    return out


def test_no_defect_file_is_rejected(lake: Path) -> None:
    with dicomlake.open(lake, read_only=True) as lk:
        rejects = lk.sql("SELECT source_path, reason FROM rejects").to_dicts()
    assert rejects == []  # was: the UN-sequence and two-space-VR files, "truncated…" / "invalid VR"


def _elements(lake: Path, uid: str) -> dict[str, tuple[str, str | None, float | None]]:
    with dicomlake.open(lake, read_only=True) as lk:
        df = lk.sql(f"SELECT path, VR, value_text, value_num FROM elements WHERE SOPInstanceUID = '{uid}'")
    return {r[0]: (r[1], r[2], r[3]) for r in df.iter_rows()}


def _query(lake: Path, *where: str) -> set[str]:
    with dicomlake.open(lake, read_only=True) as lk:
        return set(lk.query(list(where), select=["SOPInstanceUID"])["SOPInstanceUID"].to_list())


# 1. UN of undefined length with explicit VR items -----------------------------------------


def test_un_sequence_with_explicit_vr_items_is_read_as_pydicom_reads_it(lake: Path) -> None:
    path = DATA / "un-sequence-explicit-items.dcm"
    ds = pydicom.dcmread(path)  # pydicom detects the items' real encoding
    seq = ds[0x0019, 0x1001].value
    got = _elements(lake, F.UID_UN_EXPLICIT)
    # was: rejected, "truncated: (0008,0100) SH declares 542803 bytes …"
    assert got["OrganDose"][1] == str(ds.OrganDose) == "0.0026"
    assert got["EntranceDoseInmGy"][2] == float(ds.EntranceDoseInmGy)
    prefix = '(0019,"HOLOGIC, Inc.",01)'
    for i, item in enumerate(seq):
        assert got[f"{prefix}[{i}].CodeValue"][1] == item.CodeValue
        assert got[f"{prefix}[{i}].CodeMeaning"][1] == item.CodeMeaning
    nested = seq[0][0x0019, 0x1002].value[0][0x0019, 0x1003].value
    assert got[f'{prefix}[0].(0019,1002)[0].(0019,"HOLOGIC, Inc.",03)'][1] == nested
    assert _query(lake, "OrganDose = 0.0026") == {F.UID_UN_EXPLICIT, F.UID_UN_IMPLICIT}
    # the dose the file was rejected with: AGD 0.26 mGy (Organ Dose is in dGy, PS3.3 C.8.11.7)
    with dicomlake.open(lake, read_only=True) as lk:
        agd = lk.sql(f"SELECT agd_mGy FROM dose_events WHERE SOPInstanceUID = '{F.UID_UN_EXPLICIT}'")["agd_mGy"]
    assert agd.to_list() == [pytest.approx(float(ds.OrganDose) * 100)] and agd[0] == pytest.approx(0.26)


def test_un_sequence_with_implicit_vr_items_still_reads(lake: Path) -> None:
    ds = pydicom.dcmread(DATA / "un-sequence-implicit-items.dcm")
    got = _elements(lake, F.UID_UN_IMPLICIT)
    assert got['(0019,"HOLOGIC, Inc.",01)[0].CodeMeaning'][1] == ds[0x0019, 0x1001].value[0].CodeMeaning


def _gdcmdump(path: Path) -> str:
    if shutil.which("gdcmdump") is None:
        if IN_CI:
            pytest.fail("gdcmdump (libgdcm-tools) is missing")
        pytest.skip("gdcmdump (libgdcm-tools) is not installed")
    return subprocess.run(["gdcmdump", str(path)], capture_output=True, text=True, check=True).stdout


def test_un_sequence_explicit_items_agree_with_gdcm() -> None:
    path = DATA / "un-sequence-explicit-items.dcm"
    out = _gdcmdump(path)
    header = read_header(path)[0]
    top = {t: v for t, _vr, v, _l in header.elements}
    assert re.findall(r"\(0040,0316\) DS \[(.*?)\]", out) == [top[0x00400316].decode()]
    ours = [dict((t, v) for t, _vr, v, _l in it)[0x00080100].decode() for it in top[0x00191001]]
    assert re.findall(r"\(0008,0100\) SH \[(.*?)\]", out) == ours


# 2. A VR of two spaces ---------------------------------------------------------------------


def test_two_space_vr_is_read_with_a_two_byte_length_as_dcmtk_does(lake: Path) -> None:
    path = DATA / "vr-two-spaces.dcm"
    dump = _dcmdump(path)
    raw = _dump_value(dump, "0010,0010")  # dcmdump: "?? 44\6f\65…", a 2-byte length
    name = bytes(int(h, 16) for h in raw.split("\\")).decode("ascii")
    got = _elements(lake, F.UID_SPACE_VR)
    assert got["PatientName"][1] == name == "Doe^Jane"  # the dictionary's VR (PN) read as UN would be
    assert got["PatientID"][1] == _dump_value(dump, "0010,0020").strip("[]")
    assert got["OrganDose"][1] == _dump_value(dump, "0040,0316").strip("[]")
    # GDCM agrees: "(0010,0010) UN (PN) [Doe^Jane]"
    assert re.findall(r"\(0010,0010\) UN \(PN\) \[(.*?)\]", _gdcmdump(path)) == [name]


@pytest.mark.parametrize("vr", [b"Q!", b"\x01\x02", b"ab"])
def test_other_non_standard_vrs_are_read_with_a_two_byte_length_as_dcmtk_and_gdcm_do(vr: bytes, tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.10.1137.18.9"
    body = F._head(uid) + F.el(0x0010, 0x0010, b"PN", b"A^B") + F.el(0x0010, 0x0020, b"LO", b"ID-9")
    path = tmp_path / "vr.dcm"
    path.write_bytes(F.part10(body.replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00" + vr, 1), uid))
    dump = _dcmdump(path)
    assert _dump_value(dump, "0010,0020") == "[ID-9]"  # dcmdump read on past it
    elements = {t: (v_r, v) for t, v_r, v, _l in read_header(path)[0].elements}
    want = bytes(int(h, 16) for h in _dump_value(dump, "0010,0010").split("\\"))
    assert elements[0x00100010] == ("UN", want)
    assert elements[0x00100020] == ("LO", b"ID-9")


def test_a_later_editions_vr_has_a_four_byte_length_as_dcmtk_reads_it(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.10.1137.18.10"
    body = F._head(uid) + F.el(0x0010, 0x0010, b"PN", b"A^B") + F.el(0x0010, 0x0020, b"LO", b"ID-10")
    path = tmp_path / "vr.dcm"
    path.write_bytes(F.part10(body.replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00ZZ", 1), uid))
    # dcmdump: "Non-standard VR 'ZZ' … assuming 4 byte length field", then past the end of the file
    _dcmdump(path)  # present (or skipped / failed in CI)
    dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, check=False)
    assert "assuming 4 byte length field" in dump.stderr and dump.returncode != 0
    with pytest.raises(ExtractionError, match=r"invalid VR b'ZZ' for \(0010,0010\).*4-byte length"):
        parse_all(path.read_bytes())


# 3. ISO 2022 IR 87 -------------------------------------------------------------------------


def test_iso_2022_ir_87_names_are_decoded_as_pydicom_decodes_them(lake: Path) -> None:
    for path, uid in ((DATA / "iso2022-ir87-name.dcm", F.UID_JIS), (get_charset_files("chrH31.dcm")[0], None)):
        ds = pydicom.dcmread(path)
        uid = uid or ds.SOPInstanceUID
        got = _elements(lake, uid)
        assert got["PatientName"][1] == str(ds.PatientName)
        assert "\x1b" not in (got["PatientName"][1] or "")
    assert (
        _elements(lake, F.UID_JIS)["InstitutionName"][1]
        == pydicom.dcmread(DATA / "iso2022-ir87-name.dcm").InstitutionName
    )


def test_a_wildcard_query_on_kanji_finds_the_name(lake: Path) -> None:
    out = subprocess.run(
        [*CLI, "query", "--lake", str(lake), "--where", "PatientName = *山田*",
         "--select", "SOPInstanceUID,PatientName", "--format", "json"],
        env={**os.environ, "DICOMLAKE_CONFIG": os.devnull}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    chr_h31 = pydicom.dcmread(get_charset_files("chrH31.dcm")[0])
    assert {r["SOPInstanceUID"] for r in rows} == {F.UID_JIS, chr_h31.SOPInstanceUID}
    assert {r["PatientName"] for r in rows} == {str(chr_h31.PatientName)}


# 4. explicit UN private elements -----------------------------------------------------------


def test_explicit_un_private_elements_take_the_private_dictionary_vr(lake: Path) -> None:
    ds = pydicom.dcmread(DATA / "explicit-un-private.dcm")  # pydicom: VR from its private dictionary
    got = _elements(lake, F.UID_PRIVATE_UN)
    creator = "Philips Imaging DD 001"
    for offset in (0x03, 0x05, 0x63):
        elem = ds.private_block(0x2001, creator)[offset]
        vr, text, _ = got[f'(2001,"{creator}",{offset:02X})']
        assert vr == elem.VR
        assert float(text) == float(elem.value) if vr in ("FL", "SS") else text == elem.value
    assert got[f'(2001,"{creator}",FE)'][0] == ds[0x2001, 0x10FE].VR == "UN"
    assert _query(lake, f'(2001,"{creator}",63) = NO') == {F.UID_PRIVATE_UN}


def test_the_reader_does_not_import_pydicom_for_private_vrs() -> None:
    code = (
        "import sys; from dicomlake.dicom.dictionary import private_vr;"
        "assert private_vr(0x2001, 'Philips Imaging DD 001', 0x63, 0x1063) == 'CS';"
        "assert 'pydicom' not in sys.modules, 'pydicom imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# 5. FL at single precision -----------------------------------------------------------------


def test_fl_values_are_stored_as_their_shortest_single_precision_text(lake: Path) -> None:
    import numpy as np

    ds = pydicom.dcmread(DATA / "float-single.dcm")
    got = _elements(lake, F.UID_FL)
    want = str(np.float32(ds.NominalPercentageOfCardiacPhase))  # numpy: shortest float32 text
    assert got["NominalPercentageOfCardiacPhase"][1] == want == "0.8"
    assert got["LocalizingCursorPosition"][1] == "\\".join(str(np.float32(x)) for x in ds.LocalizingCursorPosition)
    assert got["RealWorldValueSlope"][1] == repr(ds.RealWorldValueSlope)  # FD: double precision as before
    assert _query(lake, "NominalPercentageOfCardiacPhase = 0.8") == {F.UID_FL}
    assert _query(lake, "LocalizingCursorPosition = 0.1") == {F.UID_FL}


# 6. --select with tags and private keys ----------------------------------------------------


def test_select_takes_tags_and_private_keys(lake: Path) -> None:
    ds = pydicom.dcmread(DATA / "explicit-un-private.dcm")
    out = subprocess.run(
        [*CLI, "query", "--lake", str(lake), "--where", "Modality = MR",
         "--select", 'SOPInstanceUID,(0008,0060),(2001,"Philips Imaging DD 001",63)', "--format", "json"],
        env={**os.environ, "DICOMLAKE_CONFIG": os.devnull}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 1
    assert sorted(map(str, rows[0].values())) == sorted([ds.SOPInstanceUID, ds.Modality, "NO"])


# 8. ingest.max_sequence_depth --------------------------------------------------------------


def test_max_sequence_depth_is_enforced_with_a_clear_reason(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "deep.dcm").write_bytes(F.nested(6))
    ds = pydicom.dcmread(src / "deep.dcm")  # the oracle: six levels of Content Sequence
    depth, seq = 0, ds
    while "ContentSequence" in seq:
        depth, seq = depth + 1, seq.ContentSequence[0]
    assert depth == 6
    base = get_settings()
    shallow = base.model_copy(update={"ingest": base.ingest.model_copy(update={"max_sequence_depth": 4})})
    report = ingest_paths([src], tmp_path / "shallow", workers=1, settings=shallow)
    assert (report.instances, report.rejected) == (0, 1)
    with dicomlake.open(tmp_path / "shallow", read_only=True) as lk:
        reason = lk.sql("SELECT reason FROM rejects")["reason"].to_list()
    assert len(reason) == 1 and "nested deeper than 4" in reason[0] and "ingest.max_sequence_depth" in reason[0]
    report = ingest_paths([src], tmp_path / "default", workers=1)  # default 16
    assert (report.instances, report.rejected) == (1, 0)


def test_float32_text_is_numpys_shortest_round_trip_decimal() -> None:
    import random
    import struct

    import numpy as np

    from dicomlake.dicom.values import float32_text

    rng = random.Random(18)
    for _ in range(20_000):
        (x,) = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))
        ours = float32_text(x)
        if x != x:
            assert ours == "nan"
            continue
        want = np.format_float_positional(np.float32(x), unique=True) if abs(x) < 1e16 else str(np.float32(x))
        assert float(ours) == float(want), (x, ours, want)  # the same shortest decimal
        assert struct.unpack("<f", struct.pack("<f", float(ours)))[0] == x  # which reads back as the same float32
