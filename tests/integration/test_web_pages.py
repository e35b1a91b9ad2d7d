"""Every page of the UI in headless Chromium at 1,280 px over the sample lake (the OpenREM
corpus and the planted studies): no horizontal overflow, no console error, every chart drawn
with data, Swagger UI rendered from this service. Full-page screenshots go to
``tests/artifacts/web-pages/`` (gitignored)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import web_support as ws
from tests.integration.test_web_browser import CHROMIUM, FLAGS
from tests.support import missing

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).parent.parent / "artifacts" / "web-pages"
CORPUS = Path(__file__).parents[1] / "data" / "corpus" / "openrem"
WIDTH = 1280


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:

    from dicomlake.ingest.pipeline import ingest_paths
    from dicomlake.web.app import create_app

    root = tmp_path_factory.mktemp("pages")
    ws.planted_files(root / "in")
    ingest_paths([root / "in", CORPUS], root / "lake", workers=1)
    ws.make_users(root / "lake")
    app = create_app(root / "lake", ws.settings())
    with ws.served(app) as url:
        yield url, app


def _pages(client: Any, role: str) -> list[str]:
    from dicomlake.audit import AUDITS

    pages = []
    if role in ("admin", "analyst"):
        studies = client.get("/studies.json", params={"_limit": 5}).json()["rows"]
        instances = client.get("/studies.json", params={"_level": "instance", "_limit": 5}).json()["rows"]
        pages += ["/studies", "/studies?_level=series", "/studies?_level=instance", "/dashboards", "/exports"]
        pages += [f"/studies/{studies[0]['StudyInstanceUID']}", f"/instances/{instances[0]['SOPInstanceUID']}"]
    if role == "admin":
        pages += ["/ingest", "/rejects", "/quality", "/audits", "/access-log", "/api/docs"]
        pages += [f"/audits/{a}" for a in AUDITS]
    if role == "auditor":
        pages += ["/access-log"]
    return pages


_CHARTS_JS = """() => Array.from(document.querySelectorAll('.plot')).map(el => ({
  id: el.id, drawn: el.getAttribute('data-drawn') === '1',
  points: (el.data || []).reduce((n, t) => n + Math.max((t.x || []).length, (t.y || []).length,
           (t.values || []).length, (t.z || []).length), 0)
}))"""


@pytest.mark.parametrize("role", ["admin", "analyst", "auditor"])
def test_every_page_fits_1280_px_without_errors_and_every_chart_has_data(site: tuple[str, Any], role: str) -> None:
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} missing (util/install-deb.sh installs chromium)")
    from fastapi.testclient import TestClient
    from playwright.sync_api import sync_playwright

    base, app = site
    name = {"admin": "ada", "analyst": "ann", "auditor": "aud"}[role]
    c = TestClient(app)  # no lifespan: the app stays open for the browser
    c.headers.update(ws.bearer(app, name))
    pages = _pages(c, role)
    out = ARTIFACTS / role
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    problems: list[str] = []
    measured: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/login")
            page.fill("input[name=username]", name)
            page.fill("input[name=password]", ws.PASSWORDS[name])
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            for path in pages:
                errors.clear()
                resp = page.goto(base + path, wait_until="networkidle")
                if resp is None or resp.status != 200:
                    problems.append(f"{path}: HTTP {resp.status if resp else '?'}")
                    continue
                plots = page.locator(".plot")
                for i in range(plots.count()):
                    try:
                        plots.nth(i).locator(".main-svg").first.wait_for(state="attached", timeout=20_000)
                    except Exception:
                        pass
                charts = page.evaluate(_CHARTS_JS)
                for ch in charts:
                    if not ch["drawn"] or ch["points"] == 0:
                        problems.append(f"{path}: chart {ch['id']} drawn={ch['drawn']} points={ch['points']}")
                if path == "/api/docs":
                    page.locator(".swagger-ui .opblock").first.wait_for(timeout=20_000)
                    if page.locator(".swagger-ui .opblock").count() < 10:
                        problems.append("/api/docs: Swagger UI shows fewer than 10 operations")
                width = page.evaluate("document.documentElement.scrollWidth")
                client = page.evaluate("document.documentElement.clientWidth")
                measured.append(f"{path}: {width} px")
                if width > client:
                    problems.append(f"{path}: {width} px wide in a {client} px window")
                wide = page.evaluate(
                    "Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().right)"
                )
                if any(right > client + 1 for right in wide):
                    problems.append(f"{path}: a table ends at {max(wide):.0f} px in a {client} px window")
                problems += [f"{path}: console error {e}" for e in errors]
                shot = re.sub(r"[^A-Za-z0-9]+", "-", path.split("?")[0] + "-" + path.partition("?")[2]).strip("-")
                try:  # a very long page (every element of an instance) may be too tall for one shot
                    page.screenshot(path=str(out / f"{shot[:80] or 'home'}.png"), full_page=True, timeout=15_000)
                except Exception:
                    page.screenshot(path=str(out / f"{shot[:80] or 'home'}.png"), timeout=15_000)
        finally:
            browser.close()
    print(f"\n{role}: {len(pages)} pages; widths: " + "; ".join(measured))
    assert len(pages) >= (18 if role == "admin" else 1)
    assert not problems, "\n".join(problems)
