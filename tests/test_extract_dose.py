"""dose_events against dcmtk's dsr2xml, hand-read anchors per vendor, and every sample file.

The main test reads every Radiation Dose SR of tests/data/corpus/openrem twice: with
:func:`dicomlake.extract.dose.dose_events` (pydicom) and with ``tests/oracles/dsr.py``
(dcmtk ``dsr2xml`` + xml.etree, its own unit reader), and requires the same number of
irradiation events and the same values (relative tolerance 1e-6 after unit conversion).
The anchor tests pin values read by hand with ``dcmdump``; the dcmdump line is quoted.
"""

from __future__ import annotations

import functools
import math
import tomllib
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.sr._concepts_dict import concepts as PS3_16_CONCEPTS
from pydicom.uid import ExplicitVRLittleEndian

from dicomlake.extract import dose as dose_module
from dicomlake.extract.dose import dose_events, dose_events_from_image
from dicomlake.lakeschema import DOSE_EVENT_COLUMNS
from tests.oracles import dsr as oracle
from tests.support import IN_CI, OPENREM

CORPUS = OPENREM

# Files of the corpus that are Radiation Dose SRs (by their root concept, per dsrdump) and
# how many of them hold irradiation events: all but the Siemens ARCADIS summary report.
EXPECTED_DOSE_SRS = 29
EXPECTED_SRS_WITH_EVENTS = 28


def _corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("*.dcm"))
    if not files:
        message = f"the corpus is missing: no *.dcm in {CORPUS}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return files


