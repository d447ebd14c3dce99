"""Config section test_sets and the generator settings for other data."""

import pytest

from usae import paths
from usae.config import load_config

BASE = {"models": {"a": {"name": "x"}}}


def test_test_sets_are_dataset_sections_named_by_their_key():
    cfg = load_config({**BASE, "test_sets": {"other": {"seed": 3, "synthetic": {
        "n_images": 8, "min_objects": 2, "factor_weights": {"shape": {"circle": 1}}}}}})
    other = cfg.test_sets["other"]
    assert other.name == "other" and other.seed == 3 and other.synthetic.min_objects == 2
    assert paths.manifest(cfg, dataset="other") == "results/other/manifest.parquet"
    assert paths.aligned(cfg, "a", "final", dataset="other") == "results/other/aligned/a/final.zarr"
    assert paths.synthetic_images(cfg, dataset="other") == "results/other/synthetic"
    assert paths.run_eval_on(cfg, "usae", "other") == "results/runs/usae/eval_other"
    assert "results/runs/usae/eval_other" in paths.all_targets(cfg)
    assert load_config(BASE).test_sets == {}


@pytest.mark.parametrize(("test_sets", "message"), [
    ({"synthetic": {}}, r"test_sets.synthetic: the name is taken \(dataset.name"),
    ({"logs": {}}, "test_sets.logs: the name is taken"),
    ({"o": {"name": "p"}}, "test_sets.o.name: a test set is named by its key"),
    ({"o": {"sede": 1}}, r"test_sets.o: unknown key\(s\) \['sede'\] \(did you mean 'seed'\?\)"),
    ({"o": {"source": "folder"}}, "test_sets.o.path is required"),
    ({"o": {"synthetic": {"factor_weights": {"shape": {"blob": 1}}}}},
     r"test_sets.o.synthetic.factor_weights.shape: unknown value\(s\) \['blob'\]"),
    ({"o": {"synthetic": {"min_objects": 4}}}, "test_sets.o.synthetic.min_objects = 4 is more than"),
    ({"b a": {}}, "test_sets.b a.name = .b a. must be a non-empty name"),
])
def test_bad_test_sets_are_named(test_sets, message):
    with pytest.raises(ValueError, match=message):
        load_config({**BASE, "test_sets": test_sets})


def test_unknown_test_set_is_refused_by_the_paths():
    with pytest.raises(ValueError, match=r"test set 'nope' is not configured; test_sets has \[\]"):
        paths.synthetic_images(load_config(BASE), dataset="nope")
