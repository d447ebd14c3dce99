"""End-to-end Snakemake runs of a tiny config: outputs, logs, and which jobs a change reruns."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pipeline_helpers import planned_jobs, snakemake, write_config

from usae.activations.store import open_store

pytestmark = pytest.mark.slow


def test_default_target_trains_a_model(built):
    import usae

    model = usae.USAE.load(built / "results/runs/usae/model")
    assert model.names == ["a14", "b16"] and model.dims == {"a14": 32, "b16": 48}
    assert model.meta["steps"] == 12 and model.meta["provenance"]["grid"] == [7, 7]
    stats = open_store(built / "results/tiny/aligned/a14/final.zarr").attrs["standardization"]
    assert model.meta["standardization"]["a14"]["std"] == stats["std"]
    assert (built / "results/runs/usae/train_log.parquet").exists()


def test_default_target_builds_aligned_stores(built):
    results = built / "results" / "tiny"
    a, b = (open_store(results / "aligned" / m / "final.zarr") for m in ("a14", "b16"))
    assert a.attrs["source_grid"] == [8, 8] and b.attrs["source_grid"] == [7, 7]
    for split in ("train", "val"):
        assert a[split]["tokens"].shape[:2] == b[split]["tokens"].shape[:2]
        assert a[split]["tokens"].shape[1] == 49
        np.testing.assert_array_equal(a[split]["rows"][:], b[split]["rows"][:])
    assert a["train"]["tokens"].shape[0] + a["val"]["tokens"].shape[0] == 24
    assert a["train"]["tokens"].shape[2] == 32 and b["train"]["tokens"].shape[2] == 48
    train = a["train"]["tokens"][:].astype(np.float64)
    assert abs(train.mean()) < 0.2 and 0.8 < train.std() < 1.2
    assert (results / "aligned" / "a14" / "final.stats.json").exists()


def test_every_job_wrote_its_log_and_benchmark(built):
    logs = sorted(p.relative_to(built / "results" / "logs").as_posix()
                  for p in (built / "results" / "logs").rglob("*.log"))
    assert "build_manifest/tiny.log" in logs
    assert len([p for p in logs if p.startswith("extract_activations/")]) == 4
    assert len([p for p in logs if p.startswith("prepare_activations/")]) == 2
    assert "train_usae/usae.log" in logs and "train_usae/k2.log" in logs
    assert len(list((built / "results" / "benchmarks").rglob("*.tsv"))) == len(logs)
    assert "images/s" in (built / "results/logs/extract_activations/a14_part0.log").read_text()


def test_nothing_reruns_when_nothing_changed(built):
    assert planned_jobs(built) == {}


def test_layer_change_reruns_only_that_model(pipeline_copy):
    write_config(pipeline_copy, **{"models.a14.layer": 0})
    assert planned_jobs(pipeline_copy) == {"extract_activations": 2, "prepare_activations": 1, "train_usae": 2,
                                           "evaluate_usae": 2, "maco": 2, "render_report": 3, "compare_runs": 1,
                                           "all": 1}
    out = snakemake(pipeline_copy, "-n").stdout
    jobs = re.sub(r"Workflow ID: \S+", "", out.split("Job stats:")[0])  # a random UUID may spell "b16"
    assert "a14/block0" in out and "b16" not in jobs


def test_standardization_change_extracts_and_prepares_again(pipeline_copy):
    """The parts were deleted (extract.keep false): preparing again extracts them again, then deletes them.

    Run up to the aligned stores only: what comes after them reruns as after any new store (the plan below;
    test_killed_pipeline.py runs a whole pipeline after a partial one)."""
    write_config(pipeline_copy, **{"prepare.standardize": "per_dim"})
    assert planned_jobs(pipeline_copy) == {"extract_activations": 4, "prepare_activations": 2, "train_usae": 3,
                                           "evaluate_usae": 3, "maco": 2, "render_report": 3, "compare_runs": 1,
                                           "all": 1}
    snakemake(pipeline_copy, "--until", "prepare_activations")
    stats = open_store(pipeline_copy / "results/tiny/aligned/b16/final.zarr").attrs["standardization"]
    assert stats["kind"] == "per_dim" and len(stats["mean"]) == 48
    assert not list((pipeline_copy / "results/tiny/acts").rglob("*.zarr"))
    assert planned_jobs(pipeline_copy, "--until", "prepare_activations") == {}
    assert planned_jobs(pipeline_copy)["train_usae"] == 3  # the new stores' runs, and only after them


def test_training_change_reruns_only_training(pipeline_copy):
    write_config(pipeline_copy, **{"train.max_steps": 8})
    # Both runs inherit train.max_steps; each run's report compares all runs.
    assert planned_jobs(pipeline_copy) == {"train_usae": 3, "evaluate_usae": 3, "maco": 2, "render_report": 3,
                                           "compare_runs": 1, "all": 1}


def test_how_a_stage_runs_reruns_nothing_yet_reaches_its_job(pipeline_copy):
    """Keys declared not to change results are no rule's params; the jobs read them from the whole config."""
    write_config(pipeline_copy, **{"train.read_threads": 2, "train.checkpoint_every": 7, "train.gather": "device",
                                   "extract.num_workers": 1})
    assert planned_jobs(pipeline_copy) == {}
    snakemake(pipeline_copy, "--force", "results/runs/k2/model")  # this job only: it resumes its last checkpoint
    log = (pipeline_copy / "results/logs/train_usae/k2.log").read_text()
    assert "train.gather = 'device' on a CPU" in log and "(step 12)" in log


