"""The results layout: one function per output, concrete for the CLI, wildcards for the rules."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from usae import paths
from usae.config import load_config

TINY = Path(__file__).resolve().parent / "workflow/tiny_config.yaml"


def _cfg(**changes):
    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    return load_config(data)


def test_rule_patterns_keep_the_wildcards_open():
    cfg = _cfg()
    assert paths.manifest(cfg) == "results/tiny/manifest.parquet"
    assert paths.extract_part(cfg) == "results/tiny/acts/{backbone}/part{part}.zarr"
    assert paths.aligned(cfg) == "results/tiny/aligned/{model}/{layer}.zarr"
    assert paths.aligned_stats(cfg) == "results/tiny/aligned/{model}/{layer}.stats.json"
    assert [f(cfg) for f in (paths.run_dir, paths.run_model, paths.run_log, paths.run_eval, paths.run_report)] == [
        "results/runs/{run}", "results/runs/{run}/model", "results/runs/{run}/train_log.parquet",
        "results/runs/{run}/eval", "results/runs/{run}/report"]
    assert paths.log(cfg, "prepare_activations", "{model}_{layer}") == \
        "results/logs/prepare_activations/{model}_{layer}.log"
    assert paths.benchmark(cfg, "train_usae", "{run}") == "results/benchmarks/train_usae/{run}.tsv"


def test_concrete_paths_follow_the_config():
    cfg = _cfg(results="out", models={"a14": {"name": "x", "layer": 1}, "b16": {"name": "y"}})
    assert paths.extract_parts(cfg, "a14") == ["out/tiny/acts/a14/part0.zarr", "out/tiny/acts/a14/part1.zarr"]
    assert paths.sharing_stats(cfg, "a14") == []
    assert paths.run_stores(cfg, "solo_b16") == {"b16": "out/tiny/aligned/b16/final.zarr"}
    assert list(paths.run_stores(cfg, "k2")) == ["a14", "b16"]  # the run's model order
    assert paths.synthetic_images(cfg) == "out/tiny/synthetic"
    assert paths.synthetic_images(_cfg(dataset={"name": "imgs", "source": "folder", "path": "/x"})) is None


def test_models_that_differ_only_in_layer_share_the_extraction_parts():
    cfg = _cfg(results="out", models={"a1": {"name": "x", "layer": 1}, "b": {"name": "y"}, "a3": {"name": "x", "layer": 3},
                                      "a3w": {"name": "x", "layer": 3, "image_size": 112}}, runs={"all": {}})
    assert paths.extract_parts(cfg, "a3") == paths.extract_parts(cfg, "a1") == [
        "out/tiny/acts/a1/part0.zarr", "out/tiny/acts/a1/part1.zarr"]  # named after the first in config order
    assert paths.extract_parts(cfg, "a3w") == ["out/tiny/acts/a3w/part0.zarr", "out/tiny/acts/a3w/part1.zarr"]
    assert paths.sharing_stats(cfg, "a1") == ["out/tiny/aligned/a3/block3.stats.json"]
    assert paths.sharing_stats(cfg, "a3") == ["out/tiny/aligned/a1/block1.stats.json"]
    assert paths.sharing_stats(cfg, "a3", dataset="other") == ["out/other/aligned/a1/block1.stats.json"]


def test_all_targets_are_every_aligned_store_then_each_runs_outputs():
    cfg = _cfg()
    runs = sorted(cfg.runs)
    expected = ["results/tiny/aligned/a14/final.zarr/zarr.json", "results/tiny/aligned/b16/final.zarr/zarr.json"]
    expected += [f"results/runs/{r}/{out}" for out in ("model", "eval", "report") for r in runs]
    multi_model = [r for r in runs if len(cfg.runs[r].models) > 1]
    assert multi_model and len(multi_model) < len(runs)
    compare = ["results/compare/index.html"]  # two or more runs: the page comparing them
    assert paths.all_targets(cfg) == expected + [f"results/runs/{r}/maco" for r in multi_model] + compare
    without = dataclasses.replace(cfg, maco=dataclasses.replace(cfg.maco, enabled=False))
    assert paths.all_targets(without) == expected + compare
    one_run = dataclasses.replace(without, runs={runs[0]: cfg.runs[runs[0]]})
    assert paths.all_targets(one_run)[-1] == f"results/runs/{runs[0]}/report"


def test_store_markers_round_trip_and_refuse_other_paths():
    store = "results/tiny/aligned/{model}/{layer}.zarr"
    assert paths.store_marker(store) == "results/tiny/aligned/{model}/{layer}.zarr/zarr.json"
    assert paths.store_of(paths.store_marker(store)) == store
    assert paths.store_of(Path("a/b.zarr/zarr.json")) == "a/b.zarr"
    with pytest.raises(ValueError, match=r"a/b.zarr is no store marker \(expected <store>/zarr.json\)"):
        paths.store_of("a/b.zarr")


def test_patterns_match_stage_path():
    cfg = _cfg()
    assert Path(paths.aligned(cfg, "a14", "final")) == paths.stage_path(paths.ALIGNED, "results", dataset="tiny",
                                                                        model="a14", layer="final")
