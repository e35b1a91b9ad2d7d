"""QIDO-RS study searches of :mod:`dicomlake.query.qido` on a real PostgreSQL lake and on DuckDB:
the same answers on both engines, checked against the files themselves as pydicom reads them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomlake.query import qido
from dicomlake.query.filters import resolve_key
from tests.integration.pg import PostgresCluster, start_or_skip

pytestmark = pytest.mark.integration

FILES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm", "JPEG2000.dcm",
    "reportsi.dcm", "test-SR.dcm", "liver_1frame.dcm", "waveform_ecg.dcm", "image_dfl.dcm", "examples_overlay.dcm",
    "693_J2KI.dcm",
)  # fmt: skip
"""pydicom's test files: CT, MR (the same instance twice), NM, RT, SR, SEG, ECG, OT; 13 studies."""
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def files() -> list[Path]:
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return [root / n for n in FILES]


@pytest.fixture(scope="module")
def oracle(files: list[Path]) -> dict[str, dict[str, Any]]:
    """Per study, from pydicom: SOP Instance UIDs, series, modalities, date, patient name, SOP classes."""
    studies: dict[str, dict[str, Any]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)  # rtplan has no File Meta header
        s = studies.setdefault(
            str(ds.StudyInstanceUID),
            {"sops": set(), "series": set(), "mods": set(), "date": None, "names": set(), "classes": set()},
        )
        s["sops"].add(str(ds.SOPInstanceUID))
        s["series"].add(str(ds.SeriesInstanceUID))
        if ds.get("Modality"):
            s["mods"].add(str(ds.Modality))
        s["date"] = str(ds.get("StudyDate") or "") or None
        s["names"].add(str(ds.get("PatientName") or ""))
        s["classes"].add(str(ds.SOPClassUID))
    return studies


