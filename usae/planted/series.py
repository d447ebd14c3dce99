"""Series of planted generator settings for the studies of depth and of the number of models.

A *depth series* stands for one model family seen at several "layers": every layer has the same
number of concepts per model, but a different share of them is shared by all models (a share
rising with depth plants the hypothesis that universal concepts appear late). A *models series*
adds one model at a time: the M-model data is the (M+1)-model data without its last model (the
generator draws each model from its own child seed, so the first models are the same arrays).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from usae.planted.activations import PlantedConfig

logger = logging.getLogger(__name__)


def depth_series(base: PlantedConfig, shares: Sequence[float]) -> list[PlantedConfig]:
    """One setting per "layer": ``round(share * n)`` of the ``n = n_shared + n_private`` concepts shared.

    Every concept fires with the same probability at every layer: the expected active counts
    (``active_shared + active_private`` per token and model, split by the concepts' shares) are
    kept, so only what is shared changes with depth, not how busy a token is.

    Args:
        base: Widths, names, concept count (``n_shared + n_private``), activity, noise and seed.
        shares: Share of shared concepts at each layer, each in [0, 1].

    Returns:
        One :class:`PlantedConfig` per share, in the order given.

    Raises:
        ValueError: no share, or a share outside [0, 1].
    """
    if not shares:
        raise ValueError("depth_series: give at least one share of shared concepts")
    bad = [s for s in shares if not 0.0 <= s <= 1.0]
    if bad:
        raise ValueError(f"depth_series: shares {bad} are outside [0, 1]")
    n = base.n_shared + base.n_private
    rate = (base.active_shared + base.active_private) / n
    out = []
    for share in shares:
        n_shared = round(share * n)
        out.append(replace(base, n_shared=n_shared, n_private=n - n_shared, active_shared=rate * n_shared,
                           active_private=rate * (n - n_shared)))
    return out


def models_series(base: PlantedConfig, counts: Sequence[int]) -> list[PlantedConfig]:
    """One setting per model count M: the first M of ``base``'s models (widths and names).

    Raises:
        ValueError: a count below 2 or above the number of models of ``base``.
    """
    bad = [m for m in counts if not 2 <= m <= len(base.widths)]
    if not counts or bad:
        raise ValueError(f"models_series: counts {list(counts)} must each be in 2..{len(base.widths)} "
                         f"(the models of the base setting)")
    names = base.model_names
    return [replace(base, widths=base.widths[:m], names=names[:m]) for m in counts]
