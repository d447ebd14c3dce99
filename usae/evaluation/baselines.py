"""Baselines every evaluation figure is read against: PCA per model and a random dictionary.

- PCA: each model's own k leading principal components (k = ``sae.k``, the active latents a
  token gets), fitted on training tokens: the best linear k-dimensional code of each model alone.
  It has no code shared between models, so its cross-model entries are not defined (null).
- Random dictionary: the USAE untrained (:func:`random_dictionary`), evaluated exactly as the
  trained one: R2 matrix with its off-diagonals, firing entropy, the universal-concept counts
  (:func:`usae.evaluation.universal.universal_counts`: those carrying energy and, on generated
  images, those detecting a planted factor, scored from its own codes). What a dictionary that
  learnt nothing scores is the floor of every such figure; independent random dictionaries also
  fire evenly across models, so firing entropy alone is high for them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from usae.activations.sources import TokenSource
from usae.config import EvaluateConfig, SAEConfig
from usae.evaluation.accumulate import Accumulator
from usae.evaluation.evaluate import add_factor_columns, blocks, score_factors, summarise
from usae.evaluation.universal import (CHANCE_ALPHA, COUNTS, FACTOR_AUROC, UNIVERSAL_ENTROPY, cofire_test,
                                       universal_counts)
from usae.metrics import r2_global_mean, r2_per_dim
from usae.sae.model import USAE

logger = logging.getLogger(__name__)

ENTROPY_BINS = 10

DEFINITIONS = {
    "pca": "per model: its k leading principal components (k = sae.k), fitted on as many training images as are "
           "evaluated, spread over the split; x_hat = mean + (x - mean) P P^T. No code is shared between models, "
           "so cross-model R2 is not defined (null)",
    "random_dictionary": "the USAE untrained: random unit-norm decoder rows (same n_latents), encoder = decoder "
                         "transposed, encoder bias 0, decoder bias = the training mean, TopK with the same k; the "
                         "draw of the run's initialisation (its train.seed), evaluated as the trained USAE",
    "r2_self": "per-dimension R2 (variance explained) of each model from its own codes, on the validation tokens",
    "r2_cross_min, r2_cross_mean": "over the entries with source != target of the per-dimension R2 matrix",
    "universal": f"concepts that fire (Z_k > tau) with firing entropy >= {UNIVERSAL_ENTROPY} (null for one model)",
    "universal_cofiring": "of those, the ones that fire in every model on the same token at least max(1, "
                          "min_cofires) times (metrics.json's min_cofires)",
    "universal_beyond_chance": "of the co-firing ones, those that co-fire more often than independent firing at "
                               "each token position explains: P(X >= cofires) < chance_alpha / n_latents for X ~ "
                               "Poisson(cofires_chance) (concepts.parquet's column; metrics.json's chance_alpha)",
    "universal_energetic": "of the universal ones, those with at least the mean concept's energy (energy_total)",
    "universal_energy_share": "the universal concepts' share of all concepts' energy",
    "universal_factor": f"of the universal ones, those whose best planted factor has patch-level AUROC >= "
                        f"{FACTOR_AUROC} (generated images only; each dictionary scored from its own codes)",
    "firing_entropy_histogram": f"concepts that fire, in {ENTROPY_BINS} equal bins over [0, 1]",
}


@dataclass
class Moments:
    """Running sums of one model's tokens (float64): count, sum and sum of outer products."""

    n: int
    sum_x: Tensor
    outer: Tensor

    @classmethod
    def empty(cls, d: int, device: torch.device) -> Moments:
        return cls(0, torch.zeros(d, dtype=torch.float64, device=device),
                   torch.zeros(d, d, dtype=torch.float64, device=device))

    def update(self, x: Tensor) -> None:
        """Add tokens ``x`` (n, d)."""
        x64 = x.double()
        self.n += x64.shape[0]
        self.sum_x += x64.sum(dim=0)
        self.outer += x64.t() @ x64

    def mean(self) -> Tensor:
        return self.sum_x / self.n

    def covariance(self) -> Tensor:
        """Population covariance (d, d): E[x x^T] - mean mean^T."""
        mean = self.mean()
        return self.outer / self.n - torch.outer(mean, mean)