@pytest.fixture(scope="module")
def stores(files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.store.duckdb import DuckDBStore
    from dicomlake.store.postgres import PostgresStore

    pg: PostgresCluster = start_or_skip()
    tmp = tmp_path_factory.mktemp("qido-engines")
    try:
        url = pg.create_database("qido")
        with PostgresStore(url) as st:
            assert ingest_paths([str(f) for f in files], tmp / "quarantine", workers=1, store=st).instances == 14
        assert ingest_paths([str(f) for f in files], tmp / "lake", workers=1).instances == 14
        with PostgresStore(url, read_only=True) as p, DuckDBStore(tmp / "lake", read_only=True) as d:
            yield {"postgresql": p, "duckdb": d}
    finally:
        pg.stop()


def _match(store: Any, key: str, value: str, vr: str, *, fuzzy: bool = False) -> qido.Condition:
    return qido.match(key, resolve_key(key, store.columns), value, store.columns, vr=vr, fuzzy=fuzzy)


def _studies(store: Any, *matches: qido.Condition, restrict: qido.Restriction | None = None) -> dict[str, Any]:
    page = qido.search(store, qido.Search("study", list(matches), restrict=restrict, limit=1000))
    assert not page.cut
    return {"order": page.keys, "counts": qido.counts(store, "study", page.keys, restrict)}


def test_qido_study_searches_agree_on_postgresql_and_duckdb_and_with_the_files(
    stores: dict[str, Any], oracle: dict[str, dict[str, Any]]
) -> None:
    def want_counts(uids: set[str]) -> dict[str, dict[str, Any]]:
        return {
            u: {"k": u, "n": len(s["sops"]), "n_series": len(s["series"]), "mods": sorted(s["mods"])}
            for u, s in oracle.items()
            if u in uids
        }

    def fuzzy_hit(names: set[str]) -> bool:  # PS3.4 C.2.2.2.1.1: any name component, any case
        return any(p.lower().startswith("compressed") for n in names for p in re.split(r"[\^ =]", n))

    searches = {
        "all": ((), set(oracle), None),
        "Modality=CT": (
            (("Modality", "CT", "CS", False),),
            {u for u, s in oracle.items() if "CT" in s["mods"]},
            None,
        ),
        "StudyDate=20040101-20041231": (
            (("StudyDate", "20040101-20041231", "DA", False),),
            {u for u, s in oracle.items() if s["date"] and "20040101" <= s["date"] <= "20041231"},
            None,
        ),
        "PatientName=compressed (fuzzy)": (
            (("PatientName", "compressed", "PN", True),),
            {u for u, s in oracle.items() if fuzzy_hit(s["names"])},
            None,
        ),
        "analyst without CT images": (
            (),
            {u for u, s in oracle.items() if s["classes"] - {CT_IMAGE}},
            qido.Restriction(drop_burned_in=True, risky_classes=(CT_IMAGE,), exclude_all_risky=True),
        ),
    }
    for name, (keys, want, restrict) in searches.items():
        answers = {}
        for engine, store in stores.items():
            conds = [_match(store, k, v, vr, fuzzy=fz) for k, v, vr, fz in keys]
            answers[engine] = _studies(store, *conds, restrict=restrict)
        assert want, name  # every search finds something
        assert answers["postgresql"] == answers["duckdb"], name
        got = answers["duckdb"]
        assert set(got["order"]) == want, name
        if restrict is None:
            assert got["counts"] == want_counts(want), name
        # newest study first, studies without a date last
        dates = [oracle[u]["date"] for u in got["order"]]
        dated = [d for d in dates if d]
        assert dates[: len(dated)] == dated and dated == sorted(dated, reverse=True), name
        print(f"{name}: {len(want)} studies, equal on PostgreSQL and DuckDB and to pydicom")
    # pages cut the same order on both engines, and say they were cut
    for store in stores.values():
        whole = qido.search(store, qido.Search("study", limit=1000)).keys
        p1 = qido.search(store, qido.Search("study", limit=5))
        p2 = qido.search(store, qido.Search("study", limit=5, offset=5))
        assert p1.cut and p2.cut and p1.keys + p2.keys == whole[:10]
    # the representative instance of each study (its attributes in the answer) is the same, and its JSON
    reps = {e: qido.search(st, qido.Search("study", limit=1000)).representatives for e, st in stores.items()}
    assert reps["postgresql"] == reps["duckdb"]
    js = {e: qido.json_by_uid(st, reps[e]) for e, st in stores.items()}
    assert js["postgresql"].keys() == js["duckdb"].keys() == set(reps["duckdb"])


def test_the_web_app_over_a_postgresql_store_answers_qido_rs_as_over_duckdb(
    stores: dict[str, Any], oracle: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """``/dicomweb/studies`` through the web app: it reaches the lake only through its Store, so
    a PostgreSQL store serves the same DICOM JSON as a DuckDB one, for the admin and the analyst;
    and the same UI search and dashboards (query/dashboards.py), in the same order."""
    from fastapi.testclient import TestClient

    from dicomlake.web.app import create_app
    from tests import web_support as ws

    bodies: dict[str, dict[str, Any]] = {}
    for engine, store in stores.items():
        app = create_app(tmp_path / engine, ws.settings(access_db=tmp_path / f"{engine}-access.db"), store=store)
        with TestClient(app) as c:
            for name, role in (("ada", "admin"), ("ann", "analyst")):
                app.state.ctx.auth.add_user(name, role, ws.PASSWORDS[name])
                r = c.get("/dicomweb/studies?limit=1000&includefield=all", headers=ws.bearer(app, name))
                assert r.status_code == 200, (engine, role, r.text[:300])
                bodies.setdefault(engine, {})[role] = r.json()
            for page in ("/studies.json?_level=series&_limit=100", "/dashboards.json"):
                r = c.get(page, headers=ws.bearer(app, "ada"))
                assert r.status_code == 200, (engine, page, r.text[:300])
                bodies[engine][page] = r.json()["rows"]
    assert bodies["postgresql"] == bodies["duckdb"]
    admin = bodies["duckdb"]["admin"]
    assert {s["0020000D"]["Value"][0] for s in admin} == set(oracle)
    for s in admin:
        want = oracle[s["0020000D"]["Value"][0]]
        assert s["00201208"]["Value"] == [len(want["sops"])]
        assert s.get("00080061", {}).get("Value", []) == sorted(want["mods"])
    assert len(bodies["duckdb"]["analyst"]) > 0
    per_modality: dict[str, int] = {}
    for s in oracle.values():
        for m in s["mods"]:  # each study here has one modality
            per_modality[m] = per_modality.get(m, 0) + len(s["sops"])
    chart = {r["x"]: r["y"] for r in bodies["duckdb"]["/dashboards.json"] if r["chart"] == "modality"}
    assert chart == per_modality
