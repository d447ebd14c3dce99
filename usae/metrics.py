"""Metrics of a Universal SAE as pure functions of tensors (definitions: SPEC section 4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def firing_counts(codes: Tensor, tau: float) -> Tensor:
    """How often each concept fires: sum over tokens of [Z_k(x) > tau].

    Args:
        codes: (n, m) dense codes of one model encoding its own activations.
        tau: firing threshold (paper code: 0.1).

    Returns:
        (m,) int64 counts.
    """
    return (codes > tau).sum(dim=0)


def firing_entropy(fires: Tensor) -> Tensor:
    """Firing entropy per concept (Thasarathan et al. 2025, Eq. 13).

    FE_k = -(1 / log M) sum_i p_i log p_i,  p_i = fires_i[k] / sum_j fires_j[k], 0 log 0 = 0.
    1: fires equally in every model; 0: fires in one model only. Concepts that never fire
    get NaN.

    Args:
        fires: (M, m) firing counts per model and concept.

    Returns:
        (m,) float64 entropies in [0, 1] (NaN where no model fires).
    """
    counts = fires.double()
    total = counts.sum(dim=0)
    p = counts / total
    terms = torch.where(counts > 0, p * torch.log(p), torch.zeros_like(p))
    return torch.where(total > 0, -terms.sum(dim=0) / math.log(fires.shape[0]),
                       torch.full_like(total, float("nan")))
