"""Consistency of a USAE with independent SAEs trained on one of its models alone (paper Fig. 7).

A run of the same config that spans exactly one of the USAE's models is that model's
independent ("solo") SAE. Each model's USAE dictionary is matched one-to-one with the solo
dictionary by the Hungarian algorithm on cosine (:func:`usae.metrics.hungarian_consistency`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from usae.metrics import hungarian_consistency

logger = logging.getLogger(__name__)

BASELINE_SEED = 20250205
"""Seed of the random baseline dictionary (not any model's initialisation seed)."""
TOP_COFIRING = 1000
"""Concepts with the most co-fires whose mean matched cosine is reported."""


def solo_consistency(usae_atoms: Tensor, solo_atoms: Tensor, concepts: np.ndarray) -> dict[str, Any]:
    """One model's USAE dictionary against its independent SAE's.

    ``share``: fraction of USAE atoms whose Hungarian match has cosine > 0.5. ``baseline``: the
    same for ``m`` random atoms drawn as ``N(0, 1) * std_d + mean_d`` (the solo dictionary's
    per-dimension std and mean, seed :data:`BASELINE_SEED`). ``top_cos``: mean matched cosine
    over ``concepts`` (NaN matches, USAE atoms left unmatched, are skipped).

    Args:
        usae_atoms: ``(m, d)`` the USAE's decoder rows for the model.
        solo_atoms: ``(m2, d)`` the independent SAE's decoder rows.
        concepts: ``(n,)`` concept ids whose matched cosines are averaged.

    Returns:
        ``{"share", "baseline", "top_cos", "top"}`` (``top`` = ``len(concepts)``).
    """
    share, matched = hungarian_consistency(usae_atoms, solo_atoms)
    gen = torch.Generator().manual_seed(BASELINE_SEED)
    noise = torch.randn(usae_atoms.shape[0], solo_atoms.shape[1], generator=gen, dtype=solo_atoms.dtype)
    baseline, _ = hungarian_consistency(noise * solo_atoms.std(dim=0) + solo_atoms.mean(dim=0), solo_atoms)
    return {"share": share, "baseline": baseline, "top_cos": float(np.nanmean(matched.numpy()[concepts])),
            "top": len(concepts)}


def solo_runs(models: list[str], runs: dict[str, Path]) -> dict[str, str]:
    """Run name -> model, for the runs that span exactly one of ``models``."""
    found = {}
    for name, path in sorted(runs.items()):
        spans = json.loads((Path(path) / "model" / "config.json").read_text())["models"]
        if len(spans) == 1 and spans[0] in models:
            found[name] = spans[0]
    return found


def consistency_with_solo_runs(run_dir: Path, models: list[str], table: pd.DataFrame,
                               runs: dict[str, Path], top: int = TOP_COFIRING) -> list[dict[str, Any]]:
    """Compare the USAE in ``run_dir`` with every solo run among ``runs`` (paper Fig. 7).

    Args:
        run_dir: The USAE's run folder (``model/``).
        models: The USAE's models (fewer than two: nothing to compare).
        table: Its ``concepts.parquet`` (``concept``, ``cofires``): the ``top`` most co-firing
            concepts get their mean matched cosine reported.
        runs: Run name -> run folder, this run included.

    Returns:
        One row per solo run, by run name: ``model``, ``run`` and :func:`solo_consistency`'s figures.
    """
    from usae.sae.model import USAE

    if len(models) < 2:
        return []
    usae = USAE.load(Path(run_dir) / "model")
    busiest = table.sort_values("cofires", ascending=False)["concept"].head(top).to_numpy()
    rows = []
    for name, model in solo_runs(models, runs).items():
        solo = USAE.load(Path(runs[name]) / "model").dictionary(model)
        rows.append({"model": model, "run": name, **solo_consistency(usae.dictionary(model), solo, busiest)})
        logger.info("consistency of %s with solo run %s: %.1f%% matched (baseline %.1f%%)", model, name,
                    100 * rows[-1]["share"], 100 * rows[-1]["baseline"])
    return rows