def pca_basis(covariance: Tensor, k: int) -> Tensor:
    """(d, k) orthonormal eigenvectors of ``covariance`` with the k largest eigenvalues.

    Raises:
        ValueError: ``k`` is not in 1..d.
    """
    d = covariance.shape[0]
    if not 1 <= k <= d:
        raise ValueError(f"PCA needs 1 <= k <= d = {d} components, got k = {k}")
    return torch.linalg.eigh(covariance).eigenvectors[:, d - k:]  # eigh sorts eigenvalues ascending


def pca_reconstruct(x: Tensor, mean: Tensor, basis: Tensor) -> Tensor:
    """x_hat = mean + (x - mean) P P^T for tokens ``x`` (n, d), basis P (d, k); float64."""
    centred = x.double() - mean
    return mean + (centred @ basis) @ basis.t()


def random_dictionary(dims: dict[str, int], cfg: SAEConfig, means: dict[str, Tensor], *, seed: int) -> USAE:
    """A USAE never trained: the initialisation of training (random unit-norm decoder rows, encoder =
    decoder transposed, encoder bias 0, decoder bias = ``means``) with ``cfg``'s n_latents and k, TopK
    per token whatever ``cfg.activation`` (an untrained BatchTopK has no running threshold) and no
    BatchNorm; in evaluation mode."""
    model = USAE(dims, dataclasses.replace(cfg, activation="topk", batchnorm=False), seed=seed)
    model.init_decoder_bias(means)
    return model.eval()


def entropy_summary(table: pd.DataFrame, n_models: int, min_cofires: int | None = None,
                    n_tokens: int | None = None, alpha: float = CHANCE_ALPHA) -> dict[str, Any]:
    """The concepts that fire (firing entropy not NaN), the histogram of their firing entropies and the
    universal-concept counts (:func:`usae.evaluation.universal.universal_counts`, co-firing ones at least
    ``min_cofires`` times, and more often than chance at family-wise error ``alpha`` over the ``n_tokens``
    counted) of a concept table."""
    entropy = table["firing_entropy"].to_numpy(dtype=float)
    fired = entropy[np.isfinite(entropy)]
    counts, _ = np.histogram(fired, bins=ENTROPY_BINS, range=(0.0, 1.0))
    return {"concepts_firing": int(fired.size), **universal_counts(table, n_models, min_cofires, n_tokens, alpha),
            "firing_entropy_histogram": counts.tolist()}


