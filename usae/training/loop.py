"""Training the Universal SAE from disk: resumable, seeded, with a Parquet log.

Everything a step depends on is a pure function of (seed, step): the source model(s) (the
scheme's), the token batch (``TokenLoader``) and the learning rate. A restart therefore
resumes from the newest checkpoint and ends with the same weights as an uninterrupted run.

:func:`train_usae` reads top-down: the run's settings and fingerprint, a fresh start or a
resume (:func:`start_or_resume`), the steps (:func:`optimizer_step` each, a log row per
window, a checkpoint every ``checkpoint_every`` steps), then the saved model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from usae import STAGE_VERSIONS, __version__
from usae.activations.loader import TokenLoader
from usae.activations.sources import TokenSource
from usae.atomic import atomic_path
from usae.config import SAEConfig, TrackingConfig, TrainConfig, result_settings, to_dict
from usae.device import resolve_device
from usae.fingerprint import fingerprint
from usae.progress import progress_bar
from usae.registry import SCHEMES
from usae.sae.model import USAE
from usae.training.checkpoint import latest_checkpoint, save_checkpoint
from usae.training.dead import AUTO, DeadLatents, dead_window
from usae.training.log_lines import format_row, format_summary, summarize
from usae.training.schedule import learning_rate
from usae.training.schemes import Scheme
from usae.training.speed import choose_decode
from usae.training.startup import RunStream, initial_means
from usae.training.step import StepOutput, make_optimizer, optimizer_step
from usae.tracking import Tracker, send_row, start_training

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run put its outputs, and its headline numbers."""

    model_dir: Path
    log_path: Path
    steps: int
    final_losses: dict[str, float]
    tokens_per_s: float