def test_tau_change_reruns_only_evaluation_and_report(pipeline_copy):
    write_config(pipeline_copy, **{"evaluate.tau": 0.2})
    assert planned_jobs(pipeline_copy) == {"evaluate_usae": 3, "maco": 2, "render_report": 3, "compare_runs": 1,
                                           "all": 1}


def test_chance_alpha_reruns_evaluation_only_off_its_default(pipeline_copy):
    """evaluate.chance_alpha came after runs were evaluated: written at its default it reruns nothing."""
    write_config(pipeline_copy, **{"evaluate.chance_alpha": 0.05})
    assert planned_jobs(pipeline_copy) == {}
    write_config(pipeline_copy, **{"evaluate.chance_alpha": 0.01})
    assert planned_jobs(pipeline_copy) == {"evaluate_usae": 3, "maco": 2, "render_report": 3, "compare_runs": 1,
                                           "all": 1}


def test_evaluation_reports_metrics_and_planted_factors(built):
    import json

    import pandas as pd

    metrics = json.loads((built / "results/runs/usae/eval/metrics.json").read_text())
    assert metrics["models"] == ["a14", "b16"] and len(metrics["r2_per_dim"]) == 2
    assert metrics["n_tokens"] == 49 * metrics["n_images"] and "firing_entropy" in metrics["definitions"]
    table = pd.read_parquet(built / "results/runs/usae/eval/concepts.parquet")
    assert len(table) == 64 and {"factor", "factor_auroc", "firing_entropy", "top_rows_a14"} <= set(table.columns)


def test_bad_value_stops_before_any_job(tmp_path):
    write_config(tmp_path, **{"prepare.standardize": "zscore"})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "standardize" in message and "scalar" in message and "zscore" in message
    assert not (tmp_path / "results").exists()


