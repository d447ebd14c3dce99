"""build_report without a manifest (a run on activation arrays): every section but those that show images."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from usae.report.build import build_report  # noqa: E402
from usae.report.explorer import NO_IMAGES  # noqa: E402


def _js(path: Path) -> dict:
    return json.loads(path.read_text().split(" = ", 1)[1].rstrip().rstrip(";"))


def test_without_a_manifest_the_image_sections_are_left_out_saying_why(tiny_run: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "report"
    page = build_report(tiny_run["run"], None, out).read_text()
    assert 'id="no-images-banner"' in page and 'id="no-images"' in page and NO_IMAGES in html.unescape(page)
    assert 'class="thumb"' not in page and "overlays/" not in page and 'id="excluded"' not in page
    for section in ('id="setup"', 'id="training"', 'id="reconstruction"', 'id="universality"', 'id="concepts"',
                    'id="runs"', 'id="definitions"', "usae-card"):
        assert section in page
    figures = [p.name for p in (out / "figures").glob("*.png")]
    assert figures and all(f"figures/{name}" in page for name in figures)
    assert not list((out / "thumbs").iterdir()) and not (out / "overlays").exists()
    meta = _js(out / "data" / "meta.js")
    assert meta["no_images"] == NO_IMAGES and meta["grid"] is None and meta["pages"]
    concept = _js(out / "data" / f"c{meta['pages'][0]}.js")
    tops = [t for model in concept["models"].values() for t in model["top"]]
    assert tops and all(t["thumb"] is None and t["heatmap"] is None and t["row"] >= 0 for t in tops)


def test_with_a_manifest_the_pages_show_images(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    page = build_report(tiny_run["run"], tiny_run["manifest"], out).read_text()
    assert 'id="no-images' not in page and 'class="thumb"' in page
    meta = _js(out / "data" / "meta.js")
    assert meta["no_images"] is None and meta["grid"] == [2, 2]


def test_the_pages_without_images_load_cleanly_in_chromium(tiny_run: dict[str, Path], tmp_path: Path, open_page,
                                                           broken_images) -> None:
    out = tmp_path / "report"
    build_report(tiny_run["run"], None, out)
    index, errors, failed = open_page(out / "index.html")
    assert not errors and not failed and broken_images(index) == 0
    first = _js(out / "data" / "meta.js")["pages"][0]
    concept, errors, failed = open_page(out / "concept.html", f"?id={first}")
    assert not errors and not failed
    assert concept.inner_text("#no-images") == NO_IMAGES
    assert concept.locator(".tile").count() > 0 and concept.locator(".tile .stack, .tile img").count() == 0
    assert concept.locator(".tile figcaption").first.inner_text().startswith("#")  # the row in the arrays
