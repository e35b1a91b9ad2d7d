"""The UI in a real browser (headless Chromium through Playwright): log in, search, open a study,
view a dose chart, export a CSV, log out. Screenshots go to ``tests/artifacts/web-browser/``."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import web_support as ws

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).parent.parent / "artifacts" / "web-browser"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, dict[str, Any]]]:

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app

    root = tmp_path_factory.mktemp("browser")
    uids = ws.planted_files(root / "in")
    ingest_paths([root / "in"], root / "lake", workers=1)
    ws.make_users(root / "lake")
    app = create_app(root / "lake", ws.settings())
    with ws.served(app) as url:
        yield url, app, uids


def test_login_search_study_dose_chart_csv_export_logout(site: tuple[str, Any, dict[str, Any]]) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base, app, uids = site
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900}).new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(20_000)

        # 1. anonymous → login page; log in
        page.goto(f"{base}/studies")
        assert "/login" in page.url
        page.fill("#username", "ada")
        page.fill("#password", ws.PASSWORDS["ada"])
        page.screenshot(path=str(ARTIFACTS / "01-login.png"))
        page.click("#login")
        page.wait_for_url(f"{base}/studies")
        expect(page.locator("#sentence")).to_have_text("2 studies")

        # 2. search: add a filter through the form; the URL holds it, the sentence reads it back
        page.fill("#filter-key", "Modality")
        page.fill("#filter-value", "MG")
        page.click("#filter-add")
        expect(page.locator("#sentence")).to_have_text("1 MG study")
        assert "Modality=MG" in page.url
        page.fill("#filter-key", "CompressionForce")
        page.select_option("#filter-op", "gt")
        page.fill("#filter-value", "100")
        page.click("#filter-add")
        expect(page.locator("#sentence")).to_have_text("1 MG study where CompressionForce > 100 N")
        page.screenshot(path=str(ARTIFACTS / "02-search.png"), full_page=True)

        # 3. open the study
        page.click("a.study-link")
        page.wait_for_url(f"**/studies/{uids['studies'][1]}")
        expect(page.locator("section.series")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / "03-study.png"), full_page=True)

        # an instance: every element, nested and private
        page.click("a.instance-link >> nth=0")
        expect(page.locator("#elements")).to_contain_text('(0019,"PLANT_CREATOR",10)')
        expect(page.locator("#elements")).to_contain_text("RequestedProcedureID")
        page.screenshot(path=str(ARTIFACTS / "04-instance.png"), full_page=True)
        page.go_back()

        # 4. the dose chart of this study (Plotly served by us)
        page.click("#study-dashboards")
        chart = page.locator("#chart-mg-agd")
        expect(chart).to_have_attribute("data-drawn", "1")
        expect(chart.locator(".main-svg").first).to_be_visible()
        chart.screenshot(path=str(ARTIFACTS / "05-dose-chart.png"))
        page.screenshot(path=str(ARTIFACTS / "06-dashboards.png"), full_page=True)

        # 5. export the search as CSV (a background job), download it
        page.goto(f"{base}/studies?Modality=CT&_level=instance")
        expect(page.locator("#sentence")).to_have_text("3 CT instances")
        page.click("#export-csv")
        page.wait_for_url("**/exports**")
        link = page.locator("a.download").first
        expect(link).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "07-exports.png"), full_page=True)
        with page.expect_download() as dl:
            link.click()
        path = dl.value.path()
        rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
        shutil.copy(path, ARTIFACTS / "export.csv")
        assert sorted(r["SOPInstanceUID"] for r in rows) == sorted(uids["instances"][:3])

        # 6. log out: the session is gone
        page.click("#logout")
        page.wait_for_url(f"{base}/login")
        page.screenshot(path=str(ARTIFACTS / "08-logged-out.png"))
        page.goto(f"{base}/studies")
        assert "/login" in page.url
        browser.close()
    assert not errors, errors
    events = app.state.ctx.db.events(where={"user": "ada"}, limit=500)[0]
    kinds = {e["event"] for e in events}
    assert {"User Authentication", "Query", "DICOM Instances Accessed", "Export"} <= kinds
    print(f"\nbrowser: {len(list(ARTIFACTS.glob('*.png')))} screenshots in {ARTIFACTS}")
