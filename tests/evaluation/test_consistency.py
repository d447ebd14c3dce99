"""Consistency with independent (solo) SAEs: hand cases, which runs count as solo, and the report's rows."""

import json
import math

import numpy as np
import pandas as pd
import torch

from usae.config import SAEConfig
from usae.evaluation.consistency import consistency_with_solo_runs, solo_consistency, solo_runs
from usae.sae.model import USAE


def test_solo_consistency_of_a_permuted_dictionary():
    atoms = torch.nn.functional.normalize(torch.randn(16, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    found = solo_consistency(atoms, atoms[torch.randperm(16, generator=torch.Generator().manual_seed(1))],
                             np.array([0, 2]))
    assert found["share"] == 1.0 and found["top"] == 2 and math.isclose(found["top_cos"], 1.0)
    assert found["baseline"] < 0.5  # random atoms in 64 dimensions rarely reach cosine 0.5


def _save(path, dims, seed):
    model = USAE(dims, SAEConfig(n_latents=8, k=2, aux_k=0), seed=seed)
    model.save(path / "model")
    return path


def test_only_runs_spanning_one_of_the_models_are_compared(tmp_path):
    runs = {"usae": _save(tmp_path / "usae", {"a": 4, "b": 6}, 0), "solo_a": _save(tmp_path / "solo_a", {"a": 4}, 1),
            "solo_c": _save(tmp_path / "solo_c", {"c": 3}, 1), "pair": _save(tmp_path / "pair", {"a": 4, "b": 6}, 2)}
    assert solo_runs(["a", "b"], runs) == {"solo_a": "a"}
    table = pd.DataFrame({"concept": range(8), "cofires": [0, 5, 1, 9, 0, 0, 2, 0]})
    rows = consistency_with_solo_runs(runs["usae"], ["a", "b"], table, runs, top=3)
    assert [(r["model"], r["run"], r["top"]) for r in rows] == [("a", "solo_a", 3)]
    usae = USAE.load(runs["usae"] / "model").dictionary("a")
    solo = USAE.load(runs["solo_a"] / "model").dictionary("a")
    assert rows[0] == {"model": "a", "run": "solo_a", **solo_consistency(usae, solo, np.array([3, 1, 6]))}
    assert consistency_with_solo_runs(runs["solo_a"], ["a"], table, runs) == []  # one model: nothing to compare
    assert json.loads((runs["usae"] / "model" / "config.json").read_text())["models"] == ["a", "b"]
