"""The static concept explorer: files, data scripts, HTML without URLs, static cards with overlays."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from usae.report.cards import card_html
from usae.report.explorer import ExplorerIndex, write_explorer
from usae.report.heatmaps import colorize

MODELS = ["alpha", "beta"]
GRID = (3, 4)
TOP_N = 3
N_VAL = 7  # validation images the firing maps count over


def _concepts() -> pd.DataFrame:
    rows = {  # concept -> per model top rows (-1 = empty); row 5 is an unreadable image
        0: {"alpha": [0, 1, 2], "beta": [3, -1, -1]},
        1: {"alpha": [4, 5, -1], "beta": [0, 4, 1]},
        2: {"alpha": [-1, -1, -1], "beta": [-1, -1, -1]},  # never fires
        3: {"alpha": [2, -1, -1], "beta": [-1, -1, -1]},
        4: {"alpha": [1, 3, -1], "beta": [2, 3, -1]},
    }
    records = []
    for c, tops in rows.items():
        fires = {m: sum(r >= 0 for r in tops[m]) for m in MODELS}
        rec = {"concept": c, "firing_entropy": math.nan if c == 2 else 0.5 + c / 10, "cofires": c,
               "energy_total": 0.0 if c == 2 else 1e-3 * c, "factor": None if c == 2 else f"colour=c{c}",
               "factor_auroc": math.nan if c == 2 else 0.6}
        for m in MODELS:
            rec |= {f"fires_{m}": fires[m], f"energy_{m}": 0.1 * fires[m], f"cfp_{m}": math.nan if c == 2 else 0.2,
                    f"top_rows_{m}": np.array(tops[m], dtype=np.int64),
                    f"top_values_{m}": np.array([1.0 / (i + 1) if r >= 0 else 0.0 for i, r in enumerate(tops[m])]),
                    f"factor_{m}": "colour=red", f"factor_auroc_{m}": 0.7}
        records.append(rec)
    return pd.DataFrame(records)


@pytest.fixture()
def run(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i in range(6):
        path = images / f"img_{i}.png"
        if i == 5:
            path.write_bytes(b"not a png")
        else:
            Image.new("RGB", (40 + 8 * i, 32), (40 * i, 100, 200 - 30 * i)).save(path)
        paths.append(str(path))
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"index": range(6), "path": paths}).to_parquet(manifest)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    table = _concepts()
    table.to_parquet(eval_dir / "concepts.parquet")
    group = zarr.open_group(eval_dir / "heatmaps.zarr", mode="w")
    group.attrs.update({"tokens_per_image": GRID[0] * GRID[1], "grid": list(GRID), "n_images": N_VAL})
    rng = np.random.default_rng(0)
    for m in MODELS:
        sub = group.create_group(m)
        rows = np.stack(table[f"top_rows_{m}"].to_numpy()).astype(np.int64)
        maps = rng.random((len(table), TOP_N, GRID[0] * GRID[1])).astype(np.float16)
        firing = rng.integers(0, N_VAL + 1, (len(table), GRID[0] * GRID[1])).astype(np.uint32)
        firing[2] = 0  # concept 2 never fires
        sub.create_array("rows", shape=rows.shape, dtype="int64", chunks=(2, TOP_N))[:] = rows
        sub.create_array("maps", shape=maps.shape, dtype="float16", chunks=(2, TOP_N, maps.shape[2]))[:] = maps
        sub.create_array("firing_map", shape=firing.shape, dtype="uint32", chunks=(2, firing.shape[1]))[:] = firing
    return {"eval": eval_dir, "manifest": manifest, "out": tmp_path / "explorer"}


def _load_js(path: Path, name: str):
    text = path.read_text()
    prefix = f"window.{name} = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix):].strip().rstrip(";"))


def test_writes_layout_and_data(run):
    index = write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=32)
    out = run["out"]
    assert isinstance(index, ExplorerIndex)
    assert index.n_concepts == 5 and index.concept_ids == (0, 1, 3, 4)  # concept 2 never fires
    assert index.thumbnails == (0, 1, 2, 3, 4) and [r for r, _ in index.unreadable] == [5]
    for name in ("concepts.html", "concept.html", "static/explorer.js", "static/style.css", "data/meta.js"):
        assert (out / name).is_file(), name
    assert not (out / "data" / "c2.js").exists()
    assert Image.open(out / "thumbs" / "4.jpg").size == (32, 32)

    summary = _load_js(out / "data" / "concepts.js", "USAE_CONCEPTS")
    assert [r["id"] for r in summary] == [0, 1, 2, 3, 4]
    never = summary[2]
    assert never["fe"] is None and never["factor"] is None and never["cfp_alpha"] is None
    assert summary[1]["fires_alpha"] == 2 and summary[1]["energy_beta"] == pytest.approx(0.3)
    assert _load_js(out / "data" / "meta.js", "USAE_META")["pages"] == [0, 1, 3, 4]

    page = _load_js(out / "data" / "c1.js", "USAE_CONCEPT")
    assert page["id"] == 1 and page["prev"] == 0 and page["next"] == 3
    alpha = page["models"]["alpha"]["top"]
    assert [t["row"] for t in alpha] == [4, 5]
    assert alpha[1]["thumb"] is None  # the unreadable image keeps its slot without a thumbnail
    maps = zarr.open_group(run["eval"] / "heatmaps.zarr", mode="r")["alpha"]["maps"][1].astype(np.float64)
    for t in alpha + page["models"]["beta"]["top"]:
        grid = np.array(t["heatmap"])
        assert grid.shape == GRID
        assert t["thumb"] is None or (out / t["thumb"]).is_file()
    np.testing.assert_allclose(np.array(alpha[0]["heatmap"]).ravel(), np.round(maps[0], 3), atol=1e-9)


def test_pages_show_where_each_model_fires_the_concept(run):
    """Each model's firing map: per token position the share of validation images (counts / n_images) on the
    heatmap grid, and its largest share; every concept reads the rows of its own chunk."""
    write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=32)
    group = zarr.open_group(run["eval"] / "heatmaps.zarr", mode="r")
    for cid in (0, 1, 3, 4):
        page = _load_js(run["out"] / "data" / f"c{cid}.js", "USAE_CONCEPT")
        for m in MODELS:
            where = page["models"][m]["where"]
            share = group[m]["firing_map"][cid].reshape(GRID) / N_VAL
            np.testing.assert_allclose(where["share"], np.round(share, 3), atol=1e-12)
            assert where["max"] == pytest.approx(share.max()) and where["n_images"] == N_VAL


def test_an_evaluation_without_firing_maps_gives_pages_without_them(run):
    """Evaluations from before the firing maps (no ``firing_map``, no ``n_images``) still build, without maps."""
    group = zarr.open_group(run["eval"] / "heatmaps.zarr", mode="r+")
    del group.attrs["n_images"]
    for m in MODELS:
        del group[m]["firing_map"]
    write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=32)
    page = _load_js(run["out"] / "data" / "c1.js", "USAE_CONCEPT")
    assert all("where" not in page["models"][m] for m in MODELS)
    assert page["models"]["alpha"]["top"][0]["heatmap"] is not None


def test_html_has_no_urls(run):
    write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=32)
    for path in [*run["out"].glob("*.html"), *run["out"].glob("static/*")]:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path
        assert "fetch(" not in text, path


def test_page_concepts_limits_pages_and_thumbnails(run):
    index = write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=16, page_concepts=[3, 2, 99])
    assert index.concept_ids == (2, 3)
    assert index.thumbnails == (2,) and index.unreadable == ()
    assert len(_load_js(run["out"] / "data" / "concepts.js", "USAE_CONCEPTS")) == 5
    page = _load_js(run["out"] / "data" / "c2.js", "USAE_CONCEPT")
    assert page["models"]["alpha"]["top"] == [] and page["prev"] is None and page["next"] == 3


def test_card_html_renders_overlays(run):
    index = write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=32, page_concepts=[0])
    table = _concepts().set_index("concept")
    row = {**table.loc[4].to_dict(), "concept": 4}  # no page: thumbnails are made on demand
    card = card_html(row, MODELS, "explorer/", index=index)
    assert card.count('<img class="thumb"') == 4 and card.count('<img class="overlay"') == 4
    assert 'href="explorer/concept.html' not in card  # concept 4 has no page here
    assert "http://" not in card and "https://" not in card
    for m, slots in (("alpha", 2), ("beta", 2)):
        for slot in range(slots):
            with Image.open(run["out"] / "overlays" / f"c4_{m}_{slot}.png") as img:
                img.verify()
            with Image.open(run["out"] / "overlays" / f"c4_{m}_{slot}.png") as img:
                assert img.mode == "RGBA" and img.size == (32, 32)
    for rel in ("thumbs/1.jpg", "thumbs/3.jpg", "thumbs/2.jpg"):
        assert (run["out"] / rel).is_file()
    assert "by chance" not in card  # a table evaluated before the expected co-fires existed
    card = card_html({**row, "cofires_chance": 0.125}, MODELS, "explorer/", index=index)
    assert "<dt>co-fires</dt><dd>4</dd><dt>by chance</dt><dd>0.125</dd>" in card


def test_card_html_skips_unreadable_image(run):
    index = write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=32)
    row = {**_concepts().set_index("concept").loc[1].to_dict(), "concept": 1}
    card = card_html(row, MODELS, index=index)  # the explorer knows which images were unreadable
    assert card.count('<img class="thumb"') == 4  # alpha: 4 (5 unreadable); beta: 0, 4, 1
    assert "thumbs/5.jpg" not in card and 'href="concept.html?id=1"' in card


def test_colorize_is_transparent_where_inactive():
    grid = np.zeros(GRID)
    grid[1, 2] = 2.0
    img = np.asarray(colorize(grid, 24, alpha=0.5))
    assert img.shape == (24, 24, 4)
    assert img[0, 0, 3] == 0 and 0 < img[..., 3].max() <= 128


def test_meta_gives_each_table_column_one_format_and_shares(run):
    write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=16)
    formats = _load_js(run["out"] / "data" / "meta.js", "USAE_META")["formats"]
    assert formats["fires_alpha"] == {"kind": "int", "digits": 3} and formats["cofires"]["kind"] == "int"
    assert formats["energy_total"] == {"kind": "fixed", "digits": 3}  # 0.0 .. 0.004: every value shows
    assert formats["share_alpha"] == {"kind": "percent", "digits": 1}
    assert "id" not in formats and "factor" not in formats and "factor_alpha" not in formats
    summary = _load_js(run["out"] / "data" / "concepts.js", "USAE_CONCEPTS")
    # energy_<m> = 0.1 x fires: concept 0 fires 3 times in alpha and once in beta -> shares 3/4 and 1/4
    assert summary[0]["share_alpha"] == pytest.approx(0.75) and summary[0]["share_beta"] == pytest.approx(0.25)
    assert summary[2]["share_alpha"] is None  # no energy anywhere


def test_position_spread_is_a_column_and_a_card_figure(run):
    """concepts.parquet's position_spread is the explorer table's ``spread`` and a card's "position spread"; a table
    evaluated before it existed gives None and a card without it."""
    from usae.report.cards import card_html

    table = pd.read_parquet(run["eval"] / "concepts.parquet")
    table["position_spread"] = [0.25, 1.0, math.nan, 0.5, 0.75]
    table.to_parquet(run["eval"] / "concepts.parquet")
    write_explorer(run["eval"], run["manifest"], run["out"], MODELS, thumb_size=16)
    summary = _load_js(run["out"] / "data" / "concepts.js", "USAE_CONCEPTS")
    assert [r["spread"] for r in summary] == [0.25, 1.0, None, 0.5, 0.75]
    row = table.set_index("concept").loc[3].to_dict() | {"concept": 3}
    assert "<dt>position spread</dt><dd>0.5" in card_html(row, MODELS)
    del row["position_spread"]
    assert "position spread" not in card_html(row, MODELS)


def test_column_formats_of_rows():
    from usae.report.explorer import column_formats
    from usae.report.numbers import NumberFormat

    rows = [{"id": 0, "e": 6.287, "n": 3, "t": "x", "s": 0.5}, {"id": 1, "e": 4.4e-05, "n": None, "t": None, "s": 0.25}]
    assert column_formats(rows, {"s": NumberFormat("percent", 0)}) == {
        "e": {"kind": "sci", "digits": 3}, "n": {"kind": "int", "digits": 3}, "s": {"kind": "percent", "digits": 0}}


def test_card_gives_energy_shares_and_the_heatmap_scale(run):
    from usae.report.cards import card

    row = {**_concepts().set_index("concept").loc[1].to_dict(), "concept": 1}
    c = card(row, MODELS)
    alpha, beta = c["models"]
    assert alpha["share"] == pytest.approx(0.4) and beta["share"] == pytest.approx(0.6)  # fires 2 and 3
    assert alpha["scale_max"] == 1.0 and beta["scale_max"] == 1.0  # the largest top value of the filled slots
    never = card({**_concepts().set_index("concept").loc[2].to_dict(), "concept": 2}, MODELS)
    assert [m["scale_max"] for m in never["models"]] == [None, None] and never["models"][0]["share"] is None
