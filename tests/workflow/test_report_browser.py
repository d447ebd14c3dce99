"""The report in a real headless browser (Chromium): loads from disk, no console errors, images render."""

import pytest

pytestmark = pytest.mark.slow


def test_report_pages_render_without_errors(built, open_page, broken_images, tmp_path):
    report = built / "results/runs/usae/report"
    page, errors, failed = open_page(report / "index.html", screenshot=tmp_path / "index.png")
    assert errors == [] and failed == []
    assert page.evaluate("document.images.length") > 10 and broken_images(page) == 0
    assert page.locator("#random-init-banner").count() == 1
    assert page.locator("#runs-table tr").count() == 4  # header + the three runs of the config
    # The independent SAE of b16 (run solo_b16) is compared with the USAE's b16 dictionary.
    assert page.locator("#consistency-table tr").count() == 2
    assert (tmp_path / "index.png").stat().st_size > 10_000
    index, errors, failed = open_page(report / "concepts.html")
    assert errors == [] and failed == []
    assert index.locator("table tbody tr").count() == 64
    concept = next(p for p in (report / "data").glob("c*.js") if p.stem != "concepts").stem[1:]
    page, errors, failed = open_page(report / "concept.html")  # first without a concept: no errors either
    page.goto((report / "concept.html").as_uri() + f"?id={concept}")
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    assert errors == [] and failed == []
    assert page.locator("canvas").count() > 0 and broken_images(page) == 0
