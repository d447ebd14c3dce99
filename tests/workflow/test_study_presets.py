"""The study presets plan what they say: presets/depth.yaml one extraction job per backbone (its four layers from
one forward pass), one preparation per (backbone, layer) and one run per depth; presets/models.yaml each model
extracted once for runs over 2, 3 and 4 models; both compared on one page."""

from pathlib import Path

import pytest
import yaml

from pipeline_helpers import REPO, planned_jobs


@pytest.mark.parametrize(("preset", "n_backbones", "n_models", "runs"), [
    ("depth", 2, 8, {"d1": 2, "d2": 2, "d3": 2, "d4": 2}),
    ("models", 4, 4, {"m2": 2, "m3": 3, "m4": 4}),
])
def test_study_preset_plans_its_runs(tmp_path: Path, preset: str, n_backbones: int, n_models: int,
                                     runs: dict[str, int]) -> None:
    path = REPO / "presets" / f"{preset}.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert {name: len(run["models"]) for name, run in cfg["runs"].items()} == runs
    jobs = planned_jobs(tmp_path, "--configfile", str(path))
    assert jobs["extract_activations"] == n_backbones and jobs["prepare_activations"] == n_models
    assert jobs["train_usae"] == len(runs) and jobs["evaluate_usae"] == len(runs)
    assert jobs["compare_runs"] == 1
