"""Metrics of a Universal SAE as pure functions (definitions: SPEC section 4).

Evaluation metrics (firing, R2, co-fire, energy, Pearson) take torch tensors; dictionary
matching (signed best cosine, Hungarian matching) and the exact AUROC, used against a known
truth, take arrays. Every docstring states the formula the code computes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
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
    entropy, total = _entropy(fires)
    if fires.shape[0] < 2:  # entropy across models needs at least two models
        return torch.full_like(total, float("nan"))
    return torch.where(total > 0, entropy / math.log(fires.shape[0]), torch.full_like(total, float("nan")))


def _entropy(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Entropy in nats of each column of ``counts`` normalised to a distribution over its rows,
    -sum_r p_r log p_r with p_r = counts[r] / total and 0 log 0 = 0, and the column totals (float64).
    A column with one non-zero row gives +0 (not -0); an all-zero column gives 0 (the callers mask it)."""
    counts = counts.double()
    total = counts.sum(dim=0)
    p = counts / total
    terms = torch.where(counts > 0, p * torch.log(p), torch.zeros_like(p))
    return 0.0 - terms.sum(dim=0), total


def position_spread(fires_at: Tensor) -> Tensor:
    """How evenly each concept's firings spread over the token positions of an image.

    spread_k = exp(-sum_t q_t log q_t) / T,  q_t = F_k(t) / sum_s F_k(s), 0 log 0 = 0: the
    effective number of positions it fires at (the perplexity of q) over the T positions.
    1: the same count at every position; 1/T: one position only (a corner, a border token).
    A concept every model fires at the same few positions of every image co-fires there by
    chance; a low spread points at it. Concepts that never fire get NaN.

    Args:
        fires_at: (T, m) firing counts per token position and concept (summed over models, or one model's).

    Returns:
        (m,) float64 spreads in [1/T, 1] (NaN where the concept never fires).
    """
    entropy, total = _entropy(fires_at)
    return torch.where(total > 0, torch.exp(entropy) / fires_at.shape[0], torch.full_like(total, float("nan")))


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


def pairwise_cofire_share(pair_cofires: Tensor) -> Tensor:
    """Co-firing matrix of the models: the share of model i's firings that model j fires too.

    S[i, j] = P[i, j] / P[i, i], with P[i, j] = sum over tokens t and concepts k of
    [Z_k^(i)(t) > tau] [Z_k^(j)(t) > tau] (each model encoding its own activations of token t),
    so P[i, i] is every firing of model i and S[i, i] = 1. Not symmetric: S[i, j] P[i, i] = S[j, i] P[j, j].

    Args:
        pair_cofires: (M, M) counts P, symmetric.

    Returns:
        (M, M) float64 shares in [0, 1]; NaN on the rows of models that never fire.
    """
    counts = pair_cofires.double()
    fired = counts.diagonal().unsqueeze(1)
    return torch.where(fired > 0, counts / fired, torch.full_like(counts, float("nan")))


def energy_share(energy: Tensor) -> Tensor:
    """Each concept's energy share per model: how much of its importance each model carries.

    share_i(k) = Energy_i(k) / sum_j Energy_j(k), Energy_i(k) = || E_x[Z_k^(i)(x)] D_k^(i) ||^2
    (:func:`concept_energy` of model i); the shares of a concept sum to 1.

    Args:
        energy: (M, m) energies per model and concept.

    Returns:
        (M, m) float64 shares; NaN for concepts with no energy in any model.
    """
    energy = energy.double()
    total = energy.sum(dim=0, keepdim=True)
    return torch.where(total > 0, energy / total, torch.full_like(energy, float("nan")))


def log_firing_frequency(fires: Tensor, n_tokens: int) -> Tensor:
    """Feature density: log10 of the share of tokens on which each concept fires, per model.

    density_i(k) = log10(fires_i(k) / n_tokens), -inf for a concept that never fires in model i.

    Args:
        fires: (M, m) or (m,) firing counts (Z_k > tau) over ``n_tokens`` tokens.
        n_tokens: tokens the counts were taken over (> 0).

    Returns:
        Same shape as ``fires``, float64 values <= 0 (or -inf).
    """
    return (fires.double() / n_tokens).log10()


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


def _unit_rows(a: ArrayLike) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64 (zero rows stay zero: the norm is floored at 1e-12)."""
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def match_atoms(true_atoms: ArrayLike, learned: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Best learned row for every true atom by signed cosine (many-to-one: rows may be reused).

    ``cos[i, j] = <u_i, v_j>`` with ``u_i = t_i / ||t_i||`` and ``v_j = l_j / ||l_j||`` (zero rows
    give cosine 0).  No absolute value is taken: ``-x`` has cosine ``-1`` with ``x``.

    Args:
        true_atoms: ``(n, d)`` ground-truth atoms.
        learned: ``(m, d)`` learned dictionary rows.

    Returns:
        ``best_index[i] = argmax_j cos[i, j]`` and ``best_cos[i] = max_j cos[i, j]``, both ``(n,)``.
    """
    cos = _unit_rows(true_atoms) @ _unit_rows(learned).T
    idx = np.argmax(cos, axis=1)
    return idx, cos[np.arange(len(idx)), idx]


def best_cosine(true_atoms: ArrayLike, learned: ArrayLike) -> np.ndarray:
    """``max_j cos(true_atoms[i], learned[j])`` for every true atom, shape ``(n,)`` (see ``match_atoms``)."""
    return match_atoms(true_atoms, learned)[1]


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic.

    ``AUROC = (#{(p, q): s_p > s_q} + 0.5 * #{(p, q): s_p == s_q}) / (n_pos * n_neg)`` over
    positive ``p`` and negative ``q``; computed with tie-averaged ranks ``R`` as
    ``(sum_{p} R_p - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)``.

    Args:
        scores: ``(n,)`` real scores, higher = more positive.
        labels: ``(n,)`` booleans (or 0/1).

    Returns:
        The AUROC in ``[0, 1]`` (1: every positive scores above every negative, 0.5: chance).

    Raises:
        ValueError: If the lengths differ or a class is empty.
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.size} != {labels.size}")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs at least one positive and one negative label")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based ranks, ties averaged
    rank_sum = float(avg_rank[inverse.ravel()][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def binned_auroc(pos_counts: np.ndarray, neg_counts: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """AUROC from score histograms, pairs in the same bin counted as ties (Mann–Whitney U).

    ``AUROC = sum_b pos_b (sum_{b' < b} neg_b' + neg_b / 2) / (n_pos * n_neg)`` with the bins in
    increasing score order. Exact when every bin holds one score value; otherwise off by at
    most ``1/2 sum_b pos_b neg_b / (n_pos n_neg)`` (pairs sharing a bin).

    Args:
        pos_counts: ``(m, n_bins)`` positives per bin, for each of ``m`` scores (e.g. concepts).
        neg_counts: ``(m, n_bins)`` negatives per bin.
        n_pos: Positives (``pos_counts.sum(axis=1)`` for every row), > 0.
        n_neg: Negatives, > 0.

    Returns:
        ``(m,)`` float64 AUROCs.
    """
    below = np.cumsum(neg_counts, axis=1) - neg_counts
    return (pos_counts * (below + 0.5 * neg_counts)).sum(axis=1) / (n_pos * n_neg)


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
