"""Per-pulse kVp and tube current are kept as lists beside their mean (issue #18).

The GE Pristina RDSR records two exposures per event (a ~2 mA pre-pulse and the main
exposure at ~30 mA): the mean (16 mA) describes neither, so the lake keeps every value.
Oracle: dcmtk's ``dsr2xml`` reading of the SR tree.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import dicomlake
from dicomlake.ingest.pipeline import ingest_paths
from dicomlake.samples import repo_corpus
from tests.support import IN_CI


def _pristina() -> Path:
    corpus = repo_corpus()
    path = corpus / "openrem" / "MG-RDSR-GEPristina-2D.dcm" if corpus else None
    if path is None or not path.exists():
        if IN_CI:
            pytest.fail("tests/data/corpus/openrem/MG-RDSR-GEPristina-2D.dcm is missing")
        pytest.skip("the OpenREM sample files are not here")
    return path


def _concept(el: ET.Element) -> str | None:
    c = el.find("concept/value")
    return c.text if c is not None else None


def _events_by_dsr2xml(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """{Irradiation Event UID: (KVP values, X-Ray Tube Current values in mA)} from dsr2xml."""
    if shutil.which("dsr2xml") is None:
        if IN_CI:
            pytest.fail("dsr2xml (dcmtk) is missing")
        pytest.skip("dsr2xml (dcmtk) is not installed")
    xml = subprocess.run(["dsr2xml", str(path)], capture_output=True, check=True).stdout
    root = ET.fromstring(xml)
    out: dict[str, tuple[list[float], list[float]]] = {}
    for container in root.iter("container"):
        if _concept(container) != "113706":  # Irradiation Event X-Ray Data
            continue
        uid = next(c.findtext("value") for c in container if c.tag == "uidref" and _concept(c) == "113769")
        kvp = [float(c.findtext("value") or "nan") for c in container if c.tag == "num" and _concept(c) == "113733"]
        ma = []
        for c in container:
            if c.tag == "num" and _concept(c) == "113734":
                assert c.findtext("unit/value") == "mA"
                ma.append(float(c.findtext("value") or "nan"))
        out[uid] = (kvp, ma)
    return out


def test_pristina_per_pulse_kvp_and_ma_are_kept(tmp_path: Path) -> None:
    path = _pristina()
    want = _events_by_dsr2xml(path)
    assert want and all(len(k) == 2 and len(m) == 2 for k, m in want.values())  # two pulses per event
    ingest_paths([path], tmp_path / "lake", workers=1)
    with dicomlake.open(tmp_path / "lake", read_only=True) as lk:
        rows = lk.sql(
            "SELECT IrradiationEventUID, kvp, kvp_values, tube_current_mA, tube_current_mA_values "
            "FROM dose_events WHERE record = 'event'"
        ).rows()
    got = {r[0]: r[1:] for r in rows}
    assert set(got) == set(want)
    for uid, (kvp, ma) in want.items():
        mean_kvp, kvp_text, mean_ma, ma_text = got[uid]
        assert [float(v) for v in kvp_text.split("\\")] == kvp
        assert [float(v) for v in ma_text.split("\\")] == ma
        assert mean_kvp == pytest.approx(sum(kvp) / len(kvp))  # the statistic the column says it holds
        assert mean_ma == pytest.approx(sum(ma) / len(ma))
