"""Training the Universal SAE from disk: resumable, seeded, with a Parquet log.

Everything a step depends on is a pure function of (seed, step): the source model, the
token batch (``TokenLoader``) and the learning rate. A restart therefore resumes from the
newest checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from usae import STAGE_VERSIONS, __version__
from usae.activations.loader import TokenLoader
from usae.activations.sources import TokenSource
from usae.atomic import atomic_path
from usae.config import SAEConfig, TrainConfig, to_dict
from usae.device import resolve_device
from usae.sae.model import USAE
from usae.fingerprint import fingerprint
from usae.training.checkpoint import latest_checkpoint, remove_stale, save_checkpoint
from usae.training.schedule import learning_rate
from usae.training.speed import choose_decode
from usae.training.step import DeadLatents, training_step
from usae.training.tracking import make_tracker

logger = logging.getLogger(__name__)

SOURCE_SEED_OFFSET = 1_000_003  # keeps the source draw independent of the loader's streams


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run put its outputs, and its headline numbers."""

    model_dir: Path
    log_path: Path
    steps: int
    final_losses: dict[str, float]
    tokens_per_s: float


def source_of_step(seed: int, step: int, n_models: int) -> int:
    """The paper scheme's source model at ``step``: uniform, a pure function of (seed, step)."""
    return int(np.random.default_rng([seed + SOURCE_SEED_OFFSET, step]).integers(n_models))


