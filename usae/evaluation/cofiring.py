"""How often the models' codes fire together: the co-firing matrix between models, and the Pearson r of
log co-fires vs log energy over the concepts that co-fire often enough (with its threshold and, when r is
empty, why)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from usae.metrics import log_log_pearson, pairwise_cofire_share

PAPER_MIN_COFIRES = 1000
"""The paper's threshold for its second Pearson r ..."""
PAPER_TOKENS = 10_000_000
"""... over about this many evaluation tokens (Thasarathan et al. 2025, Fig. 6c)."""
MIN_CONCEPTS = 3
"""Concepts a Pearson r needs (:func:`usae.metrics.log_log_pearson`)."""


def scaled_min_cofires(n_tokens: int) -> int:
    """The paper's co-fire threshold scaled to ``n_tokens`` evaluation tokens.

    min_cofires = max(1, ceil(1000 * n_tokens / 10^7)): the same share of tokens (1 in 10,000)
    as the paper's 1000 co-fires over about 10 M tokens; at least one co-fire.
    """
    return max(1, math.ceil(PAPER_MIN_COFIRES * n_tokens / PAPER_TOKENS))


def resolve_min_cofires(setting: int | None, n_tokens: int) -> tuple[int, str]:
    """The threshold in use and how it was chosen: ``evaluate.min_cofires``, or scaled when it is null."""
    if setting is not None:
        return setting, f"evaluate.min_cofires = {setting:,}"
    value = scaled_min_cofires(n_tokens)
    return value, (f"scaled with the tokens: max(1, ceil({PAPER_MIN_COFIRES:,} x {n_tokens:,} / "
                   f"{PAPER_TOKENS:,})) = {value:,} (paper: {PAPER_MIN_COFIRES:,} for about 10 M tokens)")


def busy_pearson(cofires: Tensor, energy: Tensor, min_cofires: int) -> dict[str, Any]:
    """Pearson r of log10 co-fires vs log10 energy over concepts with at least ``min_cofires`` co-fires.

    Args:
        cofires: (m,) co-fires per concept.
        energy: (m,) total energy per concept.
        min_cofires: threshold (a concept also needs co-fires > 0 and energy > 0 to count).

    Returns:
        ``r`` (NaN when undefined), ``n_concepts`` (concepts used) and ``note``: None when r is
        defined, else why it is empty.
    """
    busy = (cofires >= min_cofires) & (cofires > 0) & (energy > 0)
    n_busy = int(busy.sum())
    r = float(log_log_pearson(cofires.where(busy, 0).double(), energy.double()))
    if n_busy < MIN_CONCEPTS:
        who = "1 concept co-fires" if n_busy == 1 else f"{n_busy} concepts co-fire"
        note = (f"only {who} at least {min_cofires:,} times "
                f"(with energy > 0); Pearson r needs at least {MIN_CONCEPTS}")
    elif math.isnan(r):
        note = f"the {n_busy} concepts with at least {min_cofires:,} co-fires all have the same co-fires or energy"
    else:
        note = None
    return {"r": r, "n_concepts": n_busy, "note": note}


def cofire_summary(pair_cofires: Tensor, cofires: Tensor, energy: Tensor, setting: int | None,
                   n_tokens: int) -> dict[str, Any]:
    """The metrics.json entries of co-firing: the model x model matrix and the thresholded Pearson r.

    Args:
        pair_cofires: (M, M) firings shared by each pair of models (see
            :func:`usae.metrics.pairwise_cofire_share`).
        cofires: (m,) co-fires (fires in every model) per concept. energy: (m,) total energy.
        setting: ``evaluate.min_cofires`` (None: :func:`scaled_min_cofires`).
        n_tokens: evaluation tokens.
    """
    min_cofires, rule = resolve_min_cofires(setting, n_tokens)
    busy = busy_pearson(cofires, energy, min_cofires)
    return {
        "cofire_matrix": pairwise_cofire_share(pair_cofires.cpu()).tolist(),
        "pair_cofires": pair_cofires.cpu().tolist(),
        "pearson_log_cofires_log_energy_min_cofires": busy["r"],
        "min_cofires": min_cofires, "min_cofires_rule": rule,
        "n_concepts_min_cofires": busy["n_concepts"], "pearson_min_cofires_note": busy["note"],
    }
