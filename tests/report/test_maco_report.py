"""MACO in the report: a hand-made MACO folder (known numbers, small PNGs) shown with the real tiny run of
conftest.py: the copied images, the cards, the concept pages' data, index.html's section and cross table."""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from usae.report.build import build_report  # noqa: E402
from usae.report.maco import load_maco, maco_section  # noqa: E402

OBJECTIVE_TEXT = "the concept's code Z_k averaged over the model's patch tokens"
# Two concepts and two models; cross[i][j]: read through model j, image optimised for model i (diagonal = achieved).
# p8's random-phase mean, 0.004, is below the floor 0.01: the cross table's p8 ratios divide by 0.01.
NUMBERS = {
    "a": {"kind": "universal", "factor": "shape=star", "firing_entropy": 0.97,
          "p16": (4.96, 1.84, 0.35), "p8": (3.2, 2.0, 0.003), "cross": [[4.96, 1.5], [0.9, 3.2]]},
    "b": {"kind": "specific to p8", "factor": None, "firing_entropy": 0.0,
          "p16": (0.4, None, 0.3), "p8": (2.6, 1.3, 0.005), "cross": [[0.4, 0.02], [0.1, 2.6]]},
}
CROSS_MEAN = [[2.68, 0.76], [0.5, 2.9]]
RANDOM_PHASE_MEAN = [0.325, 0.004]
FLOOR = 0.01


def _entry(cid: int, numbers: dict[str, Any]) -> dict[str, Any]:
    models = {}
    for m in ("p16", "p8"):
        achieved, best, random = numbers[m]
        models[m] = {"achieved": achieved, "best_dataset": best, "random_phase": random,
                     "ratio_vs_dataset": None if best is None else achieved / max(best, FLOOR),
                     "ratio_vs_random": achieved / max(random, FLOOR), "image": f"images/c{cid}_{m}.png"}
    return {"id": cid, "kind": numbers["kind"], "factor": numbers["factor"],
            "firing_entropy": numbers["firing_entropy"], "models": models, "cross": numbers["cross"]}


def _picture(seed: int) -> Image.Image:
    """A colourful 64 px pattern standing in for an optimised image."""
    y, x = np.mgrid[0:64, 0:64] / 64.0
    waves = [np.sin(2 * np.pi * (f * x + g * y) + seed) for f, g in ((3, 1), (1, 4), (2, 2))]
    return Image.fromarray(((np.stack(waves, -1) + 1) * 127.5).astype(np.uint8))


