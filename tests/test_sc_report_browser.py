"""`dicomlake audit sc-catalogue` as a reader sees it: the HTML report in headless Chromium.

Issue 21 asked that the catalogue show what `sc analyse` found (class, PHI found and
redacted, quality, dose read) and that this be checked in a browser. A hostile Series
Description and Station Name (markup that would run script if pasted into the page raw)
must be shown as text, fire no dialog and load nothing; the report must fit a 1,280 px wide
window without a horizontal scroll bar (wide tables scroll inside their own box).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from dicomlake.cli.main import app
from tests.factories_sc import write_dose_screen
from tests.support import missing, require_tool

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
HOSTILE = "</script><img src=x onerror=alert(1)>"
runner = CliRunner()


def test_sc_catalogue_report_in_chromium_shows_the_analysis_and_hostile_values_as_text(tmp_path: Path) -> None:
    require_tool("tesseract")
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} missing (apt-get install chromium)")
    from playwright.sync_api import Dialog, sync_playwright

    from dicomlake.ingest.pipeline import ingest_paths

    case = write_dose_screen(tmp_path / "in", "screen", size=12, seed=5)
    ds = dcmread(case.path)
    ds.SeriesDescription = HOSTILE
    ds.StationName = HOSTILE
    ds.save_as(case.path)
    for extra in (tmp_path / "in" / "src").iterdir():  # keep only the DICOM object
        extra.unlink()
    ingest_paths([tmp_path / "in"], tmp_path / "lake", workers=1)
    result = runner.invoke(app, ["sc", "analyse", "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 0, result.output
    report = tmp_path / "sc.html"
    result = runner.invoke(app, ["audit", "sc-catalogue", "--lake", str(tmp_path / "lake"), "--out", str(report)])
    assert result.exit_code == 0, result.output

    dialogs: list[str] = []
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()

        def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)  # an injected onerror would have fired by now
        width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        heads = page.locator("#tab-catalogue th").all_inner_texts()
        cells = page.locator("#tab-catalogue tbody tr").first.locator("td").all_inner_texts()
        injected = page.locator("#tab-catalogue img").count()
        browser.close()

    assert dialogs == [] and errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert width[0] <= width[1] <= 1280, f"horizontal scroll: {width}"
    row = dict(zip(heads, cells, strict=True))
    for column in ("Class", "PHI_found", "PHI_redacted", "Quality_flags", "Dose_check", "Dose_status"):
        assert column in row, column
    assert row["Class"] == "dose_report"
    assert int(row["PHI_found"]) >= 5 and row["PHI_redacted"] == row["PHI_found"]
    assert row["Dose_check"] == "sum-ok" and row["Dose_status"] == "stored"
    assert case.dose is not None
    assert abs(float(row["Dose_total_DLP_mGycm"]) - case.dose.total_dlp) < 1  # shown to 4 significant digits
    # the hostile values are there, as the characters they are, and made no element
    assert row["SeriesDescription"] == HOSTILE and row["StationName"] == HOSTILE
    assert injected == 0