class LogWindow:
    """Per-step figures since the last log row, kept on the device (no host sync per step).

    One slot per step of the window: the per-target losses and L0; plus how often each model
    was a source and the tokens and time since the window opened. Checkpointed, so a row of a
    resumed run is whole.
    """

    def __init__(self, names: list[str], log_every: int, device: torch.device) -> None:
        self.names = names
        self.losses = torch.zeros(log_every, len(names), device=device)
        self.l0 = torch.zeros(log_every, device=device)
        self.counts = np.zeros(len(names), dtype=np.int64)
        self.restart_clock()

    def restart_clock(self) -> None:
        self.tick, self.tokens = time.perf_counter(), 0

    def record(self, step: int, out: StepOutput, sources: list[str], n_tokens: int) -> None:
        slot = step % len(self.l0)
        self.losses[slot] = out.target_losses
        self.l0[slot] = out.l0
        self.counts[[self.names.index(c) for c in sources]] += 1
        self.tokens += n_tokens

    def close(self, step: int, lr: float, dead: DeadLatents, dead_tokens: int) -> dict[str, Any]:
        """The log row of the window ending at ``step`` (checked finite); the next window opens."""
        slot = step % len(self.l0)
        _check_finite(self.losses[: slot + 1], step - slot, self.names)
        tokens_per_s = self.tokens / max(time.perf_counter() - self.tick, 1e-9)
        means = self.losses[: slot + 1].mean(dim=0).tolist()
        dead_frac = {n: float(v) for n, v in dead.fraction(dead_tokens).items()}
        row: dict[str, Any] = {"step": step, "lr": lr, "l0": float(self.l0[: slot + 1].mean()),
                               "tokens_per_s": tokens_per_s}
        row.update({f"loss_{n}": v for n, v in zip(self.names, means)})
        row.update({f"dead_{n}": dead_frac[n] for n in self.names})
        row.update({f"source_{n}": int(c) for n, c in zip(self.names, self.counts)})
        self.restart_clock()
        self.counts[:] = 0
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.losses.cpu(), "l0_window": self.l0.cpu(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.copy_(state["window"])
        self.l0.copy_(state["l0_window"])
        self.counts[:] = state["counts"]


@dataclass
class TrainingState:
    """What a checkpoint holds besides the run's fingerprint; ``step`` is the next step to run."""

    model: USAE
    optimizer: torch.optim.Optimizer
    dead: DeadLatents
    window: LogWindow
    decode: str = "sparse"
    rows: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0

    def checkpoint(self, key: str) -> dict[str, Any]:
        return {"fingerprint": key, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "dead": self.dead.state_dict(), "decode": self.decode,
                "log": self.rows, **self.window.state_dict()}

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.dead.load_state_dict(saved["dead"])
        self.step, self.decode, self.rows = saved["step"], saved["decode"], saved["log"]
        self.window.load_state_dict(saved)


def train_usae(sources: dict[str, TokenSource], sae_cfg: SAEConfig, cfg: TrainConfig, out_dir: str | Path, *,
               standardization: dict[str, dict] | None = None, provenance: dict[str, Any] | None = None,
               validation_tokens: int | None = None, tracking: TrackingConfig | None = None,
               stop_after: int | None = None) -> TrainResult:
    """Train (or resume training) a USAE on paired token sources and save it.

    Args:
        sources: model name -> token source, rows aligned across models.
        sae_cfg: architecture. cfg: optimisation.
        out_dir: run folder: ``model/``, ``checkpoints/``, ``train_log.parquet`` go here.
        standardization: per model ``{"mean", "std", ...}`` of the data, saved with the model.
        provenance: what the data is (store paths, manifest hash), saved with the model.
        validation_tokens: tokens of the held-out split, for ``sae.dead_tokens: auto``
            (:func:`usae.training.dead.dead_window`); None when there is none.
        tracking: where the log rows are also sent (:mod:`usae.tracking`; the run is named
            after ``out_dir``); None for nowhere.
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.

    Returns:
        Paths and summary figures of the run.
    """
    out_dir = Path(out_dir)
    names = list(sources)
    device = resolve_device(cfg.device, "train.device")
    torch.manual_seed(cfg.seed)
    if cfg.gather == "device" and device.type == "cpu":
        logger.warning("train.gather = 'device' on a CPU gathers from a copy of each buffer: the same batches, "
                       "slower than 'host'")
    loader = TokenLoader(sources, cfg.batch_tokens, cfg.buffer_tokens, cfg.seed, read_threads=cfg.read_threads,
                         pin_memory=device.type == "cuda" and cfg.gather == "host")
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * loader.steps_per_epoch))
    scheme = SCHEMES.get(cfg.scheme, setting="train.scheme")(names, cfg.seed)
    sae_cfg = _with_dead_window(sae_cfg, cfg, total, scheme, validation_tokens)
    settings = run_settings(sources, sae_cfg, cfg, standardization=standardization, provenance=provenance)
    _log_plan(settings, total, loader, cfg)
    model = USAE({n: s.d_model for n, s in sources.items()}, sae_cfg, seed=cfg.seed).to(device)
    state = TrainingState(model, make_optimizer(model, cfg), DeadLatents(names, sae_cfg.n_latents, device),
                          LogWindow(names, cfg.log_every, device))
    key = fingerprint(settings)
    stream = start_or_resume(state, out_dir / "checkpoints", key, loader, device, gather=cfg.gather)
    tracker = start_training(tracking, fingerprint=key, folder=out_dir, settings=shown_settings(settings),
                             names=names, rows=state.rows)
    end = min(total, stop_after + 1) if stop_after is not None else total
    first, tick = state.step, time.perf_counter()
    try:
        run_steps(state, scheme, stream, cfg, total=total, end=end, tracker=tracker, key=key, out_dir=out_dir)
    finally:
        tracker.close()
    logger.info("%s", format_summary(state.rows, names, steps=end, total=total, ran=max(0, end - first),
                                     seconds=time.perf_counter() - tick))
    _write_log(state.rows, out_dir / "train_log.parquet")
    if end < total:
        logger.info("stopped after step %d of %d (checkpoint written)", end - 1, total)
    model_dir = save_trained_model(model, cfg, steps=end, decode=state.decode, standardization=standardization,
                                   provenance=provenance, directory=out_dir / "model", fingerprint=key)
    final, speed = summarize(state.rows, names)
    return TrainResult(model_dir=model_dir, log_path=out_dir / "train_log.parquet", steps=end,
                       final_losses=final, tokens_per_s=speed)