def train_usae(sources: dict[str, TokenSource], sae_cfg: SAEConfig, cfg: TrainConfig, out_dir: str | Path, *,
               standardization: dict[str, dict] | None = None, provenance: dict[str, Any] | None = None,
               stop_after: int | None = None) -> TrainResult:
    """Train (or resume training) a USAE on paired token sources and save it.

    Args:
        sources: model name -> token source, rows aligned across models.
        sae_cfg: architecture. cfg: optimisation.
        out_dir: run folder: ``model/``, ``checkpoints/``, ``train_log.parquet`` go here.
        standardization: per model ``{"mean", "std", ...}`` of the data, saved with the model.
        provenance: what the data is (store paths, manifest hash), saved with the model.
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.

    Returns:
        Paths and summary figures of the run.
    """
    out_dir = Path(out_dir)
    names = list(sources)
    device = resolve_device(cfg.device, "train.device")
    torch.manual_seed(cfg.seed)
    loader = TokenLoader(sources, cfg.batch_tokens, cfg.buffer_tokens, cfg.seed, read_threads=cfg.read_threads,
                         pin_memory=device.type == "cuda")
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * loader.steps_per_epoch))
    # Everything the trained weights depend on: a checkpoint of other settings or data is never resumed.
    settings = {"sae": to_dict(sae_cfg), "train": to_dict(cfg), "models": names,
                "dims": {n: s.d_model for n, s in sources.items()}, "provenance": provenance or {},
                "standardization": standardization or {},
                "code": {"usae": __version__, "train_stage": STAGE_VERSIONS["train"]}}
    print_settings = {k: v for k, v in settings.items() if k not in ("provenance", "standardization", "code")}
    logger.info("train: %d steps of %d tokens (%.2f epochs of %d tokens): %s", total, cfg.batch_tokens,
                total / loader.steps_per_epoch, loader.tokens_per_epoch, json.dumps(print_settings))
    model = USAE({n: s.d_model for n, s in sources.items()}, sae_cfg, seed=cfg.seed).to(device)
    optimizer = _optimizer(model, cfg)
    dead = DeadLatents(names, sae_cfg.n_latents, device)
    key = fingerprint(settings)
    state = latest_checkpoint(out_dir / "checkpoints", key)
    rows: list[dict[str, Any]] = []
    if state is None:
        start = 0
        remove_stale(out_dir / "checkpoints", key)
        model.init_decoder_bias(_mean_activation(loader, device))
        dead.refresh(sae_cfg.dead_tokens)
        decode = choose_decode(model, loader, sae_cfg, device)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        dead.load_state_dict(state["dead"])
        start, decode, rows = state["step"], state["decode"], state["log"]
    model.sparse_decode = decode == "sparse"
    tracker = make_tracker(cfg.tracking, out_dir, settings)

    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16" and device.type == "cuda")
    # Per-step figures of the current log window; checkpointed so a resumed row is whole.
    window = torch.zeros(cfg.log_every, len(names), device=device)
    l0_window = torch.zeros(cfg.log_every, device=device)
    counts = np.zeros(len(names), dtype=np.int64)
    if state is not None:
        window.copy_(state["window"])
        l0_window.copy_(state["l0_window"])
        counts[:] = state["counts"]
    tick, tokens_since = time.perf_counter(), 0
    end = min(total, stop_after + 1) if stop_after is not None else total
    stream = loader.batches(start)
    model.train()
    bar = tqdm(range(start, end), initial=start, total=total, desc="train", unit="step", mininterval=2.0)
    for step in bar:
        batch = {n: t.to(device, non_blocking=True).float() for n, t in next(stream).items()}
        chosen = names if cfg.scheme == "all_sources" else [names[source_of_step(cfg.seed, step, len(names))]]
        lr = learning_rate(step, total, lr=cfg.lr, lr_end=cfg.lr_end, warmup=cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with amp:
            out = training_step(model, batch, chosen, sae_cfg, dead, update_all=cfg.scheme == "all_sources")
        out.loss.backward()
        model.remove_parallel_grads(chosen if cfg.scheme == "paper" else None)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
        optimizer.step()
        model.normalize_decoders(chosen if cfg.scheme == "paper" else None)
        for source, fired in out.fired.items():
            dead.update(source, fired, cfg.batch_tokens)
        slot = step % cfg.log_every
        window[slot] = out.target_losses
        l0_window[slot] = out.l0
        counts[[names.index(c) for c in chosen]] += 1
        tokens_since += cfg.batch_tokens
        last = step == total - 1
        if slot == cfg.log_every - 1 or last:
            _check_finite(window[: slot + 1], step - slot, names)
            elapsed = time.perf_counter() - tick
            row = _log_row(step, lr, window[: slot + 1], l0_window[: slot + 1], dead, sae_cfg, names, counts,
                           tokens_since / max(elapsed, 1e-9))
            rows.append(row)
            tracker.log(row, step)
            bar.set_postfix(loss=f"{sum(row[f'loss_{n}'] for n in names):.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            tick, tokens_since, counts[:] = time.perf_counter(), 0, 0
            dead.refresh(sae_cfg.dead_tokens)
        if (step + 1) % cfg.checkpoint_every == 0 or step == end - 1:
            save_checkpoint(out_dir / "checkpoints", step + 1, {
                "fingerprint": key, "step": step + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "dead": dead.state_dict(), "decode": decode, "log": rows, "window": window.cpu(),
                "l0_window": l0_window.cpu(), "counts": counts.copy()})
            _write_log(rows, out_dir / "train_log.parquet")
    bar.close()
    stream.close()  # stops the loader's background thread
    tracker.close()
    _write_log(rows, out_dir / "train_log.parquet")
    if end < total:
        logger.info("stopped after step %d of %d (checkpoint written)", end - 1, total)
    model.meta = {"scheme": cfg.scheme, "train": to_dict(cfg), "steps": end, "decode": decode,
                  "standardization": standardization or {}, "provenance": provenance or {},
                  "usae_version": __version__, "seed": cfg.seed}
    for name, stats in (standardization or {}).items():
        model.set_standardization(name, torch.as_tensor(stats["mean"]), float(stats["std"]))
    model_dir = model.eval().save(out_dir / "model")
    final = {n: rows[-1][f"loss_{n}"] for n in names} if rows else {}
    speed = float(np.mean([r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows] or [0.0]))
    return TrainResult(model_dir=model_dir, log_path=out_dir / "train_log.parquet", steps=end,
                       final_losses=final, tokens_per_s=speed)


def _optimizer(model: USAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    # One optimiser over all parameters; parameters without a gradient in a step (other
    # models in the paper scheme) are skipped by Adam, so each model's moments advance only
    # when it is the source, as with the paper's per-model optimisers.
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


@torch.no_grad()
def _mean_activation(loader: TokenLoader, device: torch.device, n_batches: int = 4) -> dict[str, torch.Tensor]:
    stream = loader.batches(0)
    sums: dict[str, torch.Tensor] = {}
    for _ in range(n_batches):
        for name, tensor in next(stream).items():
            sums[name] = sums.get(name, 0) + tensor.to(device).float().mean(dim=0)
    stream.close()
    return {name: s / n_batches for name, s in sums.items()}


def _check_finite(window: torch.Tensor, first_step: int, names: list[str]) -> None:
    finite = torch.isfinite(window)
    if not bool(finite.all()):
        bad_step, bad_model = (~finite).nonzero()[0].tolist()
        raise FloatingPointError(f"non-finite loss at step {first_step + bad_step}: reconstruction of "
                                 f"{names[bad_model]} is {window[bad_step, bad_model].item()}; lower train.lr "
                                 f"or check the data for NaN/inf")


def _log_row(step: int, lr: float, window: torch.Tensor, l0: torch.Tensor, dead: DeadLatents, sae_cfg: SAEConfig,
             names: list[str], counts: np.ndarray, tokens_per_s: float) -> dict[str, Any]:
    means = window.mean(dim=0).tolist()
    dead_frac = {n: float(v) for n, v in dead.fraction(sae_cfg.dead_tokens).items()}
    row: dict[str, Any] = {"step": step, "lr": lr, "l0": float(l0.mean()), "tokens_per_s": tokens_per_s}
    row.update({f"loss_{n}": v for n, v in zip(names, means)})
    row.update({f"dead_{n}": dead_frac[n] for n in names})
    row.update({f"source_{n}": int(c) for n, c in zip(names, counts)})
    return row


def _write_log(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def train_from_stores(store_paths: dict[str, str | Path], sae_cfg: SAEConfig, cfg: TrainConfig,
                      out_dir: str | Path, **kwargs: Any) -> TrainResult:
    """Train on the ``train`` split of aligned stores (stage 3 outputs), one per model.

    The stores' standardisation statistics and provenance are saved with the model, so
    ``USAE.load(...).encode(model, raw_activations)`` works on raw activations.
    """
    from usae.activations.sources import open_aligned

    sources = open_aligned({n: Path(p) for n, p in store_paths.items()}, split="train")
    standardization = {n: s.attrs["standardization"] for n, s in sources.items()}
    first = next(iter(sources.values()))
    provenance = {"stores": {n: str(p) for n, p in store_paths.items()},
                  "manifest_hash": first.attrs.get("manifest_hash"), "grid": first.attrs.get("grid"),
                  "backbones": {n: s.attrs.get("model") for n, s in sources.items()}}
    return train_usae(sources, sae_cfg, cfg, out_dir, standardization=standardization, provenance=provenance,
                      **kwargs)
