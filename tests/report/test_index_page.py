"""index.html's layout and wording on the real tiny run (``tiny_run``, conftest.py): viewport, lazy images,
folded galleries, one number format per column, the new sharing figures, and the sections that explain
themselves when empty (no independent SAE, an empty thresholded Pearson r)."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from usae.report.build import build_report  # noqa: E402
from usae.report.cards import card  # noqa: E402
from usae.report.templating import environment  # noqa: E402


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()


@pytest.fixture(scope="module")
def page(tiny_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("index_page") / "report"
    return build_report(tiny_run["run"], tiny_run["manifest"], out).read_text()


def _edited_run(tiny_run: dict[str, Path], tmp_path: Path, drop: tuple[str, ...] = (), **changes: object) -> Path:
    """A copy of the tiny run whose metrics.json has ``changes`` and lacks the keys in ``drop``."""
    run = tmp_path / "usae"
    shutil.copytree(tiny_run["run"], run)
    path = run / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update(changes)
    for key in drop:
        del metrics[key]
    path.write_text(json.dumps(metrics))
    return run


def test_phone_viewport_lazy_images_and_wrapped_tables(page: str) -> None:
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    images = re.findall(r"<img [^>]*>", page)
    assert images and all('loading="lazy"' in img for img in images)
    assert page.count("<table") == page.count('<div class="table-wrap"><table')  # each table scrolls in its box


def test_galleries_open_three_cards_and_fold_the_rest(page: str) -> None:
    for key in ("energy", "universal", "specific"):
        gallery = page.split(f'id="gallery-{key}">', 1)[1].split("</div>\n", 1)[0]
        assert gallery.count('<article class="usae-card"') <= 3
    folded = re.findall(r'<details class="more-cards"><summary>(\d+) more\s+concepts</summary>', page)
    assert folded and all(int(n) > 0 for n in folded)


def test_the_universal_gallery_keeps_to_concepts_the_models_fire_together(page: str, tiny_run) -> None:
    import numpy as np
    import pandas as pd

    from usae.report.build import select_concepts

    # Concept 1 has the highest firing entropy, but the models never fire it on the same token.
    table = pd.DataFrame({"concept": [0, 1, 2, 3], "firing_entropy": [0.95, 0.99, 0.9, 0.2],
                          "cofires": [5, 0, 3, 0], "energy_total": [1.0, 2.0, 3.0, 4.0],
                          "fires_a": [20, 20, 20, 30], "fires_b": [20, 20, 20, 0]})
    assert select_concepts(table, ["a", "b"], n=2, min_cofires=4)["universal"] == [0]  # 2 co-fires too rarely
    assert select_concepts(table, ["a", "b"], n=2, min_cofires=0)["universal"] == [0, 2]  # at least once
    assert select_concepts(table, ["a", "b"], n=2)["universal"] == [1, 0]  # no threshold known: entropy alone
    assert select_concepts(table, ["a", "b"], n=2, min_cofires=4)["specific"] == [3, 2]  # co-firing not asked
    # Given the tokens counted (1,000), concept 4 co-fires often but no more than chance (fired on 500 tokens by
    # each model: 250 co-fires expected); 0 and 2 (fired on 20 by each: 0.4 expected) are beyond it.
    busy = pd.concat([table, pd.DataFrame({"concept": [4], "firing_entropy": [1.0], "cofires": [250],
                                           "energy_total": [0.5], "fires_a": [500], "fires_b": [500]})])
    assert select_concepts(busy, ["a", "b"], n=2, min_cofires=0)["universal"] == [4, 0]
    assert select_concepts(busy, ["a", "b"], n=2, min_cofires=0, n_tokens=1000)["universal"] == [0, 2]
    # The chance test counts every concept of the dictionary, not only those firing min_fires times. Over 1,000
    # tokens concept 0 co-fires 12 times where chance gives 5 (P = 0.0055): beyond chance among the 2 concepts
    # that fire enough (0.05 / 2), not among the dictionary's 10 (0.05 / 10). Concept 1: 5 where chance gives 0.1.
    ten = pd.DataFrame({"concept": range(10), "firing_entropy": [0.95, 0.95] + [0.2] * 8,
                        "cofires": [12, 5] + [0] * 8, "energy_total": [2.0, 1.0] + [0.1] * 8,
                        "fires_a": [100, 10] + [5] * 8, "fires_b": [50, 10] + [0] * 8})
    assert select_concepts(ten, ["a", "b"], n=2, min_cofires=2, n_tokens=1000)["universal"] == [1]
    assert select_concepts(ten[:2], ["a", "b"], n=2, min_cofires=2, n_tokens=1000)["universal"] == [0, 1]
    # At evaluate.chance_alpha 0.2 the divisor's 10 leaves 0.02: concept 0 passes; at 1e-9 neither does (1: 7.7e-8).
    assert select_concepts(ten, ["a", "b"], n=2, min_cofires=2, n_tokens=1000, alpha=0.2)["universal"] == [0, 1]
    assert select_concepts(ten, ["a", "b"], n=2, min_cofires=2, n_tokens=1000, alpha=1e-9)["universal"] == []
    # One model (a solo run): no firing entropy, so no universal gallery, and no chance to test against.
    solo = busy.drop(columns=["fires_b"]).assign(firing_entropy=np.nan)
    assert select_concepts(solo, ["a"], n=2, min_cofires=0, n_tokens=1000) == {
        "energy": [3, 2], "universal": [], "specific": []}
    metrics = json.loads((tiny_run["run"] / "eval" / "metrics.json").read_text())
    least = max(1, metrics["min_cofires"])
    assert (f"Most universal (highest firing entropy, among those co-firing at least {least:,} times, more often "
            "than chance)") in page


def test_cards_explain_their_captions_and_scale(page: str) -> None:
    legend = _text(page.split('id="concepts-legend">', 1)[1].split("</p>", 1)[0])
    assert "# its row in the manifest and max , the concept's largest activation Z_k" in legend
    first = page.split('<article class="usae-card"', 1)[1].split("</article>", 1)[0]
    assert re.search(r"<figcaption[^>]*>#\d+ &middot; max \d+\.\d{3}</figcaption>", first)
    assert re.search(r'<div class="scale" [^>]*><span class="lo">0</span><span class="ramp"></span><span class="hi">'
                     r"\d+\.\d{3}</span>", first)
    assert re.search(r"energy share \d+\.0%", _text(first)) is None  # percent(0): no decimals
    assert re.search(r"energy share \d+%", _text(first))


def test_card_limit_links_to_the_concept_page(tiny_run: dict[str, Path]) -> None:
    import pandas as pd

    table = pd.read_parquet(tiny_run["run"] / "eval" / "concepts.parquet")
    row = table.sort_values("energy_total", ascending=False).iloc[0].to_dict()
    c = card(row, ["p16", "p8"])
    macro = environment().get_template("card.html").module.card
    one = str(macro(c, "", 1))
    shown = [len(m["tiles"]) for m in c["models"]]
    assert one.count('<figure class="tile">') == sum(min(n, 1) for n in shown)
    assert one.count(">all 2 images</a>") == sum(n == 2 for n in shown) > 0
    assert ">all " not in str(macro(c, "", None))


def test_sharing_figures_are_shown(page: str) -> None:
    for key in ("cofire_matrix", "density", "energy_share"):
        figure = page.split(f'id="figure-{key}">', 1)[1].split("</figure>", 1)[0]
        assert f'src="figures/{key}.png"' in figure
    assert "on which model j fires the same concept on the same token" in _text(page)


def test_numbers_use_one_format_per_column_and_no_negative_zero(page: str) -> None:
    assert "-0.000" not in page and ">-0<" not in page
    r2 = [_text(td) for td in re.findall(r"<td>(.*?)</td>", page.split('id="r2-table"', 1)[1].split("</table>")[0])]
    numbers = [v for v in r2 if v not in ("p16", "p8")]
    assert len(numbers) == 4 and all(re.fullmatch(r"-?\d+\.\d{3}", v) for v in numbers)
    setup = page.split('id="setup"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r"\(\d+\.\d%\)", setup)) == 4  # dead both ways, two models: one percent format


def test_universal_counts_stand_beside_their_random_dictionary_floor(tiny_run: dict[str, Path], page: str) -> None:
    baselines = json.loads((tiny_run["run"] / "eval" / "baselines.json").read_text())
    usae, rand = (next(r for r in baselines["table"] if r["method"] == m) for m in ("usae", "random_dictionary"))
    table = page.split('id="universal-table">', 1)[1].split("</table>", 1)[0]
    rows = {key: _text(cell) for key, cell in re.findall(r'data-key="(\w+)"><td>.*?</td><td>(.*?)</td>', table)}
    assert rows["universal"] == f"{usae['universal']} (random dictionary {rand['universal']})"
    assert rows["universal_energetic"] == f"{usae['universal_energetic']} (random dictionary {rand['universal_energetic']})"
    assert "universal_factor" not in rows  # no planted factors in these images, so no count and no floor


def test_no_independent_sae_says_what_it_would_show(page: str) -> None:
    note = _text(page.split('id="consistency-missing">', 1)[1].split("</p>", 1)[0])
    assert note.startswith("No independent SAE among this config's runs")
    assert "runs: {usae: {}, solo_p16: {models: [p16]}}" in note


def test_thresholded_pearson_states_its_rule(page: str) -> None:
    caption = _text(page.split('id="pearson-caption">', 1)[1].split("</figcaption>", 1)[0])
    assert "threshold: scaled with the tokens: max(1, ceil(1,000 x" in caption
    assert re.search(r"over the \d+ concepts with at least 1 co-fires", caption)
    assert "Why the second r is empty" not in caption


def test_a_cross_model_weight_other_than_the_papers_is_stated(tiny_run: dict[str, Path], page: str,
                                                              tmp_path: Path) -> None:
    settings = _text(page.split("Shared code space", 1)[1].split("</p>", 1)[0])
    assert "reconstruction weighted" not in settings  # the tiny run keeps the paper's weight, 1
    run = tmp_path / "usae"
    shutil.copytree(tiny_run["run"], run)
    path = run / "model" / "config.json"
    config = json.loads(path.read_text())
    config["sae"]["cross_coef"] = 0.25
    path.write_text(json.dumps(config))
    edited = build_report(run, tiny_run["manifest"], tmp_path / "report").read_text()
    settings = _text(edited.split("Shared code space", 1)[1].split("</p>", 1)[0])
    assert "loss mse with the other models' reconstruction weighted 0.25 (the paper: 1), AuxK 4" in settings


def test_empty_pearson_says_why(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    note = "only 0 concepts co-fire at least 1,000 times (with energy > 0); Pearson r needs at least 3"
    run = _edited_run(tiny_run, tmp_path, pearson_log_cofires_log_energy_min_cofires=None, min_cofires=1000,
                      pearson_min_cofires_note=note)
    page = build_report(run, tiny_run["manifest"], tmp_path / "report").read_text()
    caption = _text(page.split('id="pearson-caption">', 1)[1].split("</figcaption>", 1)[0])
    assert f"Why the second r is empty: {note}; lower evaluate.min_cofires" in caption


def test_an_older_evaluation_still_explains_an_empty_r(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    """metrics.json from before the note (evaluate stage 3): the page still says why r is empty."""
    run = _edited_run(tiny_run, tmp_path, ("pearson_min_cofires_note", "min_cofires_rule", "n_concepts_min_cofires",
                                           "cofire_matrix", "pair_cofires"),
                      pearson_log_cofires_log_energy_min_cofires=None, min_cofires=1000)
    page = build_report(run, tiny_run["manifest"], tmp_path / "report").read_text()
    caption = _text(page.split('id="pearson-caption">', 1)[1].split("</figcaption>", 1)[0])
    assert "The second r is empty: too few concepts co-fire 1,000 times on" in caption
    assert "threshold:" not in caption


@pytest.mark.slow
def test_pages_fit_a_phone_and_format_columns_in_chromium(tiny_run: dict[str, Path], open_page: object,
                                                          broken_images: object, tmp_path: Path) -> None:
    """At 390 px nothing runs off the page (wide tables scroll in their box); images below the fold wait until
    scrolled to; the explorer's table writes each column one way; a concept page shows its colour scales."""
    report = tmp_path / "report"
    build_report(tiny_run["run"], tiny_run["manifest"], report)
    index, errors, failed = open_page(report / "index.html", width=390)
    assert errors == [] and failed == []
    assert index.evaluate("document.documentElement.scrollWidth") == 390
    index = open_page(report / "index.html")[0]
    total = index.evaluate("document.images.length")
    assert index.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length") < total
    assert broken_images(index) == 0  # and each of them loads once asked for

    table, errors, failed = open_page(report / "concepts.html", width=390)
    assert errors == [] and table.evaluate("document.documentElement.scrollWidth") == 390
    box = table.locator(".table-wrap.scroll")
    assert box.evaluate("b => b.scrollWidth > b.clientWidth")  # the table scrolls inside its box
    heads = table.locator("#head th").all_inner_texts()
    cells = table.evaluate("Array.from(document.querySelectorAll('#rows tr')).map(r => "
                           "Array.from(r.children).map(c => c.textContent))")
    for key, pattern in (("energy", r"\d\.\d{2}e[+-]\d{2}|\d+\.\d{3}"), ("energy share p16", r"\d+\.\d%|–"),
                         ("fires p8", r"[\d,]+")):
        column = [row[heads.index(key)] for row in cells]
        assert all(re.fullmatch(pattern, v) for v in column), (key, column)
        assert len({("e" in v, v.count(".")) for v in column if v != "–"}) == 1, (key, column)  # one format

    concept = json.loads((report / "data" / "meta.js").read_text().removeprefix("window.USAE_META = ")
                         .strip().rstrip(";"))["pages"][0]
    page, errors, failed = open_page(report / "concept.html", f"?id={concept}")
    page.wait_for_selector(".model-col")
    assert errors == [] and failed == []
    assert page.locator(".model-col .scale .ramp").count() >= 1
    assert re.fullmatch(r"#\d+ · max \d+\.\d{3}", page.locator("figure.tile figcaption").first.inner_text())
    assert "largest activation Z_k" in page.locator("p.legend").inner_text()


