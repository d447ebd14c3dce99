"""The universal-concept counts of a concept table (``concepts.parquet`` or a baseline's): the concepts
with firing entropy >= 0.9, those of them that co-fire (at all, and more often than chance), that carry
energy and that detect a planted factor.

One definition for every place that reports them: the comparison of runs, the run report and the
random dictionary's floors in ``baselines.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from usae.config import EvaluateConfig, MacoConfig

UNIVERSAL_ENTROPY = MacoConfig().min_entropy
"""Firing entropy from which a concept counts as universal: the pipeline's one definition (the paper's 0.9,
``maco.min_entropy``'s default)."""

FACTOR_AUROC = 0.9
"""Planted-factor AUROC from which a universal concept counts as detecting its factor."""
CHANCE_ALPHA = EvaluateConfig().chance_alpha
"""Default family-wise error of the beyond-chance co-firing test (``evaluate.chance_alpha``): the chance that
even one concept of a dictionary that the models fire independently passes it (Bonferroni over the
dictionary's concepts). An evaluation records the one it used in ``metrics.json`` (:func:`cofire_test`)."""
COUNTS = ("universal", "universal_cofiring", "universal_beyond_chance", "universal_energetic",
          "universal_energy_share", "universal_factor")
"""The keys :func:`universal_counts` can return, in the order they are shown."""


def cofire_floor(min_cofires: int) -> int:
    """Co-fires from which a concept counts as fired together by the models: the evaluation's resolved
    ``min_cofires``, but at least one (a concept never fired together is shared by none)."""
    return max(1, int(min_cofires))


def cofire_test(metrics: dict[str, Any]) -> dict[str, Any]:
    """The co-firing test an evaluation used, from its ``metrics.json``: ``min_cofires`` (None before it was
    recorded), ``n_tokens`` and ``alpha`` (:data:`CHANCE_ALPHA` where older metrics lack ``chance_alpha``);
    the keyword arguments of :func:`universal_counts`."""
    return {"min_cofires": metrics.get("min_cofires"), "n_tokens": metrics.get("n_tokens"),
            "alpha": metrics.get("chance_alpha", CHANCE_ALPHA)}


def chance_cofires(table: pd.DataFrame, n_tokens: int) -> np.ndarray:
    """Co-fires each concept would have if the models fired it independently of each other.

    The table's ``cofires_chance`` where it has one (an evaluation's: independence at each token
    position, :meth:`usae.evaluation.accumulate.Accumulator.chance_cofires`); else, position-free,
    lambda_k = n * prod_i (fires_i,k / n) over the table's ``fires_<model>`` columns (tokens where
    model i's code fires concept k) and the ``n`` tokens they were counted on.
    """
    if "cofires_chance" in table.columns:
        return table["cofires_chance"].to_numpy(dtype=float, copy=True)
    columns = fire_columns(table)
    if len(columns) < 2:
        raise ValueError(f"chance co-fires need the fires_<model> columns of at least 2 models, got {columns}")
    return n_tokens * np.prod([table[c].to_numpy(dtype=float) / max(1, n_tokens) for c in columns], axis=0)


def fire_columns(table: pd.DataFrame) -> list[str]:
    """The table's ``fires_<model>`` columns (tokens where each model's code fires a concept)."""
    return [c for c in table.columns if c.startswith("fires_")]


def beyond_chance(table: pd.DataFrame, n_tokens: int, alpha: float = CHANCE_ALPHA) -> np.ndarray:
    """Concepts the models fire together more often than independent firing explains.

    With c_k co-fires and lambda_k = :func:`chance_cofires` (position by position where the table has
    ``cofires_chance``): P(X >= c_k) < alpha / m for X ~ Poisson(lambda_k) (the binomial count of
    co-fires among n tokens, rare firing) and m the table's concepts (Bonferroni): pass the whole
    dictionary's table, not a selection of it, or the test loosens with the selection. A concept
    that never co-fires is not beyond chance.
    P(X >= c) is the regularised lower incomplete gamma function P(c, lambda).
    """
    import torch  # here, not at the top: the comparison tables import this module and need no torch

    cofires = table["cofires"].to_numpy(dtype=float)
    tail = torch.special.gammainc(torch.from_numpy(np.maximum(cofires, 1.0)),
                                  torch.from_numpy(chance_cofires(table, n_tokens))).numpy()
    return (cofires >= 1) & (tail < alpha / max(1, len(table)))


