"""Stage 5: evaluate a trained USAE on the validation tokens, streamed in bounded memory.

Outputs (``results/runs/<run>/eval/``):
  metrics.json      R2 matrices (both forms), MSE, L0, dead latents, co-fire statistics,
                    Pearson r of log co-fires vs log energy, with each definition stated
  concepts.parquet  one row per concept: fires, energy and co-fire proportion per model,
                    firing entropy, co-fires, top images per model (and planted factors)
  heatmaps.zarr     per model: the token activation maps of each concept's top images (``maps``,
                    ``rows``) and where on the image grid it fires (``firing_map``: per concept
                    and token position, the validation images where the model fires it)
  baselines.json    (``evaluate.baselines``) PCA per model and a random dictionary, the same
                    figures for the trained USAE beside them (:mod:`usae.evaluation.baselines`)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from usae import __version__, paths
from usae.activations.sources import TokenSource
from usae.atomic import atomic_path
from usae.config import EvaluateConfig, to_dict
from usae.evaluation.accumulate import Accumulator
from usae.evaluation.cofiring import cofire_summary
from usae.metrics import (
    cofire_proportion, concept_energy, firing_entropy, log_log_pearson, position_spread, r2_global_mean, r2_per_dim,
)
from usae.progress import progress_bar
from usae.sae.model import USAE, Codes

logger = logging.getLogger(__name__)

DEFINITIONS = {
    "r2_global_mean": "1 - SSE / sum((a - mean over all tokens and dims)^2) (reference code)",
    "r2_per_dim": "1 - SSE / sum((a - per-dimension mean)^2) (variance explained)",
    "entry (i, j)": "target model j reconstructed from source model i's codes, Z_i D_j + b_j",
    "fires": "concept k fires for model i on a token when Z_k^(i) > tau, each model encoding its own tokens",
    "firing_entropy": "FE_k = -(1/log M) sum_i p_i log p_i, p_i = fires_i / sum_j fires_j",
    "cofire": "the concept fires in every model on the same token",
    "cofire_proportion": "CFP_k^(i) = cofires_k / fires_k^(i)",
    "cofires_chance": "co-fires expected if the models fired the concept independently of each other at each token "
                      "position: N sum_t prod_i (F_k^(i)(t) / N), F_k^(i)(t) the validation images (of N) where model "
                      "i fires concept k at token t",
    "position_spread": "exp(-sum_t q_t log q_t) / T, q_t = sum_i F_k^(i)(t) / sum_i fires_k^(i): the effective "
                       "number of token positions (of T) the concept fires at, pooled over models; 1 = evenly "
                       "everywhere, 1/T = one position",
    "firing_map": "heatmaps.zarr/<model>/firing_map[k, t] = F_k^(i)(t): the validation images (of n_images) "
                  "where model i fires concept k at token t",
    "cofire_matrix": "share of model i's firings (token, concept pairs with Z_k^(i) > tau) on which model j fires "
                     "the same concept on the same token (row i, column j; 1 on the diagonal)",
    "energy": "||E[Z_k] D_k||^2 per model (E over validation tokens); energy_total sums the models",
    "dead": "concepts never active (Z_k > 0) for that model on any validation token",
    "dead_above_tau": "concepts that never fire (Z_k > tau) for that model on any validation token",
    "l0": "mean number of active (non-zero) concepts per token",
}


def blocks(sources: dict[str, TokenSource], block_rows: int, max_images: int | None = None, *,
           spread: bool = False) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Blocks of valid images: (positions (B,), {name: (B, T, d)}).

    The first ``max_images`` rows in order, or with ``spread`` about as many rows in blocks
    spread evenly over the whole split (a sample that is not one end of a sorted listing).
    """
    first = next(iter(sources.values()))
    valid = np.ones(first.n_rows, dtype=bool)
    for s in sources.values():
        if s.valid is not None:
            valid &= s.valid
    n_rows = first.n_rows if max_images is None else min(first.n_rows, max_images)
    starts = range(0, n_rows, block_rows)
    if spread and n_rows < first.n_rows:
        n_blocks = -(-n_rows // block_rows)
        starts = np.linspace(0, first.n_rows - block_rows, n_blocks).round().astype(int).tolist()
        n_rows = first.n_rows
    for start in starts:
        stop = min(start + block_rows, n_rows)
        keep = valid[start:stop]
        if keep.any():
            yield np.arange(start, stop)[keep], {n: s.read(start, stop)[keep] for n, s in sources.items()}


@torch.no_grad()
def evaluate_sources(model: USAE, sources: dict[str, TokenSource], cfg: EvaluateConfig, out_dir: str | Path,
                     *, device: torch.device, factors: Any = None,
                     baseline_sources: dict[str, TokenSource] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on paired validation ``sources`` and write the outputs to ``out_dir``.

    Args:
        model: trained USAE (its models must be the keys of ``sources``).
        sources: validation tokens per model, already standardised, rows aligned.
        cfg: threshold, top-N, block size.
        out_dir: folder to write (atomically).
        device: where to compute.
        factors: optional planted-factor scorer with ``update(name, codes, positions)``,
            ``columns() -> dict`` and ``fresh()`` (an empty one, for the random dictionary's codes;
            :class:`usae.evaluation.run.PlantedFactors`); generated image sets only.
        baseline_sources: the training tokens (same models) to fit the baselines on
            (:mod:`usae.evaluation.baselines`, written to ``baselines.json``); None: no baselines.

    Returns:
        The metrics written to ``metrics.json``.
    """
    missing = sorted(set(model.names) - set(sources))
    if missing:
        raise ValueError(f"no validation tokens for models {missing}; the model spans {model.names}")
    model = model.to(device).eval()
    names = model.names
    first = sources[names[0]]
    rows_of = first.rows if first.rows is not None else np.arange(first.n_rows)
    acc = Accumulator(model, cfg.tau, cfg.top_n, device)
    block_rows = max(1, cfg.batch_images)
    n_blocks = -(-min(first.n_rows, cfg.max_images or first.n_rows) // block_rows)
    for positions, block in progress_bar(blocks(sources, block_rows, cfg.max_images), total=n_blocks,
                                         desc="evaluate", unit="block"):
        acts = {n: torch.from_numpy(b.reshape(-1, b.shape[-1])).to(device).float() for n, b in block.items()}
        score_factors(factors, acc.update(acts, torch.from_numpy(rows_of[positions]), first.tokens_per_row), positions)
    if acc.n_tokens == 0:
        raise ValueError("no valid validation token to evaluate on; check dataset.val_fraction")
    metrics, table = summarise(model, acc, cfg)
    metrics = _json_safe(metrics)
    add_factor_columns(table, factors)
    baselines = None
    if baseline_sources is not None:
        from usae.evaluation.baselines import evaluate_baselines  # it reads this module's blocks and summarise

        baselines = evaluate_baselines(model, baseline_sources, sources, cfg, device, trained=(metrics, table),
                                       factors=factors.fresh() if factors is not None else None)
        baselines = _json_safe(baselines)
    maps = _heatmaps(model, sources, acc, cfg, device, rows_of)
    _write_outputs(Path(out_dir), metrics, table, baselines, maps, acc.firing_maps(),
                   {"tokens_per_image": first.tokens_per_row, "grid": first.attrs.get("grid"),
                    "n_images": acc.n_images})
    logger.info("evaluated %d tokens of %d images: R2 (per-dim) diagonal %s", acc.n_tokens, acc.n_images,
                np.round(np.diag(metrics["r2_per_dim"]), 3).tolist())
    return metrics


def score_factors(factors: Any, codes: dict[str, Codes], positions: np.ndarray) -> None:
    """Feed each model's codes of the images at ``positions`` to the planted-factor scorer (None: none)."""
    if factors is not None:
        for name, model_codes in codes.items():
            factors.update(name, model_codes, positions)


def add_factor_columns(table: pd.DataFrame, factors: Any) -> None:
    """Add the scorer's columns (best factor and its AUROC per concept) to the concept table (None: none)."""
    if factors is not None:
        for key, column in factors.columns().items():
            table[key] = column


def _write_outputs(out_dir: Path, metrics: dict[str, Any], table: pd.DataFrame, baselines: dict[str, Any] | None,
                   maps: dict[str, tuple[np.ndarray, np.ndarray]], firing: dict[str, np.ndarray],
                   heatmap_attrs: dict[str, Any]) -> None:
    """The evaluation folder, written whole or not at all (``atomic_path``); ``firing``: each model's
    ``(m, tokens per image)`` firing map."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / paths.EVAL_METRICS).write_text(json.dumps(metrics, indent=2, allow_nan=False))
        table.to_parquet(tmp / "concepts.parquet", index=False)
        if baselines is not None:
            (tmp / "baselines.json").write_text(json.dumps(baselines, indent=2, allow_nan=False))
        group = zarr.open_group(tmp / "heatmaps.zarr", mode="w")
        group.attrs.update(heatmap_attrs)
        for name, (rows, values) in maps.items():
            sub = group.create_group(name)
            sub.create_array("rows", data=rows)
            sub.create_array("maps", data=values, chunks=(min(256, values.shape[0]),) + values.shape[1:])
            where = firing[name]
            sub.create_array("firing_map", data=where, chunks=(min(256, len(where)), where.shape[1]))


def _json_safe(value: Any) -> Any:
    """NaN (undefined, e.g. a correlation over too few concepts) becomes JSON null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def summarise(model: USAE, acc: Accumulator, cfg: EvaluateConfig) -> tuple[dict[str, Any], pd.DataFrame]:
    """The metrics (``metrics.json``) and the concept table of ``model`` from its accumulated sums."""
    names, n = model.names, acc.n_tokens
    r2_g = [[float(r2_global_mean(acc.sse[i, j], acc.sum_x[t], acc.sum_x2[t], n)) for j, t in enumerate(names)]
            for i in range(len(names))]
    r2_d = [[float(r2_per_dim(acc.sse[i, j], acc.sum_x[t], acc.sum_x2[t], n)) for j, t in enumerate(names)]
            for i in range(len(names))]
    mse = (acc.sse / torch.tensor([n * model.dims[t] for t in names], device=acc.sse.device)).tolist()
    fires = acc.fires.cpu()
    entropy = firing_entropy(fires)
    cfp = cofire_proportion(acc.cofires.cpu(), fires)
    energy = torch.stack([concept_energy(acc.code_sums[i].cpu() / n, model.dictionary(name).cpu())
                          for i, name in enumerate(names)])
    total_energy = energy.sum(dim=0)
    cofires = acc.cofires.cpu()
    active = (acc.code_sums.cpu() > 0)
    table = pd.DataFrame({"concept": np.arange(model.cfg.n_latents), "firing_entropy": entropy.numpy(),
                          "cofires": cofires.numpy(), "energy_total": total_energy.numpy()})
    for i, name in enumerate(names):
        top = acc.top[name]
        hit = top.values.cpu() > 0
        table[f"fires_{name}"] = fires[i].numpy()
        table[f"energy_{name}"] = energy[i].numpy()
        table[f"cfp_{name}"] = cfp[i].numpy()
        table[f"top_rows_{name}"] = list(torch.where(hit, top.rows.cpu(), -1).numpy())
        table[f"top_values_{name}"] = list(torch.where(hit, top.values.cpu(), 0.0).numpy())
    if len(names) > 1:
        table.insert(3, "cofires_chance", acc.chance_cofires().numpy())
    if acc.fires_at is not None:
        table.insert(2, "position_spread", position_spread(acc.fires_at.sum(dim=0).cpu()).numpy())
    cfp_mean = {name: float(np.nanmean(cfp[i].numpy())) if fires[i].any() else float("nan")
                for i, name in enumerate(names)}
    metrics = {
        "models": names, "n_tokens": n, "n_images": acc.n_images, "tau": cfg.tau, "chance_alpha": cfg.chance_alpha,
        "config": to_dict(cfg),
        "definitions": DEFINITIONS, "usae_version": __version__,
        "r2_global_mean": r2_g, "r2_per_dim": r2_d, "mse": mse,
        "l0": {name: float(acc.l0[i] / n) for i, name in enumerate(names)},
        "dead": {name: int((~active[i]).sum()) for i, name in enumerate(names)},
        "dead_fraction": {name: float((~active[i]).float().mean()) for i, name in enumerate(names)},
        "dead_above_tau": {name: int((fires[i] == 0).sum()) for i, name in enumerate(names)},
        "dead_above_tau_fraction": {name: float((fires[i] == 0).float().mean()) for i, name in enumerate(names)},
        "cofire_proportion_mean": cfp_mean,
        "concepts_firing_in_all_models": int((fires > 0).all(dim=0).sum()),
        "pearson_log_cofires_log_energy": float(log_log_pearson(cofires.double(), total_energy)),
        **cofire_summary(acc.pair_cofires, cofires, total_energy, cfg.min_cofires, n),
    }
    return metrics, table


def _heatmaps(model: USAE, sources: dict[str, TokenSource], acc: Accumulator, cfg: EvaluateConfig,
              device: torch.device, rows_of: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Second sequential pass: token activation maps of every concept's top images, per model."""
    m, n_top = model.cfg.n_latents, cfg.top_n
    tokens = next(iter(sources.values())).tokens_per_row
    top_rows = {n: torch.where(acc.top[n].values > 0, acc.top[n].rows, -1).cpu().numpy() for n in model.names}
    maps = {n: np.zeros((m, n_top, tokens), dtype=np.float16) for n in model.names}
    wanted: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for name, rows in top_rows.items():
        slots = wanted.setdefault(name, {})
        for concept, slot in zip(*np.nonzero(rows >= 0)):
            slots.setdefault(int(rows[concept, slot]), []).append((int(concept), int(slot)))
    for positions, block in blocks(sources, cfg.batch_images, cfg.max_images):
        for name in model.names:
            needed = [k for k, p in enumerate(positions) if int(rows_of[p]) in wanted[name]]
            if not needed:
                continue
            x = torch.from_numpy(block[name][needed].reshape(-1, model.dims[name])).to(device).float()
            codes = model.encode_sparse(name, x)
            for j, k in enumerate(needed):
                image = slice(j * tokens, (j + 1) * tokens)
                dense = Codes(codes.values[image], codes.indices[image]).dense(m)  # one image: (tokens, m)
                concepts, slot_ids = map(list, zip(*wanted[name][int(rows_of[positions[k]])]))
                maps[name][concepts, slot_ids] = dense[:, concepts].t().cpu().numpy()
    return {name: (top_rows[name], maps[name]) for name in model.names}
