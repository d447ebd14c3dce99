"""The comparison page in headless Chromium, on a desktop and a phone: no errors, every figure loads, nothing wider
than the screen (wide tables scroll inside their box)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from usae.report.compare import build_comparison  # noqa: E402

WIDEST_OUTSIDE_BOXES = """() => {
  const tooWide = el => el.getBoundingClientRect().right > window.innerWidth + 1;
  const inBox = el => el.closest('.table-wrap') !== null;
  return Array.from(document.querySelectorAll('.report *')).filter(el => !inBox(el) && tooWide(el)).map(
    el => el.tagName + (el.id ? '#' + el.id : ''));
}"""


@pytest.mark.parametrize("width", [1400, 390])
def test_comparison_page_renders_on_desktop_and_phone(compared_runs: dict[str, Path], tmp_path: Path, open_page,
                                                      broken_images, width: int) -> None:
    index = build_comparison(compared_runs, tmp_path / "compare")
    page, errors, failed = open_page(index, width=width)
    assert errors == [] and failed == []
    assert broken_images(page) == 0
    assert page.evaluate("document.images.length") == 4
    assert page.evaluate(WIDEST_OUTSIDE_BOXES) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.locator("#stability-table td.verdict.ok").count() == 3
    page.close()