def _with_dead_window(sae_cfg: SAEConfig, cfg: TrainConfig, total: int, scheme: Scheme,
                      validation_tokens: int | None) -> SAEConfig:
    """``sae_cfg`` with ``dead_tokens`` resolved to a number of tokens (saved with the model).

    Each model's share of the source tokens is the scheme's own count of sources a step
    (the same at every step for the built-in schemes), spread evenly over the models.
    """
    sources_per_step = len(scheme.sources(0))
    source_tokens = total * cfg.batch_tokens * sources_per_step // len(scheme.names)
    window = dead_window(sae_cfg.dead_tokens, source_tokens=source_tokens, validation_tokens=validation_tokens,
                         batch_tokens=cfg.batch_tokens)
    if sae_cfg.dead_tokens == AUTO:
        logger.info("sae.dead_tokens = auto: %d tokens per model (validation tokens %s, %d tokens per model as "
                    "source over the run)", window, validation_tokens, source_tokens)
    return dataclasses.replace(sae_cfg, dead_tokens=window)


PATH_KEYS = ("stores", "arrays")  # provenance entries that say where the data is, not what it is


def run_settings(sources: dict[str, TokenSource], sae_cfg: SAEConfig, cfg: TrainConfig, *,
                 standardization: dict[str, dict] | None, provenance: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the trained weights depend on (the checkpoints' fingerprint is made of it):
    a checkpoint of other settings, data or training code is never resumed. Where the data
    lies (``provenance[PATH_KEYS]``) is left out: moving ``results/`` keeps its checkpoints;
    so are the training settings declared not to change results (threads, gather, checkpoint
    cadence: :func:`usae.config.result_settings`)."""
    content = {k: v for k, v in (provenance or {}).items() if k not in PATH_KEYS}
    return {"sae": result_settings(sae_cfg), "train": result_settings(cfg), "models": list(sources),
            "dims": {n: s.d_model for n, s in sources.items()}, "provenance": content,
            "standardization": standardization or {},
            "code": {"usae": __version__, "train_stage": STAGE_VERSIONS["train"]}}


def shown_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings a person reads (log, tracker config): data statistics and code versions left out."""
    return {k: v for k, v in settings.items() if k not in ("provenance", "standardization", "code")}


def _log_plan(settings: dict[str, Any], total: int, loader: TokenLoader, cfg: TrainConfig) -> None:
    logger.info("train: %d steps of %d tokens (%.2f epochs of %d tokens): %s", total, cfg.batch_tokens,
                total / loader.steps_per_epoch, loader.tokens_per_epoch, json.dumps(shown_settings(settings)))


def start_or_resume(state: TrainingState, directory: Path, key: str, loader: TokenLoader,
                    device: torch.device, gather: str = "host") -> RunStream:
    """Restore ``state`` from the newest checkpoint in ``directory`` with fingerprint ``key``;
    without one, start afresh: decoder bias = mean activation (a strided sample), dead-latent
    lists, decoding method (``sae.decode``, timed on the first batch when ``auto``). Other
    settings' checkpoints stay until this run writes its first (:func:`save_checkpoint`).
    Returns the run's batch stream from ``state.step`` (gathered on ``device`` when ``gather``
    is ``device``), opened before the start-up reads."""
    saved = latest_checkpoint(directory, key)
    if saved is not None:
        state.restore(saved)
    stream = RunStream(loader.batches(state.step, device=device if gather == "device" else None))
    if saved is None:
        state.model.init_decoder_bias(initial_means(loader, device))
        state.dead.refresh(state.model.cfg.dead_tokens)
        state.decode = choose_decode(state.model, stream, state.model.cfg, device)
    state.model.sparse_decode = state.decode == "sparse"
    return stream


def run_steps(state: TrainingState, scheme: Scheme, stream: RunStream, cfg: TrainConfig, *, total: int, end: int,
              tracker: Tracker, key: str, out_dir: Path) -> None:
    """Steps ``state.step`` to ``end - 1`` of ``total`` on ``stream`` (batches from ``state.step``): a log
    row closes every ``log_every`` steps (and at the last step), a checkpoint is written every
    ``checkpoint_every`` steps and at ``end``."""
    device = next(state.model.parameters()).device
    state.model.train()
    state.window.restart_clock()
    bar = progress_bar(range(state.step, end), initial=state.step, total=total, desc="train", unit="step")
    for step in bar:
        batch = {n: t.to(device, non_blocking=True).float() for n, t in next(stream).items()}
        sources = scheme.sources(step)
        lr = learning_rate(step, total, lr=cfg.lr, lr_end=cfg.lr_end, warmup=cfg.warmup)
        out = optimizer_step(state.model, state.optimizer, batch, sources, scheme=scheme, dead=state.dead, lr=lr,
                             cfg=cfg)
        state.window.record(step, out, sources, cfg.batch_tokens)
        state.step = step + 1
        if step % cfg.log_every == cfg.log_every - 1 or step == total - 1:
            _log_row(state, step, lr, tracker, bar, total)
        if state.step % cfg.checkpoint_every == 0 or state.step == end:
            save_checkpoint(out_dir / "checkpoints", state.step, state.checkpoint(key))
            _write_log(state.rows, out_dir / "train_log.parquet")
    bar.close()
    stream.close()  # stops the loader's background thread


def _log_row(state: TrainingState, step: int, lr: float, tracker: Tracker, bar: Any, total: int) -> None:
    """Close the log window at ``step``: one row to the Parquet log, the tracker, the log
    records and the progress bar (drawn on a terminal only); then refresh the dead-latent
    lists (this is where the loop syncs with the device anyway)."""
    dead_tokens = state.model.cfg.dead_tokens
    row = state.window.close(step, lr, state.dead, dead_tokens)
    state.rows.append(row)
    send_row(tracker, row, state.window.names)
    logger.info("%s", format_row(row, state.window.names, total))
    loss = sum(row[f"loss_{n}"] for n in state.window.names)
    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
    state.dead.refresh(dead_tokens)


def save_trained_model(model: USAE, cfg: TrainConfig, *, steps: int, decode: str,
                       standardization: dict[str, dict] | None, provenance: dict[str, Any] | None,
                       directory: Path, fingerprint: str | None = None) -> Path:
    """Record the run in ``model.meta`` and the data's standardisation in the model, then save it.
    ``fingerprint`` (the checkpoints' key) lets evaluation find the run's tracker run."""
    model.meta = {"scheme": cfg.scheme, "train": to_dict(cfg), "steps": steps, "decode": decode,
                  "fingerprint": fingerprint,
                  "standardization": standardization or {}, "provenance": provenance or {},
                  "usae_version": __version__, "seed": cfg.seed}
    for name, stats in (standardization or {}).items():
        model.set_standardization(name, torch.as_tensor(stats["mean"]), float(stats["std"]))
    return model.eval().save(directory)


def _check_finite(window: torch.Tensor, first_step: int, names: list[str]) -> None:
    finite = torch.isfinite(window)
    if not bool(finite.all()):
        bad_step, bad_model = (~finite).nonzero()[0].tolist()
        raise FloatingPointError(f"non-finite loss at step {first_step + bad_step}: reconstruction of "
                                 f"{names[bad_model]} is {window[bad_step, bad_model].item()}; lower train.lr "
                                 f"or check the data for NaN/inf")


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
    validation = open_aligned({n: Path(p) for n, p in store_paths.items()}, split="val")
    kwargs.setdefault("validation_tokens", _valid_tokens(next(iter(validation.values()))))
    return train_usae(sources, sae_cfg, cfg, out_dir, standardization=standardization, provenance=provenance,
                      **kwargs)


def _valid_tokens(source: TokenSource) -> int:
    """Tokens of the valid rows of a split (what evaluation measures over)."""
    rows = source.n_rows if source.valid is None else int(np.count_nonzero(source.valid))
    return rows * source.tokens_per_row
