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
        (m,) float64 entropies in [0, 1] (NaN where no model fires, and everywhere for M = 1).
    """
    counts = fires.double()
    total = counts.sum(dim=0)
    if fires.shape[0] < 2:  # entropy across models needs at least two models
        return torch.full_like(total, float("nan"))
    p = counts / total
    terms = torch.where(counts > 0, p * torch.log(p), torch.zeros_like(p))
    return torch.where(total > 0, -terms.sum(dim=0) / math.log(fires.shape[0]),
                       torch.full_like(total, float("nan")))


def r2_global_mean(sse: Tensor, sum_x: Tensor, sum_x2: Tensor, n: int) -> Tensor:
    """R2 with one global mean, as the reference code (overcomplete ``r2_score``).

    R2 = 1 - SSE / sum((a - a_bar)^2), a_bar the mean over all tokens and dimensions;
    computed from running sums: sum((a - a_bar)^2) = sum(a^2) - (sum a)^2 / (n d).

    Args:
        sse: 0-d or (...) sum of squared reconstruction errors.
        sum_x: (d,) per-dimension sums of the targets. sum_x2: (d,) sums of squares.
        n: number of tokens.

    Returns:
        Tensor shaped like ``sse``.
    """
    total = sum_x.double().sum()
    spread = sum_x2.double().sum() - total * total / (n * sum_x.numel())
    return 1.0 - sse.double() / spread


def r2_per_dim(sse: Tensor, sum_x: Tensor, sum_x2: Tensor, n: int) -> Tensor:
    """R2 as variance explained: per-dimension means (the usual SAE-literature form).

    R2 = 1 - SSE / sum_d sum_t (a_td - mean_d)^2, with
    sum_t (a_td - mean_d)^2 = sum_t a_td^2 - (sum_t a_td)^2 / n.

    Args:
        sse: 0-d or (...) sum of squared errors. sum_x, sum_x2: (d,) sums. n: tokens.

    Returns:
        Tensor shaped like ``sse``.
    """
    spread = (sum_x2.double() - sum_x.double().pow(2) / n).sum()
    return 1.0 - sse.double() / spread


def cofire_proportion(cofires: Tensor, fires: Tensor) -> Tensor:
    """Co-fire proportion CFP_k^(i) = |C_k| / |F_k^(i)| (Thasarathan et al. 2025, Eq. 14).

    Args:
        cofires: (m,) tokens where concept k fires in every model.
        fires: (M, m) or (m,) tokens where it fires in model i.

    Returns:
        Same shape as ``fires``, float64; NaN where the concept never fires in that model.
    """
    fires = fires.double()
    return torch.where(fires > 0, cofires.double() / fires, torch.full_like(fires, float("nan")))


def concept_energy(mean_codes: Tensor, dictionary: Tensor) -> Tensor:
    """Importance of each concept: Energy(k) = || E_x[Z_k(x)] D_k ||_2^2 (paper Eq. 9).

    Args:
        mean_codes: (m,) mean activation of each concept over tokens.
        dictionary: (m, d) decoder rows of the model.

    Returns:
        (m,) float64 energies (the paper's squared form; the reference code omits the square).
    """
    return mean_codes.double().pow(2) * dictionary.double().pow(2).sum(dim=1)


def log_log_pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson r of log10(x) vs log10(y) over the entries where both are positive.

    Used for co-fire count vs energy (paper Fig. 6c: r = 0.63 over all concepts).

    Args:
        x, y: (m,) non-negative values.

    Returns:
        0-d float64 r (NaN with fewer than 3 usable entries).
    """
    keep = (x > 0) & (y > 0)
    if int(keep.sum()) < 3:
        return torch.tensor(float("nan"), dtype=torch.float64)
    a, b = x[keep].double().log10(), y[keep].double().log10()
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt())


def hungarian_consistency(usae_atoms: Tensor, solo_atoms: Tensor, threshold: float = 0.5) -> tuple[float, Tensor]:
    """Share of USAE atoms matched to an independent SAE's atom with cosine > threshold.

    One-to-one matching of the two dictionaries of a model maximising total cosine
    (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), as the paper's Fig. 7:
    share = |{k : cos(D_usae[k], D_solo[pi(k)]) > threshold}| / m_usae.

    Args:
        usae_atoms: (m, d) the USAE's decoder rows for one model.
        solo_atoms: (m2, d) decoder rows of an SAE trained on that model alone.
        threshold: cosine a match must exceed (paper: 0.5).

    Returns:
        The share, and (m,) the matched cosine of every USAE atom (NaN when m > m2 left it out).
    """
    from scipy.optimize import linear_sum_assignment

    a = torch.nn.functional.normalize(usae_atoms.double(), dim=1)
    b = torch.nn.functional.normalize(solo_atoms.double(), dim=1)
    cos = (a @ b.t()).numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    matched = torch.full((a.shape[0],), float("nan"), dtype=torch.float64)
    matched[torch.as_tensor(rows)] = torch.as_tensor(cos[rows, cols])
    return float((matched > threshold).sum()) / a.shape[0], matched