def test_cross_field_error_names_the_key(tmp_path):
    write_config(tmp_path, **{"models.a14.layer": "last"})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0 and "layer" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("changes, message", [
    ({"models.b16.layer": 7}, r"models.b16: layer 7 is out of range .* depth 2"),
    ({"prepare.grid": 8}, r"prepare.grid = 8 is larger than models.b16's patch grid 7x7"),
    ({"sae.k": 64}, r"sae.k = 64 must be smaller than sae.n_latents = 64"),
    ({"extract.batch_sise": 8}, r"batch_sise"),
    ({"train.lr": "fast"}, r"'fast' is not of type 'number'"),
])
def test_impossible_config_stops_before_any_job(tmp_path, changes, message):
    write_config(tmp_path, **changes)
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stdout + proc.stderr), proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_config_without_models_stops_before_any_job(tmp_path):
    write_config(tmp_path, models={}, runs=None)
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0 and "models" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_usae_command_matches_the_workflow(built, tmp_path):
    shutil.copy(built / "config.yaml", tmp_path / "config.yaml")
    for stage in ("manifest", "extract", "prepare"):
        proc = subprocess.run([sys.executable, "-m", "usae.cli", stage, "-c", "config.yaml"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    assert "its extraction parts are deleted (extract.keep: false)" in proc.stdout
    assert not list((tmp_path / "results/tiny/acts").rglob("*.zarr"))
    by_hand = open_store(tmp_path / "results/tiny/aligned/b16/final.zarr")
    by_rule = open_store(built / "results/tiny/aligned/b16/final.zarr")
    np.testing.assert_array_equal(by_hand["val"]["tokens"][:], by_rule["val"]["tokens"][:])
    assert by_hand.attrs["standardization"] == by_rule.attrs["standardization"]


def test_usae_maco_matches_the_rule_and_takes_concept_ids(pipeline_copy):
    import json

    by_rule = json.loads((pipeline_copy / "results/runs/usae/maco/maco.json").read_text())
    shutil.rmtree(pipeline_copy / "results/runs/usae/maco")
    usae_maco = [sys.executable, "-m", "usae.cli", "maco", "-c", "config.yaml", "--run", "usae"]
    proc = subprocess.run(usae_maco, cwd=pipeline_copy, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    by_hand = json.loads((pipeline_copy / "results/runs/usae/maco/maco.json").read_text())
    assert [c["id"] for c in by_hand["concepts"]] == [c["id"] for c in by_rule["concepts"]]
    for hand, rule in zip(by_hand["concepts"], by_rule["concepts"]):
        for model in ("a14", "b16"):
            assert hand["models"][model]["achieved"] == pytest.approx(rule["models"][model]["achieved"], rel=1e-3)
    proc = subprocess.run([*usae_maco, "--concept", "5", "--concept", "7"], cwd=pipeline_copy, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads((pipeline_copy / "results/runs/usae/maco/maco.json").read_text())["concepts"]
    assert [(c["id"], c["kind"]) for c in chosen] == [(5, "chosen"), (7, "chosen")]


def test_snakemake_report_lists_the_run_report(built, tmp_path):
    import zipfile

    snakemake(built, "--report", str(tmp_path / "report.zip"))
    archive = zipfile.ZipFile(tmp_path / "report.zip")
    names = archive.namelist()
    assert any(n.endswith("report.html") for n in names)
    titles = [archive.read(n).decode() for n in names if n.endswith("/index.html")]
    assert sum("Universal SAE report: run" in t for t in titles) == 3  # one site per run


def test_a_run_override_changes_only_that_run(pipeline_copy):
    write_config(pipeline_copy, **{"runs.k2.sae.k": 3})
    assert planned_jobs(pipeline_copy) == {"train_usae": 1, "evaluate_usae": 1, "maco": 1, "render_report": 3,
                                           "compare_runs": 1, "all": 1}


def test_named_layers_get_their_own_paths(tmp_path):
    """A torchvision model at a graph node: the driver checks it, and its stores are named after the node."""
    tv = {"library": "torchvision", "name": "resnet18", "pretrained": False, "image_size": 112, "layer": "layer3"}
    write_config(tmp_path, **{"models.tv": tv, "runs": {"usae": {}}})
    assert planned_jobs(tmp_path)["extract_activations"] == 6
    out = snakemake(tmp_path, "-n").stdout
    assert "results/tiny/acts/tv/part1.zarr" in out and "results/tiny/aligned/tv/layer3.zarr" in out
    write_config(tmp_path, **{"models.tv": {**tv, "layer": "layer5"}, "runs": {"usae": {}}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0 and "models.tv.layer = 'layer5' is not a graph node" in proc.stdout + proc.stderr


def test_a_damaged_model_stops_the_workflow_and_keeps_its_evaluation(pipeline_copy):
    model = pipeline_copy / "results/runs/usae/model"
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a copy cut short
    metrics = pipeline_copy / "results/runs/usae/eval/metrics.json"
    before = metrics.stat().st_mtime_ns
    failed = snakemake(pipeline_copy, check=False)
    assert failed.returncode != 0
    shown = "results/runs/usae/model"  # the workflow's paths are relative to its working directory
    assert f"{shown}/model.safetensors is damaged: " in failed.stderr
    assert f"delete {shown} and rerun" in failed.stderr
    assert metrics.stat().st_mtime_ns == before  # no job ran, nothing was deleted
    shutil.rmtree(model)
    assert planned_jobs(pipeline_copy) == {"train_usae": 1, "evaluate_usae": 1, "maco": 1, "render_report": 3,
                                           "compare_runs": 1, "all": 1}


def test_a_copied_results_folder_names_the_runs_a_config_change_leaves_stale(pipeline_copy):
    """Without .snakemake/metadata (a results folder copied or moved) Snakemake cannot see a params change;
    the driver compares each saved model's and aligned store's recorded settings with the config and says
    how to redo them."""
    shutil.rmtree(pipeline_copy / ".snakemake" / "metadata")
    assert planned_jobs(pipeline_copy) == {}
    write_config(pipeline_copy, **{"sae.n_latents": 32})
    dry = snakemake(pipeline_copy, "-n")
    assert "Nothing to be done" in dry.stdout  # Snakemake alone would keep the stale models
    warned = dry.stdout + dry.stderr
    for run in ("usae", "solo_b16"):  # k2 overrides only k: n_latents reaches it too
        model = f"results/runs/{run}/model"
        assert f"{model} was trained with settings the config now changes (sae.n_latents: 64 -> 32)" in warned
        assert f"--forcerun {model}" in warned
    assert "results/runs/k2/model was trained with" in warned
    assert planned_jobs(pipeline_copy, "--forcerun", "results/runs/usae/model")["train_usae"] == 1
    write_config(pipeline_copy, **{"prepare.grid": 6})
    dry = snakemake(pipeline_copy, "-n")
    assert "Nothing to be done" in dry.stdout
    store = "results/tiny/aligned/a14/final.zarr"
    warned = dry.stdout + dry.stderr
    assert f"{store} was made with settings the config now changes (prepare.grid: 7 -> 6)" in warned
    assert f"--forcerun {store}/zarr.json" in warned
    assert "was trained with" not in warned  # the models' own settings are the config's again
    write_config(pipeline_copy, **{"models.b16.image_size": 128})
    dry = snakemake(pipeline_copy, "-n")
    warned = dry.stdout + dry.stderr
    store = "results/tiny/aligned/b16/final.zarr"
    assert f"{store} was made with settings the config now changes (models.b16.image_size: 112 -> 128)" in warned
    assert "--forcerun results/tiny/acts/b16/part0.zarr/zarr.json results/tiny/acts/b16/part1.zarr/zarr.json" \
        in warned  # a model changed: its extraction parts are redone, the store after them
    assert "aligned/a14" not in warned
    write_config(pipeline_copy, **{"extract.batch_size": 4, "extract.num_workers": 1})  # the second: how it runs
    dry = snakemake(pipeline_copy, "-n")
    warned = dry.stdout + dry.stderr
    for model in ("a14", "b16"):
        store = f"results/tiny/aligned/{model}/final.zarr"
        assert f"{store} was made with settings the config now changes (extract.batch_size: 8 -> 4)" in warned
        assert f"--forcerun results/tiny/acts/{model}/part0.zarr/zarr.json results/tiny/acts/{model}/part1.zarr/" \
               "zarr.json" in warned
    write_config(pipeline_copy, **{"evaluate.tau": 0.2, "maco.steps": 4})
    dry = snakemake(pipeline_copy, "-n")
    assert "Nothing to be done" in dry.stdout
    warned = dry.stdout + dry.stderr
    for run in ("usae", "k2", "solo_b16"):
        evaluation = f"results/runs/{run}/eval"
        assert f"{evaluation} was evaluated with settings the config now changes (evaluate.tau: 0.1 -> 0.2)" in warned
        assert f"--forcerun {evaluation}\n" in warned + "\n"
    assert "maco was made with" not in warned  # redoing the evaluation redoes its MACO images
    assert planned_jobs(pipeline_copy, "--forcerun", "results/runs/usae/eval") == {
        "evaluate_usae": 1, "maco": 1, "render_report": 3, "compare_runs": 1, "all": 1}  # each report reads every evaluation
    write_config(pipeline_copy, **{"maco.steps": 4})
    dry = snakemake(pipeline_copy, "-n")
    warned = dry.stdout + dry.stderr
    for run in ("usae", "k2"):
        assert f"results/runs/{run}/maco was made with settings the config now changes (maco.steps: 3 -> 4)" in warned
    assert "evaluated with" not in warned and "solo_b16/maco" not in warned


def test_maco_images_of_each_multi_model_run(built):
    import json

    import pandas as pd

    from usae.evaluation.universal import shared_concepts

    qualified = {}
    for run in ("usae", "k2"):
        maco = built / f"results/runs/{run}/maco"
        report = json.loads((maco / "maco.json").read_text())
        assert report["models"] == ["a14", "b16"] and report["objective"] == "mean"
        # The universal picks: every concept with firing entropy >= 0.9 that the models fire together (at least
        # min_cofires times, beyond chance), up to n_universal, first.
        metrics = json.loads((built / f"results/runs/{run}/eval/metrics.json").read_text())
        table = pd.read_parquet(built / f"results/runs/{run}/eval/concepts.parquet")
        assert (report["min_cofires"], report["n_tokens"], report["chance_alpha"]) == (
            metrics["min_cofires"], metrics["n_tokens"], metrics["chance_alpha"])
        universal = (table["firing_entropy"] >= report["settings"]["min_entropy"]).to_numpy()
        qualifying = set(table["concept"][universal & shared_concepts(table, metrics["min_cofires"],
                                                                      metrics["n_tokens"], metrics["chance_alpha"])])
        picked = [c["id"] for c in report["concepts"] if c["kind"] == "universal"]
        qualified[run] = qualifying
        assert set(picked) <= qualifying, (run, picked, qualifying)
        assert len(picked) == min(report["settings"]["n_universal"], len(qualifying)), (run, picked, qualifying)
        assert [c["kind"] for c in report["concepts"]][:len(picked)] == ["universal"] * len(picked)
        for concept in report["concepts"]:
            for model, numbers in concept["models"].items():
                assert (maco / numbers["image"]).exists(), (run, concept["id"], model)
    # On the tiny run's tokens k2 (k = 2) has no concept co-firing beyond chance at each token position (its one
    # concept beyond the position-free chance co-fired once); usae has some, so the picks above are tested.
    assert qualified["usae"], qualified
    assert not (built / "results/runs/solo_b16/maco").exists()
    assert (built / "results/tiny/maco_spectrum.npz").exists()


def test_maco_change_reruns_only_maco_and_reports(pipeline_copy):
    write_config(pipeline_copy, **{"maco.steps": 4})
    # The comparison page links every report, so it follows them (test_compare_after_reports.py).
    assert planned_jobs(pipeline_copy) == {"maco": 2, "render_report": 2, "compare_runs": 1, "all": 1}


def test_stores_hold_no_snakemake_files_and_open_without_warnings(built):
    """The rules name a store by its zarr.json, so Snakemake writes no .snakemake_timestamp into it."""
    import warnings

    import zarr

    stores = sorted((built / "results/tiny").glob("*/*/**/*.zarr"))
    assert len(stores) == 2  # the aligned stores; the extraction parts are deleted (test_kept_parts.py keeps them)
    for store in stores:
        assert not list(store.rglob(".snakemake*")), store
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # zarr warns about any file that is no part of the hierarchy
            assert list(zarr.open_group(store, mode="r").members(max_depth=None))


def test_tracking_turned_on_after_a_run_gets_its_rows_and_evaluation(pipeline_copy):
    """Nothing reruns; a forced training reruns from its final checkpoint (no step again) and sends the rows."""
    pytest.importorskip("tensorboard", reason="tensorboard is the `tracking` extra: pip install 'usae[tracking]'")
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = pipeline_copy / "results/runs/usae"
    weights = (run / "model/model.safetensors").read_bytes()
    write_config(pipeline_copy, **{"tracking": {"backend": "tensorboard"}})
    assert planned_jobs(pipeline_copy) == {}  # a tracker changes no result: nothing reruns
    snakemake(pipeline_copy, "--forcerun", "train_usae", "results/runs/usae/eval")
    assert (run / "model/model.safetensors").read_bytes() == weights
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    log = pd.read_parquet(run / "train_log.parquet")
    assert [e.step for e in events.Scalars("train/loss/a14")] == log["step"].tolist() == [3, 7, 11]
    assert [e.step for e in events.Scalars("eval/r2_per_dim/a14/b16")] == [12]
