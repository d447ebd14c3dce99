"""The report in a real headless browser (Chromium): loads from disk, no console errors, images render."""

import shutil
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def load(browser, path: Path, screenshot: Path | None = None) -> tuple[object, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, failed = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    return page, errors, failed


def broken_images(page) -> int:
    return page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")


def test_report_pages_render_without_errors(built, browser, tmp_path):
    report = built / "results/runs/usae/report"
    page, errors, failed = load(browser, report / "index.html", screenshot=tmp_path / "index.png")
    assert errors == [] and failed == []
    assert page.evaluate("document.images.length") > 10 and broken_images(page) == 0
    assert page.locator("#random-init-banner").count() == 1
    assert page.locator("#runs + table tr").count() == 4  # header + the three runs of the config
    # The independent SAE of b16 (run solo_b16) is compared with the USAE's b16 dictionary.
    assert page.locator("#consistency + p + table tr").count() == 2
    assert (tmp_path / "index.png").stat().st_size > 10_000
    index, errors, failed = load(browser, report / "concepts.html")
    assert errors == [] and failed == []
    assert index.locator("table tbody tr").count() == 64
    concept = next(p for p in (report / "data").glob("c*.js") if p.stem != "concepts").stem[1:]
    page, errors, failed = load(browser, Path(f"{report / 'concept.html'}"))
    page.goto((report / "concept.html").as_uri() + f"?id={concept}")
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    assert errors == [] and failed == []
    assert page.locator("canvas").count() > 0 and broken_images(page) == 0