_PIXEL = ("([sel, i, x, y]) => "
          "Array.from(document.querySelectorAll(sel)[i].getContext('2d').getImageData(x, y, 1, 1).data)")


@pytest.mark.slow
def test_concept_pages_draw_where_each_model_fires_in_chromium(tiny_run: dict[str, Path], open_page: object,
                                                               tmp_path: Path) -> None:
    """A concept page ends each model's row with its firing map: one opaque cell per token position, the
    highest share in viridis' top colour and an empty position in its bottom one, captioned with that share;
    its position spread stands among its numbers and as a column of the all-concepts table."""
    report = tmp_path / "report"
    build_report(tiny_run["run"], tiny_run["manifest"], report)
    data = report / "data"
    pages = [json.loads(p.read_text().removeprefix("window.USAE_CONCEPT = ").strip().rstrip(";"))
             for p in sorted(data.glob("c[0-9]*.js"))]
    concept = next(c for c in pages if all(b.get("where", {}).get("max", 0) > 0 for b in c["models"].values())
                   and any(0 in line for b in c["models"].values() for line in b["where"]["share"]))
    page, errors, failed = open_page(report / "concept.html", f"?id={concept['id']}")
    page.wait_for_selector("canvas.where")
    assert errors == [] and failed == []
    models = list(concept["models"])
    assert page.locator("canvas.where").count() == len(models)
    assert "Where (last per model)" in page.locator("p.legend").inner_text()
    assert "position spread" in page.locator("dl.stats").inner_text()
    table = open_page(report / "concepts.html")[0]
    assert "position spread" in table.locator("#head th").all_inner_texts()
    for i, name in enumerate(models):
        where = concept["models"][name]["where"]
        share = where["share"]
        caption = page.locator("figure.where figcaption").nth(i).inner_text()
        assert caption == f"where: up to {100 * where['max']:.1f}% of images"
        size = page.locator("canvas.where").nth(i).evaluate("c => c.width")
        cell = size / len(share)
        for value, rgb in ((max(map(max, share)), (253, 231, 37)), (0, (68, 1, 84))):
            row = next(r for r, line in enumerate(share) if value in line)
            col = share[row].index(value)
            pixel = page.evaluate(_PIXEL, ["canvas.where", i, int((col + 0.5) * cell), int((row + 0.5) * cell)])
            assert pixel[3] == 255 and all(abs(a - b) <= 2 for a, b in zip(pixel[:3], rgb)), (name, value, pixel)