def shared_concepts(table: pd.DataFrame, min_cofires: int, n_tokens: int | None = None,
                    alpha: float = CHANCE_ALPHA) -> np.ndarray:
    """Concepts the models fire together: at least :func:`cofire_floor` times and, given ``n_tokens`` (the
    tokens the table was counted on) and the ``fires_<model>`` columns of several models, more often than
    chance at family-wise error ``alpha`` (:func:`beyond_chance`, over the whole dictionary's table; one
    model has no chance to beat)."""
    shared = table["cofires"].to_numpy() >= cofire_floor(min_cofires)
    if n_tokens is None or len(fire_columns(table)) < 2:
        return shared
    return shared & beyond_chance(table, n_tokens, alpha)


def universal_counts(table: pd.DataFrame, n_models: int, min_cofires: int | None = None,
                     n_tokens: int | None = None, alpha: float = CHANCE_ALPHA) -> dict[str, Any]:
    """The universal-concept counts of a concept table with ``firing_entropy`` (NaN: never fires).

    ``universal``: concepts with firing entropy >= :data:`UNIVERSAL_ENTROPY` (the paper's count);
    with ``cofires`` and ``min_cofires`` (the evaluation's resolved ``evaluate.min_cofires``),
    ``universal_cofiring`` (those that fire in every model on the same token at least
    :func:`cofire_floor` times) and, with ``n_tokens`` (the tokens the table was counted on) and
    ``fires_<model>`` columns, of those ``universal_beyond_chance`` (more often than independent
    firing explains at family-wise error ``alpha``, :func:`beyond_chance`); with ``energy_total``,
    ``universal_energetic`` (those with at least the mean concept's energy, dead ones included in
    the mean) and ``universal_energy_share`` (their share of all concepts' energy; both None when
    no concept has energy); with
    ``factor_auroc`` (generated images only), ``universal_factor`` (those whose best planted factor
    has AUROC >= :data:`FACTOR_AUROC`). A key whose column (or threshold) is lacking is absent; for
    one model firing entropy is undefined, so ``universal`` and ``universal_factor`` are None and
    there are no co-firing or energy counts.

    Returns:
        Key -> count (int), share (float) or None; empty without ``firing_entropy``.
    """
    if "firing_entropy" not in table.columns:
        return {}
    if n_models < 2:
        return {"universal": None, **({"universal_factor": None} if "factor_auroc" in table.columns else {})}
    universal = table["firing_entropy"].to_numpy(dtype=float) >= UNIVERSAL_ENTROPY
    out: dict[str, Any] = {"universal": int(universal.sum())}
    if "cofires" in table.columns and min_cofires is not None:
        # Firing entropy weighs how evenly the models fire a concept, not whether they fire it on the same
        # tokens: a concept each model fires on tokens of its own is even, yet shared by none.
        cofiring = universal & shared_concepts(table, min_cofires)
        out["universal_cofiring"] = int(cofiring.sum())
        if n_tokens is not None and len(fire_columns(table)) >= 2:
            # Concepts that fire often in every model co-fire often by chance alone: an untrained
            # dictionary's do, as often as a trained one's where firing is dense.
            out["universal_beyond_chance"] = int((cofiring & beyond_chance(table, n_tokens, alpha)).sum())
    if "energy_total" in table.columns:
        # Weak latents that fire now and then in every model count as universal too; weighing by
        # energy keeps the count to the concepts that carry the reconstruction.
        energy = np.nan_to_num(table["energy_total"].to_numpy(dtype=float))
        total = energy.sum()
        out["universal_energetic"] = int((universal & (energy >= total / len(energy))).sum()) if total > 0 else None
        out["universal_energy_share"] = float(energy[universal].sum() / total) if total > 0 else None
    if "factor_auroc" in table.columns:
        out["universal_factor"] = int((universal & (table["factor_auroc"].to_numpy(dtype=float) >= FACTOR_AUROC)).sum())
    return out