def _tokens(block: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(block.reshape(-1, block.shape[-1])).to(device).float()


@torch.no_grad()
def evaluate_baselines(model: USAE, train_sources: dict[str, TokenSource], val_sources: dict[str, TokenSource],
                       cfg: EvaluateConfig, device: torch.device, *,
                       trained: tuple[dict[str, Any], pd.DataFrame], factors: Any = None) -> dict[str, Any]:
    """PCA and random-dictionary baselines of ``model`` on ``val_sources``, fitted on ``train_sources``.

    Args:
        model: the trained USAE (its models, dims, n_latents and k).
        train_sources, val_sources: standardised tokens per model (both splits of the aligned stores).
        cfg: the evaluation's settings (tau, blocks, max_images), used for the baselines alike.
        device: where to compute.
        trained: the trained USAE's metrics and concept table, for its row of the table.
        factors: an empty planted-factor scorer (as :func:`usae.evaluation.evaluate.evaluate_sources`'s)
            for the random dictionary's codes; None (data without planted factors): no factor count.

    Returns:
        ``baselines.json``: a ``table`` (rows usae, pca, random_dictionary) and each baseline's figures.
    """
    names = model.names
    first = next(iter(val_sources.values()))
    moments = _fit(model, train_sources, cfg, min(first.n_rows, cfg.max_images or first.n_rows), device)
    k = {n: min(model.cfg.k, d) for n, d in model.dims.items()}
    bases = {n: pca_basis(moments[n].covariance(), k[n]) for n in names}
    means = {n: moments[n].mean() for n in names}
    seed = int(model.meta.get("train", {}).get("seed", 0))
    rand = random_dictionary(model.dims, model.cfg, {n: m.float() for n, m in means.items()}, seed=seed).to(device)
    acc = Accumulator(rand, cfg.tau, 1, device)
    pca_sse = torch.zeros(len(names), dtype=torch.float64, device=device)
    rows_of = first.rows if first.rows is not None else np.arange(first.n_rows)
    for positions, block in blocks(val_sources, cfg.batch_images, cfg.max_images):
        acts = {n: _tokens(b, device) for n, b in block.items()}
        score_factors(factors, acc.update(acts, torch.from_numpy(rows_of[positions]), first.tokens_per_row),
                      positions)
        for i, n in enumerate(names):
            pca_sse[i] += (acts[n].double() - pca_reconstruct(acts[n], means[n], bases[n])).pow(2).sum()
    rand_metrics, rand_table = summarise(rand, acc, cfg)
    add_factor_columns(rand_table, factors)
    pca = {"k": k, "fit_tokens": moments[names[0]].n,
           **{key: {n: float(score(pca_sse[i], acc.sum_x[n], acc.sum_x2[n], acc.n_tokens)) for i, n in enumerate(names)}
              for key, score in (("r2_per_dim", r2_per_dim), ("r2_global_mean", r2_global_mean))}}
    random = {"seed": seed, **{key: rand_metrics[key] for key in (
        "r2_per_dim", "r2_global_mean", "dead_above_tau_fraction", "concepts_firing_in_all_models")},
        **entropy_summary(rand_table, len(names), **{**cofire_test(trained[0]), "n_tokens": acc.n_tokens})}
    usae = entropy_summary(trained[1], len(names), **cofire_test(trained[0]))
    undefined = dict.fromkeys(key for key in usae if key in COUNTS or key == "concepts_firing")
    table = [_row("usae", names, trained[0]["r2_per_dim"], trained[0], usae),
             _row("pca", names, np.diag(list(pca["r2_per_dim"].values())), None, undefined),
             _row("random_dictionary", names, rand_metrics["r2_per_dim"], rand_metrics, random)]
    for row in table:
        logger.info("baseline %s: %s", row["method"], {key: v for key, v in row.items() if key != "method"})
    return {"models": names, "n_tokens": acc.n_tokens, "tau": cfg.tau, "definitions": DEFINITIONS, "table": table,
            "pca": pca, "random_dictionary": random, "usae": usae}


def _fit(model: USAE, sources: dict[str, TokenSource], cfg: EvaluateConfig, n_rows: int,
         device: torch.device) -> dict[str, Moments]:
    """Each model's token moments over about ``n_rows`` images spread over ``sources`` (the training split).

    Raises:
        ValueError: no valid token among them.
    """
    moments = {n: Moments.empty(d, device) for n, d in model.dims.items()}
    for _, block in blocks(sources, cfg.batch_images, n_rows, spread=True):
        for n in model.names:
            moments[n].update(_tokens(block[n], device))
    if moments[model.names[0]].n == 0:
        raise ValueError("no valid training token to fit the baselines on; set evaluate.baselines: false")
    return moments


def _row(method: str, names: list[str], r2: Any, metrics: dict[str, Any] | None,
         firing: dict[str, Any]) -> dict[str, Any]:
    """One row of the baselines table; a method without shared codes (PCA: ``metrics`` None, ``firing`` all
    None) has null cross-model figures and counts. The counts are ``firing``'s keys of
    :data:`usae.evaluation.universal.COUNTS`: a count the trained USAE lacks (no planted factors), no row has."""
    r2 = np.asarray(r2, dtype=float)
    cross = r2[~np.eye(len(names), dtype=bool)] if metrics is not None and len(names) > 1 else np.array([])
    return {"method": method, "r2_self": {n: float(r2[i, i]) for i, n in enumerate(names)},
            "r2_cross_min": float(cross.min()) if cross.size else None,
            "r2_cross_mean": float(cross.mean()) if cross.size else None,
            **{key: firing[key] for key in COUNTS if key in firing},
            "concepts_firing": firing["concepts_firing"],
            "concepts_firing_in_all_models": metrics["concepts_firing_in_all_models"] if metrics else None,
            "dead_above_tau_fraction": metrics["dead_above_tau_fraction"] if metrics else None}