@pytest.fixture(scope="module")
def maco_dir(tiny_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``maco.json`` and ``images/`` for the run's two most energetic concepts (both on cards and pages)."""
    table = pd.read_parquet(tiny_run["run"] / "eval" / "concepts.parquet")
    a, b = (int(c) for c in table.sort_values("energy_total", ascending=False)["concept"].head(2))
    folder = tmp_path_factory.mktemp("maco")
    (folder / "images").mkdir()
    for k, (cid, m) in enumerate((c, m) for c in (a, b) for m in ("p16", "p8")):
        _picture(k).save(folder / "images" / f"c{cid}_{m}.png")
    report = {"objective": "mean", "objective_text": OBJECTIVE_TEXT,
              "settings": {"steps": 96, "image_size": 64, "concepts": None}, "models": ["p16", "p8"],
              "spectrum_images": 10, "ratio_floor": FLOOR,
              "concepts": [_entry(a, NUMBERS["a"]), _entry(b, NUMBERS["b"])],
              "cross_mean": CROSS_MEAN, "random_phase_mean": RANDOM_PHASE_MEAN, "seconds": 123.4}
    (folder / "maco.json").write_text(json.dumps(report))
    others = [int(c) for c in table["concept"] if int(c) not in (a, b)]
    return {"dir": folder, "a": a, "b": b, "others": others}


@pytest.fixture(scope="module")
def report(tiny_run: dict[str, Path], maco_dir: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("maco_report") / "report"
    build_report(tiny_run["run"], tiny_run["manifest"], out, maco_dir=maco_dir["dir"])
    return out


def _text(fragment: str) -> str:
    """HTML as plain text: tags dropped, entities decoded, white space collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()


def _between(page: str, start: str, end: str) -> str:
    return page.split(start, 1)[1].split(end, 1)[0]


def _concept_js(report: Path, cid: int) -> dict[str, Any]:
    text = (report / "data" / f"c{cid}.js").read_text()
    return json.loads(text.removeprefix("window.USAE_CONCEPT = ").strip().rstrip(";"))


def test_images_and_numbers_are_copied(report: Path, maco_dir: dict[str, Any]) -> None:
    for cid in (maco_dir["a"], maco_dir["b"]):
        for m in ("p16", "p8"):
            name = f"images/c{cid}_{m}.png"
            assert (report / "maco" / name).read_bytes() == (maco_dir["dir"] / name).read_bytes()
    assert json.loads((report / "maco" / "maco.json").read_text())["cross_mean"] == CROSS_MEAN


def test_cards_show_the_optimised_images_first(report: Path, maco_dir: dict[str, Any]) -> None:
    page = (report / "index.html").read_text()
    a, b = maco_dir["a"], maco_dir["b"]
    card = _between(page, f'<article class="usae-card" id="card-{a}">', "</article>")
    columns = card.split('<div class="model-col">')[1:]
    for m, column in zip(("p16", "p8"), columns):
        tiles = column.split("<figure")[1:]
        assert 'class="tile maco"' in tiles[0] and f'src="maco/images/c{a}_{m}.png"' in tiles[0]
        assert len(tiles) > 1 and "tile maco" not in "".join(tiles[1:])  # then the dataset images
    first = [_text("<figure" + column.split("<figure", 1)[1].split("</figure>")[0]) for column in columns]
    assert first == ["4.960 MACO best image 1.840 (×2.7) random 0.350 (×14.2)",
                     "3.200 MACO best image 2.000 (×1.6) random 0.003 (×320.0)"]
    assert f"to maximise {OBJECTIVE_TEXT}." in _text(_between(card, '<p class="maco-caption">', "</p>"))
    card_b = _between(page, f'<article class="usae-card" id="card-{b}">', "</article>")
    assert "0.400 MACO no dataset image random 0.300 (×1.3)" in _text(card_b)  # p16 has no best dataset image
    for other in maco_dir["others"]:  # concepts not in maco.json keep today's card
        if f'id="card-{other}"' in page:
            other_card = _between(page, f'id="card-{other}"', "</article>")
            assert "tile maco" not in other_card and "maco-caption" not in other_card


def test_concept_pages_carry_the_maco_data(report: Path, maco_dir: dict[str, Any]) -> None:
    data = _concept_js(report, maco_dir["a"])["maco"]
    assert data["objective_text"] == OBJECTIVE_TEXT and data["kind"] == "universal"
    assert data["models"]["p8"] == {"achieved": 3.2, "best_dataset": 2.0, "ratio_vs_dataset": 1.6,
                                    "random_phase": 0.003, "ratio_vs_random": pytest.approx(320.0),
                                    "image": f"maco/images/c{maco_dir['a']}_p8.png"}
    assert _concept_js(report, maco_dir["b"])["maco"]["models"]["p16"]["best_dataset"] is None
    assert all("maco" not in _concept_js(report, c) for c in maco_dir["others"])


def test_index_section_rows(report: Path, maco_dir: dict[str, Any]) -> None:
    page = (report / "index.html").read_text()
    assert 'href="#maco"' in page
    section = _between(page, '<section id="maco" class="maco">', "</section>")
    summary = _text(_between(section, '<p id="maco-summary">', "</p>"))
    assert f"to maximise {OBJECTIVE_TEXT} (objective mean" in summary
    assert "scoring the 2 concepts took 123.4 s" in summary and "10 training images" in summary
    rows = _between(section, 'id="maco-concepts">', "</table>").split("<tr data-concept=")[1:]
    assert [int(r.split('"')[1]) for r in rows] == [maco_dir["a"], maco_dir["b"]]
    a, b = maco_dir["a"], maco_dir["b"]
    assert f'<a href="concept.html?id={a}">{a}</a>' in rows[0]
    assert _text(rows[0].split("</td>")[0]).endswith(f"{a} universal shape=star firing entropy 0.970")
    assert _text(rows[1].split("</td>")[0]).endswith(f"{b} specific to p8 firing entropy 0.000")
    cells = [_text(c) for c in rows[0].split("</td>")[1:3]]
    assert cells == ["4.960 MACO best image 1.840 (×2.7) random 0.350 (×14.2)",
                     "3.200 MACO best image 2.000 (×1.6) random 0.003 (×320.0)"]
    assert f'src="maco/images/c{b}_p8.png"' in rows[1]
    assert "123.4" not in _between(page, "<body>", '<section id="maco"')  # the time is shown once, here


def test_cross_table_values_and_baseline(report: Path) -> None:
    page = (report / "index.html").read_text()
    table = _between(page, 'id="maco-cross-table">', "</table>")
    rows = [[_text(c) for c in re.findall(r"<td>(.*?)</td>", r)] for r in table.split("<tr")[2:]]
    # value / max(baseline of the column, 0.01): 2.68 / 0.325, 0.76 / 0.01, 0.5 / 0.325, 2.9 / 0.01
    assert rows == [["p16", "2.680 ×8.2", "0.760 ×76.0"], ["p8", "0.500 ×1.5", "2.900 ×290.0"],
                    ["random phase (baseline)", "0.325", "0.004"]]
    caption = _text(_between(page, '<p id="maco-cross-caption">', "</p>"))
    assert "image optimised for model i also activates the concept in model j far more than random-phase" in caption


def test_without_maco_nothing_changes(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    page = build_report(tiny_run["run"], tiny_run["manifest"], out).read_text()
    assert not (out / "maco").exists()
    for mark in ('id="maco"', 'href="#maco"', "tile maco", "maco-caption", 'src="maco/', "Coordinated activation"):
        assert mark not in page, mark
    assert all('"maco":' not in path.read_text() for path in (out / "data").glob("c*.js"))


def test_missing_image_and_model_keep_the_numbers(tiny_run: dict[str, Path], maco_dir: dict[str, Any],
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "maco"
    shutil.copytree(maco_dir["dir"], folder)
    a, b = maco_dir["a"], maco_dir["b"]
    (folder / "images" / f"c{a}_p16.png").unlink()
    raw = json.loads((folder / "maco.json").read_text())
    del raw["concepts"][1]["models"]["p8"]  # concept b was not optimised for p8
    (folder / "maco.json").write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING, logger="usae.report.maco"):
        page = build_report(tiny_run["run"], tiny_run["manifest"], tmp_path / "report", maco_dir=folder).read_text()
    assert f"images/c{a}_p16.png" in caplog.text
    assert not (tmp_path / "report" / "maco" / "images" / f"c{a}_p16.png").exists()
    card = _between(page, f'id="card-{a}"', "</article>")
    assert "MACO image missing" in card and "4.960 MACO" in _text(card)
    card_b = _between(page, f'id="card-{b}"', "</article>")
    assert card_b.count("tile maco") == 1
    row_b = _between(page, f'<tr data-concept="{b}">', "</tr>")
    assert _text(_between(row_b, '<td data-model="p8">', "</td>")) == "-"
    assert list(_concept_js(tmp_path / "report", b)["maco"]["models"]) == ["p16"]


def test_load_maco_checks_its_input(maco_dir: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no maco.json"):
        load_maco(tmp_path / "nowhere", tmp_path / "report")
    folder = tmp_path / "maco"
    shutil.copytree(maco_dir["dir"], folder)
    raw = json.loads((folder / "maco.json").read_text())
    raw["random_phase_mean"] = [0.1]
    (folder / "maco.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="one per model"):
        load_maco(folder, tmp_path / "report")


def test_section_links_only_concepts_with_a_page(maco_dir: dict[str, Any], tmp_path: Path) -> None:
    maco = load_maco(maco_dir["dir"], tmp_path)
    section = maco_section(maco, {maco_dir["b"]})
    assert [(r["id"], r["linked"]) for r in section["rows"]] == [(maco_dir["a"], False), (maco_dir["b"], True)]
    assert [c["ratio"] for c in section["cross"][1]["cells"]] == pytest.approx([0.5 / 0.325, 290.0])


@pytest.mark.slow
def test_pages_show_the_images_in_chromium(report: Path, maco_dir: dict[str, Any], open_page: Any,
                                           broken_images: Any, tmp_path: Path) -> None:
    """The concept page draws the MACO tiles from data/c<id>.js (first in each model's column); index.html
    loads every image; the section's screenshot is kept for a look."""
    page, errors, failed = open_page(report / "concept.html", f"?id={maco_dir['a']}")
    page.wait_for_selector("figure.tile.maco img")
    assert errors == [] and failed == [] and broken_images(page) == 0
    widths = page.evaluate("Array.from(document.querySelectorAll('figure.tile.maco img')).map(i => i.naturalWidth)")
    assert widths == [64, 64]
    firsts = page.evaluate("Array.from(document.querySelectorAll('.model-col .tiles'))"
                           ".map(t => t.firstElementChild.classList.contains('maco'))")
    assert firsts == [True, True]
    captions = [" ".join(t.split()) for t in page.locator("figure.tile.maco figcaption").all_inner_texts()]
    assert captions == ["4.960 MACO best image 1.840 (×2.7) random 0.350 (×14.2)",
                        "3.200 MACO best image 2.000 (×1.6) random 0.003 (×320.0)"]
    assert f"to maximise {OBJECTIVE_TEXT}." in page.locator(".maco-caption").inner_text()
    page_b, errors, failed = open_page(report / "concept.html", f"?id={maco_dir['b']}")
    page_b.wait_for_selector("figure.tile.maco img")
    assert errors == [] and "no dataset image" in page_b.locator("figure.tile.maco figcaption").first.inner_text()
    other, errors, failed = open_page(report / "concept.html", f"?id={maco_dir['others'][0]}")
    other.wait_for_selector(".model-col")
    assert errors == [] and other.locator(".tile.maco, .maco-caption").count() == 0
    index, errors, failed = open_page(report / "index.html")
    assert errors == [] and failed == [] and broken_images(index) == 0
    index.locator("#maco").screenshot(path=str(tmp_path / "maco_section.png"))
    assert (tmp_path / "maco_section.png").stat().st_size > 10_000
