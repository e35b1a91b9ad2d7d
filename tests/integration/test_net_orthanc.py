"""Pulls from a real Orthanc (own network namespace, loopback only) give what Orthanc holds.

Orthanc is loaded once with the sample corpus over its REST API. Each pull — C-FIND +
C-MOVE to our listener, C-GET, DICOMweb QIDO-RS + WADO-RS metadata, image-level C-FIND —
runs as the ``dicomlake pull`` command inside the namespace, into a fresh lake; the lake's
instances and key values must equal what Orthanc's REST API reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.orthanc import Orthanc, require_orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAKE_PORT = 11113
KEYS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "StudyDate",
    "InstanceNumber",
)
DICOMLAKE = [sys.executable, "-m", "dicomlake.cli.main"]


def _norm(key: str, v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    if key == "StudyDate":
        s = s.replace("-", "").replace(".", "")[:8]
    if key == "InstanceNumber":
        try:
            return str(int(float(s)))
        except ValueError:
            return None
    return s or None


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, sample_sources: list[Path]) -> Iterator[Orthanc]:
    require_orthanc(dicomweb=True)
    work = tmp_path_factory.mktemp("orthanc")
    with Orthanc(
        work,
        aet="PACS",
        dicomweb=True,
        modalities={"LAKE": ("DICOMLAKE", "127.0.0.1", LAKE_PORT)},
        extra_config={"LimitFindResults": 0},
    ) as o:
        for src in sample_sources:
            for dirpath, _, names in os.walk(src):
                for name in names:
                    data = (Path(dirpath) / name).read_bytes()
                    if len(data) < 132 or data[128:132] != b"DICM":
                        continue
                    o.request("POST", "/instances", data, headers={"Content-Type": "application/dicom"})
        yield o


@pytest.fixture(scope="module")
def oracle(pacs: Orthanc) -> dict[str, dict[str, str | None]]:
    """SOP Instance UID → key values, as Orthanc's REST API reports them."""
    out: dict[str, dict[str, str | None]] = {}
    for oid in pacs.instances():
        tags = pacs.instance_tags(oid)
        uid = tags.get("SOPInstanceUID")
        out[uid] = {k: _norm(k, tags.get(k)) for k in KEYS}
    assert len(out) > 100, "Orthanc accepted too few sample files"
    return out


