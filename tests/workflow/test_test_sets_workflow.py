"""Other data without retraining: a test set of generated images with other factor distributions."""

import json

import numpy as np
import pytest
from pipeline_helpers import planned_jobs, snakemake, write_config

from usae.activations.store import open_store

TEST_SETS = {"circles": {"seed": 7, "synthetic": {"n_images": 8, "image_size": 64, "min_objects": 2,
                                                  "factor_weights": {"shape": {"circle": 1}}}}}


def test_dry_run_plans_the_test_set_stores_and_one_evaluation_per_run(tmp_path):
    write_config(tmp_path, test_sets=TEST_SETS)
    jobs = planned_jobs(tmp_path)
    assert {k: jobs[k] for k in jobs if "test_set" in k} == {
        "build_test_set_manifest": 1, "extract_test_set_activations": 4, "prepare_test_set_activations": 2,
        "evaluate_test_set": 3}
    assert jobs["extract_activations"] == 4 and jobs["render_report"] == 3  # the training data's, unchanged


@pytest.mark.slow
def test_a_trained_run_is_evaluated_and_reported_on_the_test_set(tmp_path):
    write_config(tmp_path, test_sets=TEST_SETS, runs={"usae": {}}, **{"maco.enabled": False})
    snakemake(tmp_path)
    results = tmp_path / "results"
    train, test = (open_store(results / d / "aligned/a14/final.zarr") for d in ("tiny", "circles"))
    assert test.attrs["standardization"] == train.attrs["standardization"]
    assert test["val"]["tokens"].shape[0] == 8 and test["train"]["tokens"].shape[0] == 0
    metrics = json.loads((results / "runs/usae/eval_circles/metrics.json").read_text())
    assert metrics["n_images"] == 8 and np.isfinite(np.asarray(metrics["r2_per_dim"], dtype=float)).all()
    assert (results / "runs/usae/eval_circles/concepts.parquet").is_file()
    html = (results / "runs/usae/report/index.html").read_text()
    assert 'id="other-data"' in html and "training data (validation)" in html and "<th>circles</th>" in html
    assert not list(results.glob("*/acts/*/*.zarr"))  # extract.keep false: the test set's parts go too
    assert planned_jobs(tmp_path) == {}