def _read(path: Path | str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vendor files carry invalid values on purpose
        return pydicom.dcmread(path, force=True, stop_before_pixels=True)


@functools.cache
def _extracted(path: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """``(dose_events, dose_events_from_image)`` of one file, read once per test session."""
    ds = _read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dose_events(ds), dose_events_from_image(ds)


def _rows(path: Path | str) -> list[dict[str, object]]:
    return _extracted(str(path))[0]


def _header_rows(path: Path | str) -> list[dict[str, object]]:
    return _extracted(str(path))[1]


def _is_sr(path: Path) -> bool:
    """SR Storage SOP Classes are 1.2.840.10008.5.1.4.1.1.88.* (PS3.4 Table B.5-1)."""
    meta = read_file_meta_info(path)
    return str(meta.get("MediaStorageSOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.88.")


def _events(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in rows if r["record"] == "event"]


def _accumulated(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in rows if r["record"] == "accumulated"]


def _require_dsr2xml() -> str:
    exe = oracle.find_dsr2xml()
    if exe is None:
        message = "dcmtk's dsr2xml is not installed (Debian package dcmtk; make install)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return exe


# --- the outside oracle ----------------------------------------------------------------------
# concept code value → (column, column unit in UCUM, how several values combine)
ORACLE_EVENT_FIELDS: dict[str, tuple[str, str, str]] = {
    "113830": ("CTDIvol_mGy", "mGy", "one"),
    "113838": ("DLP_mGycm", "mGy.cm", "one"),
    "122130": ("dap_Gym2", "Gy.m2", "one"),
    "113738": ("dose_rp_Gy", "Gy", "one"),
    "111631": ("agd_mGy", "mGy", "one"),
    "111633": ("compressed_breast_thickness_mm", "mm", "one"),
    "111636": ("entrance_exposure_mGy", "mGy", "one"),
    "113733": ("kvp", "kV", "mean"),
    "113734": ("tube_current_mA", "mA", "mean"),
    "113824": ("exposure_time_ms", "ms", "sum"),
    "113735": ("exposure_time_ms", "ms", "sum"),
    "113736": ("exposure_mAs", "mA.s", "sum"),
    "113507": ("administered_activity_MBq", "MBq", "one"),
}
ORACLE_ACCUMULATED_FIELDS: dict[str, tuple[str, str]] = {
    "113813": ("ct_dose_length_product_total_mGycm", "mGy.cm"),
    "113722": ("dap_total_Gym2", "Gy.m2"),
    "113725": ("dose_rp_total_Gy", "Gy"),
    "113726": ("fluoro_dap_total_Gym2", "Gy.m2"),
    "113727": ("acquisition_dap_total_Gym2", "Gy.m2"),
    "113730": ("total_fluoro_time_s", "s"),
    "C-204": ("dap_total_Gym2", "Gy.m2"),  # Siemens ARCADIS Radiation Summary Report
    "C-202": ("total_fluoro_time_s", "s"),
}
# Values that dsr2xml cannot give in full when it reports truncated multi-valued numbers.
PER_PULSE_COLUMNS = {"kvp", "tube_current_mA", "exposure_mAs"}


def _oracle_event_values(box: oracle.Container) -> dict[str, float]:
    grouped: dict[str, list[float]] = {}
    how: dict[str, str] = {}
    for num in box.nums:
        if num.scheme != "DCM" or num.code not in ORACLE_EVENT_FIELDS:
            continue
        column, unit, combine = ORACLE_EVENT_FIELDS[num.code]
        grouped.setdefault(column, []).append(oracle.to_unit(num.value, num.unit, unit))
        how[column] = combine
    out = {}
    for column, values in grouped.items():
        if how[column] == "mean":
            out[column] = math.fsum(values) / len(values)
        elif how[column] == "sum":
            out[column] = math.fsum(values)
        else:
            out[column] = values[0]
    return out


def _oracle_laterality(meaning: str | None) -> str | None:
    text = (meaning or "").lower()
    return "L" if text.startswith("left") else "R" if text.startswith("right") else None


def test_every_corpus_dose_sr_agrees_with_dsr2xml() -> None:
    """Per file: event count, event UIDs and every dose value equal what dcmtk reads."""
    exe = _require_dsr2xml()
    files = [p for p in _corpus_files() if _is_sr(p)]
    pool = ThreadPoolExecutor(max_workers=2)  # dsr2xml runs while pydicom reads
    futures = {path: pool.submit(oracle.read, path, exe) for path in files}
    checked_files = events_checked = values_compared = values_present = skipped = 0
    problems: list[str] = []
    for path in files:
        rows = _rows(path)
        report = futures[path].result()
        if report.root not in ("113701", "113500", "C-10"):
            assert rows == [], f"{path.name}: not a dose SR (root {report.root}) but gave rows"
            continue
        checked_files += 1
        events = _events(rows)
        assert len(events) == len(report.events), (
            f"{path.name}: {len(events)} event rows, dsr2xml finds {len(report.events)} irradiation event containers"
        )
        for index, (row, box) in enumerate(zip(events, report.events, strict=True)):
            events_checked += 1
            assert row["IrradiationEventUID"] == box.uid, f"{path.name} event {index}: UID"
            expected = _oracle_event_values(box)
            for column in {c for c, _, _ in ORACLE_EVENT_FIELDS.values()}:
                if report.truncated and column in PER_PULSE_COLUMNS:
                    skipped += 1
                    continue
                want, got = expected.get(column), row[column]
                values_compared += 1
                values_present += want is not None
                if not oracle.close(got, want):  # type: ignore[arg-type]
                    problems.append(f"{path.name} event {index} {column}: {got} != dsr2xml {want}")
        _compare_accumulated(path.name, _accumulated(rows), report, problems)
        accumulated_values = sum(
            1 for box in report.accumulated for n in box.nums
            if n.code in ORACLE_ACCUMULATED_FIELDS or n.code == "111637"
        )  # fmt: skip
        values_compared += accumulated_values
        values_present += accumulated_values
    pool.shutdown()
    print(
        f"\ndsr2xml oracle: {checked_files} dose SR files checked, {events_checked} events "
        f"checked, {values_compared} values compared ({values_present} present in the SR, "
        f"the rest absent on both sides), {skipped} per-pulse values not "
        f"comparable (dsr2xml keeps only the first of a multi-valued NumericValue)"
    )
    assert not problems, "\n".join(problems)
    assert checked_files == EXPECTED_DOSE_SRS


def _compare_accumulated(
    name: str, rows: list[dict[str, object]], report: oracle.DsrReport, problems: list[str]
) -> None:
    agd_rows = {r["laterality"]: r["agd_total_mGy"] for r in rows if r["agd_total_mGy"] is not None}
    total_rows = [r for r in rows if r["agd_total_mGy"] is None]
    oracle_agd: dict[str | None, float] = {}
    containers_with_totals = []
    for box in report.accumulated:
        for num in box.values("111637"):
            oracle_agd[_oracle_laterality(num.laterality)] = oracle.to_unit(num.value, num.unit, "mGy")
        if any(n.code != "111637" for n in box.nums) or not box.values("111637"):
            containers_with_totals.append(box)
    if set(agd_rows) != set(oracle_agd):
        problems.append(f"{name}: AGD totals per breast {agd_rows} != dsr2xml {oracle_agd}")
    for laterality, want in oracle_agd.items():
        if not oracle.close(agd_rows.get(laterality), want):  # type: ignore[arg-type]
            problems.append(f"{name}: accumulated AGD {laterality} {agd_rows} != {want}")
    if len(total_rows) != len(containers_with_totals):
        problems.append(f"{name}: {len(total_rows)} accumulated rows, dsr2xml has "
                        f"{len(containers_with_totals)} accumulated containers")  # fmt: skip
        return
    columns = {column: unit for column, unit in ORACLE_ACCUMULATED_FIELDS.values()}
    for row, box in zip(total_rows, containers_with_totals, strict=True):
        for column, unit in columns.items():
            found = [
                n for code, (c, _) in ORACLE_ACCUMULATED_FIELDS.items() if c == column
                for n in box.values(code)
            ]  # fmt: skip
            want = oracle.to_unit(found[0].value, found[0].unit, unit) if found else None
            if not oracle.close(row[column], want):  # type: ignore[arg-type]
                problems.append(f"{name} accumulated {column}: {row[column]} != dsr2xml {want}")


def test_oracle_reads_units_like_ucum() -> None:
    assert oracle.to_unit(126.596, "dGy.cm2", "Gy.m2") == pytest.approx(0.00126596)
    assert oracle.to_unit(0.2359, "Gy.cm^2", "Gy.m2") == pytest.approx(2.359e-5)
    assert oracle.to_unit(3.2, "s", "ms") == pytest.approx(3200)
    with pytest.raises(ValueError):
        oracle.to_unit(1.0, "mGy", "mm")


# --- corpus coverage ---------------------------------------------------------------------------
def test_corpus_dose_srs_give_rows_and_other_files_give_none() -> None:
    with_rows = with_events = 0
    for path in _corpus_files():
        rows = _rows(path)
        if not _is_sr(path) or path.name == "ESR_non-dose.dcm":
            assert rows == [], f"{path.name} is not a dose SR but gave {len(rows)} rows"
            continue
        assert rows, f"{path.name}: a dose SR gave no rows"
        with_rows += 1
        with_events += bool(_events(rows))
    assert with_rows >= EXPECTED_DOSE_SRS
    assert with_events >= EXPECTED_SRS_WITH_EVENTS


HEADER_ROWS = {  # image files of the corpus whose headers carry dose → rows expected
    "CT-SC-Philips_Brilliance16P.dcm": 5,  # 4 Exposure Dose Sequence items + DLP total
    "DX-Im-Carestream_DR7500-1.dcm": 1, "DX-Im-Carestream_DR7500-2.dcm": 1,
    "DX-Im-Carestream_DRX.dcm": 1, "DX-Im-DRGEM.dcm": 1, "DX-Im-Date-Missing.dcm": 1,
    "DX-Im-GE_XR220-1.dcm": 1, "DX-Im-GE_XR220-2.dcm": 1, "DX-Im-GE_XR220-3.dcm": 1,
    "MG-Im-GE-SenDS-scaled.dcm": 1, "MG-Im-GE_Seno_1_ForPresentation.dcm": 1,
    "MG-Im-GE_Seno_1_ForProcessing.dcm": 1, "MG-Im-GE_Seno_2_ForPresentation.dcm": 1,
    "NM-NmIm-Siemens-s1-1.dcm": 1, "NM-NmIm-Siemens-s1-2.dcm": 1, "NM-NmIm-Siemens.dcm": 1,
    "NM-PetIm-GE.dcm": 1, "NM-PetIm-Siemens-2.dcm": 1, "NM-PetIm-Siemens-3-sameseries.dcm": 1,
    "NM-PetIm-Siemens-3.dcm": 1, "NM-PetIm-Siemens.dcm": 1, "PX-Im-NewTom_Go.dcm": 1,
}  # fmt: skip


def test_image_headers_give_rows_exactly_where_they_hold_dose() -> None:
    got = {p.name: len(rows) for p in _corpus_files() if (rows := _header_rows(p))}
    assert got == HEADER_ROWS


# --- anchors read by hand with dcmdump -------------------------------------------------------
def _row(name: str, index: int = 0, record: str = "event") -> dict[str, object]:
    rows = [r for r in _rows(CORPUS / name) if r["record"] == record]
    return rows[index]


def test_siemens_ct_anchor() -> None:
    row = _row("CT-RDSR-Siemens-Multi-1.dcm")
    # Mean CTDIvol: (0040,a730).(0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [0.15]
    # DLP:          (0040,a730).(0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [7.46]
    assert row["CTDIvol_mGy"] == pytest.approx(0.15)
    assert row["DLP_mGycm"] == pytest.approx(7.46)
    # Exposure Time (s): ...(0040,a300).(0040,a30a) DS [5.28], unit (0008,0100) SH [s]
    assert row["exposure_time_ms"] == pytest.approx(5280)
    assert row["phantom"] == "32"  # (0008,0100) SH [113691] IEC Body Dosimetry Phantom
    assert row["kvp"] == pytest.approx(120) and row["tube_current_mA"] == pytest.approx(34)
    total = _row("CT-RDSR-Siemens-Multi-1.dcm", record="accumulated")
    # CT Dose Length Product Total: (0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [7.46]
    assert total["ct_dose_length_product_total_mGycm"] == pytest.approx(7.46)
    assert total["total_number_of_events"] == 1


def test_siemens_dual_source_ct_means_over_sources() -> None:
    row = _row("CT-RDSR-Siemens_Flash-QA-DS.dcm")
    # Source A: (0040,a30a) DS [100] (KVP), DS [399] (mA); source B: DS [140], DS [308]
    assert row["number_of_xray_sources"] == 2
    assert row["kvp"] == pytest.approx(120) and row["tube_current_mA"] == pytest.approx(353.5)


def test_ge_ct_enhanced_sr_anchor() -> None:
    total = _row("CT-ESR-GE_Optima.dcm", record="accumulated")
    # (0040,a30a) DS [415.82] with unit (0008,0100) SH [mGycm] (not UCUM "mGy.cm")
    assert total["ct_dose_length_product_total_mGycm"] == pytest.approx(415.82)
    assert _row("CT-ESR-GE_Optima.dcm")["template"] == "10011"


def test_toshiba_ct_anchor_ignores_invalid_private_sd() -> None:
    row = _row("CT-RDSR-Toshiba_MultiValSD.dcm", 2)
    # Mean CTDIvol (0040,a30a) DS [3.20]; DLP (0040,a30a) DS [136.90]; the private
    # "Standard deviation of population" DS [10.50/ 15.00] is not a number and is ignored.
    assert row["CTDIvol_mGy"] == pytest.approx(3.20) and row["DLP_mGycm"] == pytest.approx(136.9)
    assert row["target_region"] is None  # Target Region without ConceptCodeSequence


def test_spectrum_dynamics_ct_anchor() -> None:
    total = _row("CT-RDSR-SpectrumDynamics.dcm", record="accumulated")
    # (0040,a30a) DS [187.339], unit SH [mGycm]; (0040,a30a) DS [5] Total Number of Events
    assert total["ct_dose_length_product_total_mGycm"] == pytest.approx(187.339)
    assert total["total_number_of_events"] == 5
    assert _row("CT-RDSR-SpectrumDynamics.dcm", 1)["CTDIvol_mGy"] == pytest.approx(10.7753)


def test_canon_rf_anchor_converts_dgycm2_and_mgy() -> None:
    row = _row("RF-RDSR-Canon-Ultimaxi-mGyDoseAtRP.dcm")
    # Dose Area Product (0040,a30a) DS [ 1.323], unit (0008,0100) SH [dGy.cm2]
    # Dose (RP)         (0040,a30a) DS [ 0.384], unit (0008,0100) SH [mGy]
    assert row["dap_Gym2"] == pytest.approx(1.323e-5, rel=1e-9)
    assert row["dose_rp_Gy"] == pytest.approx(0.384e-3, rel=1e-9)
    total = _row("RF-RDSR-Canon-Ultimaxi-mGyDoseAtRP.dcm", record="accumulated")
    # Dose Area Product Total (0040,a30a) DS [126.596] dGy.cm2; Dose (RP) Total DS [30.573] mGy
    assert total["dap_total_Gym2"] == pytest.approx(126.596e-5, rel=1e-9)
    assert total["dose_rp_total_Gy"] == pytest.approx(30.573e-3, rel=1e-9)
    assert row["modality_family"] == "RF"


def test_ge_rf_anchor_with_ucm_unit_scheme() -> None:
    row = _row("RF-RDSR-GE.dcm")
    # (0040,a30a) DS [0.00002206] Gy.m2, its units written with scheme "UCM" (sic)
    assert row["dap_Gym2"] == pytest.approx(2.206e-5) and row["dose_rp_Gy"] == pytest.approx(0.00107252)
    # (113734, DCM, "mA") is X-Ray Tube Current by code, whatever its meaning says
    assert row["tube_current_mA"] == pytest.approx(2.74306011)


def test_philips_azurion_anchor() -> None:
    row = _row("RF-RDSR-Philips_Azurion.dcm")
    # Dose Area Product (0040,a30a) DS [4.05878e-006] Gy.m2; Dose (RP) DS [0.000603992] Gy
    assert row["dap_Gym2"] == pytest.approx(4.05878e-6) and row["dose_rp_Gy"] == pytest.approx(0.000603992)
    total = _row("RF-RDSR-Philips_Azurion.dcm", record="accumulated")
    assert total["dap_total_Gym2"] == pytest.approx(0.00247409)  # DS [0.00247409]
    assert total["total_number_of_radiographic_frames"] == 9581  # DS [9581]


def test_siemens_dual_purpose_room_anchor() -> None:
    rf = _row("Dual-RDSR-RF.dcm")
    # Exposure Time coded (113735, DCM) (retired code): (0040,a30a) DS [34], unit ms
    assert rf["exposure_time_ms"] == pytest.approx(34)
    # DAP (0040,a30a) DS [0.00000020], unit (0008,0100) SH [Gym2] (not UCUM)
    assert rf["dap_Gym2"] == pytest.approx(2e-7)
    assert rf["modality_family"] == "RF"
    dx = _row("Dual-RDSR-DX.dcm")
    assert dx["modality_family"] == "DX"  # fluoro totals present but all 0


def test_canon_dx_anchor_without_dap() -> None:
    row = _row("DX-RDSR-Canon_CXDI_noDAP.dcm")
    # Dose Area Product has an empty Measured Value Sequence; KVP DS [43]; Exposure
    # DS [1199] uA.s; Exposure Time DS [11] ms
    assert row["dap_Gym2"] is None and row["dose_rp_Gy"] is None
    assert row["kvp"] == 43 and row["exposure_mAs"] == pytest.approx(1.199)
    assert row["exposure_time_ms"] == pytest.approx(11)
    assert row["modality_family"] == "DX"


def test_eurocolumbus_per_pulse_values_are_averaged() -> None:
    row = _row("RF-RDSR-Eurocolumbus.dcm")
    # KVP: (0040,a30a) DS [0\85\85\68\68\59\59\54\54\52\52\51\51\51\51\50\50\50\50\50\50\50]
    # (22 pulses, sum 1190) in items that lack RelationshipType
    assert row["kvp"] == pytest.approx(1190 / 22)
    assert row["number_of_pulses"] == 22  # DS [22]
    assert row["dose_rp_Gy"] == pytest.approx(0.000136008)  # DS [0.000136008] Gy
    assert row["laterality"] == "L"  # Target Region Knee with Laterality (G-A101, SRT)


def test_hologic_mammography_anchor() -> None:
    row = _row("MG-RDSR-Hologic_2D.dcm")
    # (0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [1.30]   Average Glandular Dose
    # (0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [43.00]  Compression Thickness
    # (0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [28.00]  KVP
    # (0040,a730).(0040,a730).(0040,a300).(0040,a30a) DS [90200.00] Exposure, unit SH [uAs]
    assert row["agd_mGy"] == pytest.approx(1.30)
    assert row["compressed_breast_thickness_mm"] == pytest.approx(43)
    assert row["kvp"] == pytest.approx(28) and row["exposure_mAs"] == pytest.approx(90.2)
    assert row["entrance_exposure_mGy"] == pytest.approx(3.65)  # DS [3.65]
    assert row["laterality"] == "L" and row["view"] == "CC"  # (R-10242, SNM3) cranio-caudal
    assert row["anode_target"] == "TUNGSTEN" and row["filter_material"] == "RHODIUM"
    totals = {r["laterality"]: r["agd_total_mGy"] for r in _accumulated(_rows(CORPUS / "MG-RDSR-Hologic_2D.dcm"))}
    # Accumulated AGD DS [1.30] with Laterality (T-04030 Left breast), DS [1.28] (T-04020)
    assert totals == {"L": pytest.approx(1.30), "R": pytest.approx(1.28)}


def test_ge_pristina_mammography_anchor() -> None:
    row = _row("MG-RDSR-GEPristina-2D.dcm")
    # Two KVP items DS [34.1], DS [33.99]; two X-Ray Tube Current items DS [2], DS [30.48]
    assert row["kvp"] == pytest.approx((34.1 + 33.99) / 2)
    assert row["tube_current_mA"] == pytest.approx((2 + 30.48) / 2)
    assert row["agd_mGy"] == pytest.approx(1.22)  # DS [1.22]
    assert row["exposure_time_ms"] == pytest.approx(609.5)  # DS [609.5]
    assert row["filter_material"] == "SILVER" and row["anode_target"] == "RHODIUM"


def test_giotto_tomosynthesis_anchor() -> None:
    row = _row("MG-RDSR-Giotto-DBT.dcm")
    # Anode Target Material coded (0008,0100) SH [113632] (not 111632) → still read
    assert row["anode_target"] == "TUNGSTEN"
    # 11 Exposure items DS [6220] ... DS [13320] uA.s, sum 139890 uA.s
    assert row["exposure_mAs"] == pytest.approx(139.89)
    assert row["agd_mGy"] == pytest.approx(2.257) and row["view"] == "CC"
    assert row["irradiation_event_type"] == "Rotational Acquisition"


def test_nm_radiopharmaceutical_anchor() -> None:
    row = _row("NM-RRDSR-Siemens.dcm")
    # Administered activity (0040,a30a) DS [394], unit MBq
    assert row["administered_activity_MBq"] == pytest.approx(394)
    assert row["radiopharmaceutical"] == "Fluorodeoxyglucose F^18^"
    assert row["radiopharmaceutical_start_datetime"] == datetime(2022, 2, 24, 10, 40, 30)
    assert row["template"] == "10021" and row["modality_family"] == "NM"


def test_siemens_arcadis_summary_report_anchor() -> None:
    row = _row("RF-ESR-Siemens-Varic.dcm", record="accumulated")
    # (C-204, 99SMS_RADSUM) (0040,a30a) DS [0.2359], unit (0008,0100) SH [Gy.cm^2]
    assert row["dap_total_Gym2"] == pytest.approx(2.359e-5)
    assert row["total_fluoro_time_s"] == pytest.approx(34.427)  # DS [34.427] s
    assert row["dose_rp_total_Gy"] is None  # Cumulative air kerma: "Measurement not attempted"


def test_mammography_image_header_anchor() -> None:
    (row,) = _header_rows(CORPUS / "MG-Im-GE-SenDS-scaled.dcm")
    # (0040,0316) DS [0.01373] OrganDose (dGy) → 1.373 mGy
    # (0040,8302) DS [5.071] EntranceDoseInmGy; (0018,11a0) DS [53] BodyPartThickness
    # (0018,11a2) DS [50] CompressionForce; (0018,1153) IS [51800] ExposureInuAs
    assert row["agd_mGy"] == pytest.approx(1.373)
    assert row["entrance_exposure_mGy"] == pytest.approx(5.071)
    assert row["compressed_breast_thickness_mm"] == 53 and row["compression_force_N"] == 50
    assert row["exposure_mAs"] == pytest.approx(51.8)
    assert (row["laterality"], row["view"], row["anode_target"]) == ("L", "CC", "RHODIUM")
    assert row["source"] == "header" and row["modality_family"] == "MG"


def test_dx_image_header_anchor() -> None:
    (row,) = _header_rows(CORPUS / "DX-Im-GE_XR220-1.dcm")
    # (0018,115e) DS [0.410000] ImageAndFluoroscopyAreaDoseProduct (dGy·cm²)
    assert row["dap_Gym2"] == pytest.approx(4.1e-6)
    assert row["exposure_mAs"] == pytest.approx(1.04)  # (0018,1153) IS [1040] ExposureInuAs


def test_philips_ct_dose_info_anchor() -> None:
    rows = _header_rows(CORPUS / "CT-SC-Philips_Brilliance16P.dcm")
    # Exposure Dose Sequence item 2: (0018,9345) FD 7.2009787191521353 CTDIvol and private
    # (00e1,1021) UN 31\39\36\2e\30\31 = "196.01" (ELSCINT1 DLP)
    assert rows[1]["CTDIvol_mGy"] == pytest.approx(7.2009787191521353)
    assert rows[1]["DLP_mGycm"] == pytest.approx(196.01)
    # top level (00e1,1021) 31\31\30\32\2e\34\34\36\30\39 = "1102.44609", the exam total
    assert rows[-1]["record"] == "accumulated"
    assert rows[-1]["ct_dose_length_product_total_mGycm"] == pytest.approx(1102.44609)


def test_nm_and_pet_header_activity_in_mbq() -> None:
    (pet,) = _header_rows(CORPUS / "NM-PetIm-Siemens.dcm")
    (nm,) = _header_rows(CORPUS / "NM-NmIm-Siemens-s1-1.dcm")
    # PET: (0018,1074) DS [394000000] in Bq; NM: (0018,1074) DS [320] in MBq
    assert pet["administered_activity_MBq"] == pytest.approx(394)
    assert nm["administered_activity_MBq"] == pytest.approx(320)


# --- robustness --------------------------------------------------------------------------------
@pytest.fixture
def raise_on_invalid_values() -> Iterator[None]:
    """pydicom in its strictest reading mode, restored afterwards."""
    saved = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.reading_validation_mode = saved


def test_no_sample_file_crashes_either_function_even_in_raise_mode(
    raise_on_invalid_values: None,
) -> None:
    """Corpus, pydicom's test files and pydicom-data: lists of complete, typed rows."""
    schema = pa.schema(list(DOSE_EVENT_COLUMNS.items()))
    files = [*_corpus_files(), *map(Path, get_testdata_files())]
    read = unreadable = rows_total = 0
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception:
            unreadable += 1
            continue
        read += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = dose_events(ds) + dose_events_from_image(ds)
        for row in rows:
            assert list(row) == list(DOSE_EVENT_COLUMNS), path.name
        if rows:
            pa.Table.from_pylist(rows, schema=schema)  # every value fits its column type
        rows_total += len(rows)
    print(f"\nrobustness: {read} files read ({unreadable} unreadable by pydicom), {rows_total} rows")
    assert read > 250 and rows_total > 600


def test_non_dose_datasets_give_no_rows() -> None:
    assert dose_events(Dataset()) == [] and dose_events_from_image(Dataset()) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = pydicom.dcmread(next(p for p in get_testdata_files("test-SR.dcm")))
    assert dose_events(sr) == [] and dose_events_from_image(sr) == []


# --- synthetic reports: behaviour the corpus does not show ----------------------------------
def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _num(code: str, value: str, unit: str, meaning: str = "") -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = Sequence([_code(code, "DCM", meaning or code)])
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = Sequence([_code(unit, "UCUM", unit)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _container(code: str, children: list[Dataset], plane: str | None = None) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType, item.ContinuityOfContent = (
        "CONTAINS",
        "CONTAINER",
        "SEPARATE",
    )
    item.ConceptNameCodeSequence = Sequence([_code(code, "DCM", code)])
    if plane:
        modifier = Dataset()
        modifier.RelationshipType, modifier.ValueType = "HAS CONCEPT MOD", "CODE"
        modifier.ConceptNameCodeSequence = Sequence([_code("113764", "DCM", "Acquisition Plane")])
        modifier.ConceptCodeSequence = Sequence([_code(*plane.split("|"))])
        children = [modifier, *children]
    item.ContentSequence = Sequence(children)
    return item


def _biplane_rdsr() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientID = "1.2.3.4", "1.2.3", "P1"
    ds.Modality, ds.ValueType = "SR", "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("113701", "DCM", "X-Ray Radiation Dose Report")])
    plane_a, plane_b = "113620|DCM|Plane A", "113621|DCM|Plane B"
    ds.ContentSequence = Sequence([
        _container("113702", [_num("113722", "12.5", "dGy.cm2"), _num("113730", "60", "s")], plane_a),
        _container("113702", [_num("113722", "0.0004", "Gy.m2")], plane_b),
        _container("113706", [_num("122130", "250", "uGy.m2"), _num("113738", "3", "furlong")], plane_a),
    ])  # fmt: skip
    return ds


def test_biplane_report_gives_one_accumulated_row_per_plane() -> None:
    rows = dose_events(_biplane_rdsr())
    totals = {r["acquisition_plane"]: r["dap_total_Gym2"] for r in _accumulated(rows)}
    assert totals == {"Plane A": pytest.approx(1.25e-4), "Plane B": pytest.approx(4e-4)}
    (event,) = _events(rows)
    assert event["dap_Gym2"] == pytest.approx(2.5e-4) and event["acquisition_plane"] == "Plane A"
    assert event["modality_family"] == "RF"  # fluoro time > 0 in plane A


def test_a_value_in_an_unknown_unit_is_left_out_not_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (event,) = _events(dose_events(_biplane_rdsr()))
    assert event["dose_rp_Gy"] is None
    assert "furlong" in caplog.text


@pytest.mark.parametrize(
    ("value", "unit", "column", "expected"),
    [
        (126.596, "dGy.cm2", "dap_Gym2", 126.596e-5),
        (0.2359, "Gy.cm^2", "dap_total_Gym2", 2.359e-5),
        (0.384, "mGy", "dose_rp_Gy", 0.384e-3),
        (90200.0, "uAs", "exposure_mAs", 90.2),
        (5.28, "s", "exposure_time_ms", 5280.0),
        (2.0, "daN", "compression_force_N", 20.0),
        (415.82, "mGycm", "DLP_mGycm", 415.82),
        (1.0, "mGy", "dap_Gym2", None),  # different quantities never convert
    ],
)
def test_unit_conversion(value: float, unit: str, column: str, expected: float | None) -> None:
    got = dose_module.convert(value, unit, column)
    assert got == (pytest.approx(expected, rel=1e-12) if expected is not None else None)


# --- the code table and the docs -----------------------------------------------------------------
def test_dose_codes_carry_the_meanings_ps3_16_gives() -> None:
    """Every DCM concept in dose_codes.toml has the meaning of pydicom's PS3.16 dictionary."""
    import importlib.resources

    table = tomllib.loads(importlib.resources.files("dicomlake.data").joinpath("dose_codes.toml").read_text())
    standard = {code: meaning for group in PS3_16_CONCEPTS["DCM"].values()
                for code, (meaning, _cids) in group.items()}  # fmt: skip
    checked = 0
    for section in ("event", "accumulated"):
        for key, entry in table[section].items():
            scheme, code = key.split(":")
            assert entry["column"] in DOSE_EVENT_COLUMNS, key
            if entry["unit"]:
                assert entry["unit"] in table["units"], (key, entry["unit"])
            if scheme != "DCM":
                continue
            assert code in standard, f"{key} is not a PS3.16 DCM code"
            assert entry["meaning"].lower() == standard[code].lower(), (key, standard[code])
            checked += 1
    for alias, target in table["aliases"].items():
        assert alias.split(":")[1] not in standard, f"{alias} is a real code, not a vendor alias"
        assert target.split(":")[1] in standard
    assert checked >= 40


def test_every_column_is_documented_with_its_unit() -> None:
    doc = dose_module.__doc__ or ""
    for name in DOSE_EVENT_COLUMNS:
        assert f"\n{name} " in doc, f"column {name} is missing from the module docstring"
    toml_path = Path(dose_module.__file__).parent.parent / "data" / "dose_codes.toml"
    units = tomllib.loads(toml_path.read_text())["units"]
    for name, unit in dose_module._COLUMN_UNIT.items():
        assert unit in units, (name, unit)