def _run_pull(pacs: Orthanc, lake: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DICOMLAKE_CONFIG": os.devnull}
    argv = [*DICOMLAKE, "pull", "--lake", str(lake), "-q", *args] + (["-v"] if os.environ.get("PULL_V") else [])
    proc = subprocess.run(
        pacs.command(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    if os.environ.get("PULL_V"):
        Path("/tmp/exp/pull_stderr.log").write_text(proc.stderr)
    return proc


def _lake_values(lake: Path) -> dict[str, dict[str, str | None]]:
    import duckdb

    con = duckdb.connect(str(lake / "lake.duckdb"), read_only=True)
    try:
        cols = ", ".join(f'"{k}"' for k in KEYS)
        rows = con.execute(f"SELECT {cols} FROM instances").fetchall()
        dup = con.execute("SELECT count(*) - count(DISTINCT SOPInstanceUID) FROM instances").fetchone()
    finally:
        con.close()
    assert dup == (0,)
    out = {}
    for r in rows:
        vals = {}
        for k, v in zip(KEYS, r, strict=True):
            vals[k] = _norm(k, v.strftime("%Y%m%d") if hasattr(v, "strftime") else v)
        out[str(r[0])] = vals
    return out


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def _not_uid_studies(oracle: dict[str, dict[str, str | None]]) -> set[str]:
    """Studies holding an instance whose SOP Instance UID is not a UID (PS3.5 §9.1): refused on every path."""
    return {
        str(v["StudyInstanceUID"]) for u, v in oracle.items() if not (len(u) <= 64 and _UID.fullmatch(u) is not None)
    }


def _compare(
    oracle: dict[str, dict[str, str | None]], lake: dict[str, dict[str, str | None]], keys: tuple[str, ...] = KEYS
) -> None:
    assert set(lake) == set(oracle), f"missing {len(set(oracle) - set(lake))}, extra {len(set(lake) - set(oracle))}"
    diffs = [(uid, k, oracle[uid][k], lake[uid][k]) for uid in oracle for k in keys if oracle[uid][k] != lake[uid][k]]
    assert not diffs, diffs[:10]


def test_pull_c_move_gives_what_orthanc_holds(pacs: Orthanc, oracle: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = _run_pull(
        pacs, lake, "--pacs", f"PACS@127.0.0.1:{pacs.dicom_port}", "--port", str(LAKE_PORT), "--concurrency", "2"
    )
    # pydicom's bad_sequence.dcm has a SOP Instance UID that is not a UID: our listener refuses it
    # (0xC210), Orthanc answers the C-MOVE with a failure, the pull names the study
    refused = _not_uid_studies(oracle)
    assert proc.returncode == (1 if refused else 0), proc.stderr[-3000:]
    expected = {u: v for u, v in oracle.items() if v["StudyInstanceUID"] not in refused}
    _compare(expected, _lake_values(lake))
    report = json.loads(sorted((lake / "reports").glob("pull-*.json"))[-1].read_text())
    assert {f["StudyInstanceUID"] for f in report["failures"]} == refused
    assert all("our listener refused" in f["reason"] for f in report["failures"]), report["failures"]
    assert report["instances"] == len(expected)
    print(f"C-MOVE: {len(oracle)} instances in {report['studies']} studies, {report['seconds']} s")


def test_pull_c_get_gives_what_orthanc_holds(pacs: Orthanc, oracle: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = _run_pull(pacs, lake, "--pacs", f"PACS@127.0.0.1:{pacs.dicom_port}", "--get", "--concurrency", "2")
    report = json.loads(sorted((lake / "reports").glob("pull-*.json"))[-1].read_text())
    # Orthanc 1.10 cannot C-GET two of the sample studies (RLE RT Dose, a J2K CT with UN
    # elements): its store SCU asks for a presentation context of SOP class "31", which
    # its own C-FIND never reports (Orthanc log: "No presentation context for: (OT) 31").
    # Those are reported as failed with the PACS's status; everything else must match.
    refused = _not_uid_studies(oracle)  # refused by the rule C-STORE follows (0xC210)
    failed = {f["StudyInstanceUID"] for f in report["failures"]}
    others = [f for f in report["failures"] if f["StudyInstanceUID"] not in refused]
    assert refused <= failed and len(others) <= 2 and all(f["status"] == "0xC000" and f["reason"] for f in others)
    assert proc.returncode == (1 if failed else 0), proc.stderr[-3000:]
    expected = {u: v for u, v in oracle.items() if v["StudyInstanceUID"] not in failed}
    got = {u: v for u, v in _lake_values(lake).items() if v["StudyInstanceUID"] not in failed}
    _compare(expected, got)
    print(f"C-GET: {len(got)} of {len(oracle)} instances equal; studies Orthanc could not send: {sorted(failed)}")


def test_pull_dicomweb_moves_no_pixel_data(pacs: Orthanc, oracle: dict[str, Any], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = _run_pull(pacs, lake, "--dicomweb", pacs.dicomweb_url)
    report = json.loads(sorted((lake / "reports").glob("pull-*.json"))[-1].read_text())
    # Orthanc's QIDO-RS lists a series of the RT Dose sample study that its WADO-RS then
    # calls inexistent (HTTP 404): that study is reported failed with Orthanc's answer.
    # and pydicom's bad_sequence.dcm, whose SOP Instance UID is not a UID, is refused as C-STORE refuses it
    refused = _not_uid_studies(oracle)
    failed = {f.split(":")[0] for f in report["failures"]}
    others = [f for f in report["failures"] if f.split(":")[0] not in refused]
    assert all("HTTP 404" in f for f in others) and len(failed - refused) <= 1, report["failures"]
    assert all("is not a UID" in f for f in report["failures"] if f.split(":")[0] in refused)
    assert proc.returncode == (1 if failed else 0), proc.stderr[-3000:]
    lake_values = _lake_values(lake)
    expected = {u: v for u, v in oracle.items() if v["StudyInstanceUID"] not in failed}
    got = {u: v for u, v in lake_values.items() if v["StudyInstanceUID"] not in failed}
    _compare(expected, got)
    stored = int(pacs.get("/statistics")["TotalDiskSize"])
    print(
        f"DICOMweb: {report['bytes_received']:,} bytes in {report['requests']} requests for "
        f"{report['instances']} instances; pixel data bytes received {report['pixel_bytes']}; "
        f"Orthanc stores {stored:,} bytes"
    )
    assert report["pixel_bytes"] == 0
    assert report["bytes_received"] < stored


def test_pull_metadata_only_by_image_level_c_find_and_resume(
    pacs: Orthanc, oracle: dict[str, Any], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    first = _run_pull(
        pacs, lake, "--pacs", f"PACS@127.0.0.1:{pacs.dicom_port}", "--metadata-only", "-k", "ModalitiesInStudy=CT"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    # image-level C-FIND answers (no pixel data moved) equal Orthanc's values for every CT study
    values = _lake_values(lake)
    ct_studies = {v["StudyInstanceUID"] for v in values.values()}
    expected = {u: v for u, v in oracle.items() if v["StudyInstanceUID"] in ct_studies}
    assert len(expected) >= 10
    _compare(
        expected,
        values,
        ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality"),
    )
    again = _run_pull(
        pacs,
        lake,
        "--pacs",
        f"PACS@127.0.0.1:{pacs.dicom_port}",
        "--metadata-only",
        "-k",
        "ModalitiesInStudy=CT",
        "--resume",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(sorted((lake / "reports").glob("pull-*.json"), key=os.path.getmtime)[-1].read_text())
    assert report["resumed_from"] and report["instances"] == 0 and report["done"] == report["studies"] > 0
