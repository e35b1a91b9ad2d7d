"""The dashboards count each irradiation event once per study (issue 18: Siemens sends a
cumulative RDSR after each acquisition, each repeating the earlier events).

Oracle: the Irradiation Event UIDs (concept 113769, DCM) of the three reports' content
trees, read with pydicom — not the lake's own dose rows.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from tests import web_support as ws
from tests.support import OPENREM

MULTI = [OPENREM / f"CT-RDSR-Siemens-Multi-{n}.dcm" for n in (1, 2, 3)]


def _event_uids(path: Path) -> set[str]:
    """Irradiation Event UIDs in an SR content tree (pydicom walk)."""
    out: set[str] = set()

    def walk(items: object) -> None:
        for item in items or []:  # type: ignore[attr-defined]
            concept = item.get("ConceptNameCodeSequence")
            if item.get("ValueType") == "UIDREF" and concept and concept[0].CodeValue == "113769":
                out.add(str(item.UID))
            walk(item.get("ContentSequence"))

    walk(pydicom.dcmread(path).ContentSequence)
    return out


def test_ct_dose_dashboard_counts_each_event_once(tmp_path: Path) -> None:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app

    (tmp_path / "in").mkdir()
    for f in MULTI:
        shutil.copy(f, tmp_path / "in" / f.name)
    per_report = [_event_uids(f) for f in MULTI]
    distinct = set().union(*per_report)
    assert sum(len(u) for u in per_report) > len(distinct) >= 1  # the reports do repeat events
    ingest_paths([tmp_path / "in"], tmp_path / "lake", workers=1)
    ws.make_users(tmp_path / "lake")
    app = create_app(tmp_path / "lake", ws.settings())
    with TestClient(app) as c:
        r = c.get("/dashboards.csv?_chart=ct-dose", headers=ws.bearer(app, "ada"))
    assert r.status_code == 200, r.text[:500]
    rows = [row for row in csv.DictReader(io.StringIO(r.text)) if row["chart"] == "ct-dose"]
    assert len(rows) == len(distinct), rows
