"""The universal-concept counts of a concept table (``concepts.parquet`` or a baseline's): the concepts
with firing entropy >= 0.9, those of them that co-fire, that carry energy and that detect a planted factor.

One definition for every place that reports them: the comparison of runs, the run report and the
random dictionary's floors in ``baselines.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from usae.config import MacoConfig

UNIVERSAL_ENTROPY = MacoConfig().min_entropy
"""Firing entropy from which a concept counts as universal: the pipeline's one definition (the paper's 0.9,
``maco.min_entropy``'s default)."""

FACTOR_AUROC = 0.9
"""Planted-factor AUROC from which a universal concept counts as detecting its factor."""
COUNTS = ("universal", "universal_cofiring", "universal_energetic", "universal_energy_share", "universal_factor")
"""The keys :func:`universal_counts` can return, in the order they are shown."""


def cofire_floor(min_cofires: int) -> int:
    """Co-fires from which a concept counts as fired together by the models: the evaluation's resolved
    ``min_cofires``, but at least one (a concept never fired together is shared by none)."""
    return max(1, int(min_cofires))


def universal_counts(table: pd.DataFrame, n_models: int, min_cofires: int | None = None) -> dict[str, Any]:
    """The universal-concept counts of a concept table with ``firing_entropy`` (NaN: never fires).

    ``universal``: concepts with firing entropy >= :data:`UNIVERSAL_ENTROPY` (the paper's count);
    with ``cofires`` and ``min_cofires`` (the evaluation's resolved ``evaluate.min_cofires``),
    ``universal_cofiring`` (those that fire in every model on the same token at least
    :func:`cofire_floor` times); with ``energy_total``, ``universal_energetic`` (those with at
    least the mean concept's energy, dead ones included in the mean) and ``universal_energy_share``
    (their share of all concepts' energy; both None when no concept has energy); with
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
        cofiring = table["cofires"].to_numpy() >= cofire_floor(min_cofires)
        out["universal_cofiring"] = int((universal & cofiring).sum())
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
