"""Static PNG figures for a trained Universal SAE run folder.

Uses matplotlib's object API (``matplotlib.figure.Figure`` rendered by the Agg
canvas), so no pyplot global state is touched. PNGs are written with
``metadata={"Software": None}`` so the bytes are identical between runs given
the same inputs and matplotlib/freetype versions (nothing is random).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from usae.report.panels import colour_range, draw_matrix, empty_panel as _empty
from usae.report.sharing import draw_cofire_matrix, draw_density, draw_energy_share

logger = logging.getLogger(__name__)

DPI = 110
TOP_RANK = 1000
SMOOTH = 25
PALETTE = matplotlib.colormaps["tab10"].colors
_RC = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
       "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False}
_DEFAULT_DEFS = {
    "r2_global_mean": "1 - SSE / sum((a - mean over all tokens and dims)^2)",
    "r2_per_dim": "1 - SSE / sum((a - per-dimension mean)^2) (variance explained)",
    "firing_entropy": "FE_k = -(1/log M) sum_i p_i log p_i, p_i = fires_i / sum_j fires_j",
    "cofire_proportion": "CFP_k^(i) = cofires_k / fires_k^(i)",
    "energy": "||E[Z_k] D_k||^2 per model; energy_total sums the models",
    "cofire_matrix": "share of model i's firings (token, concept pairs with Z_k > tau) on which model j fires the "
                     "same concept on the same token (row i, column j)",
}


@dataclass(frozen=True)
class Figure:
    """A written figure.

    Attributes:
        path: File name of the PNG, relative to the output folder.
        title: Short human-readable title.
        caption: Caption stating the definitions used.
    """

    path: Path
    title: str
    caption: str


@dataclass(frozen=True)
class _Run:
    models: list[str]
    metrics: dict[str, Any]
    log: pd.DataFrame | None
    concepts: pd.DataFrame | None

    def colour(self, model: str) -> tuple[float, float, float]:
        return PALETTE[self.models.index(model) % len(PALETTE)] if model in self.models else (0.4, 0.4, 0.4)

    def define(self, key: str) -> str:
        return str(self.metrics.get("definitions", {}).get(key, _DEFAULT_DEFS.get(key, key)))


def _read_parquet(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        logger.warning("missing %s; its figures will be empty", path)
        return None
    return pd.read_parquet(path)


def _load(run_dir: Path) -> _Run:
    mpath = run_dir / "eval" / "metrics.json"
    metrics: dict[str, Any] = json.loads(mpath.read_text()) if mpath.exists() else {}
    log = _read_parquet(run_dir / "train_log.parquet")
    concepts = _read_parquet(run_dir / "eval" / "concepts.parquet")
    models = [str(m) for m in metrics.get("models", [])]
    if not models and log is not None:
        models = [c[len("loss_"):] for c in log.columns if c.startswith("loss_")]
    return _Run(models, metrics, log, concepts)


def _column(df: pd.DataFrame | None, name: str) -> np.ndarray | None:
    if df is None or name not in df.columns:
        return None
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)


def _training(run: _Run, fig: MplFigure) -> str:
    ax_loss, ax_dead, ax_lr = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]})
    step = _column(run.log, "step")
    if step is None or len(step) == 0:
        for ax in (ax_loss, ax_dead, ax_lr):
            _empty(ax, "no training log")
        return "no training log"
    for m in run.models:
        loss, dead = _column(run.log, f"loss_{m}"), _column(run.log, f"dead_{m}")
        if loss is not None:
            ax_loss.plot(step, np.where(loss > 0, loss, np.nan), color=run.colour(m), lw=1.3, label=m)
        if dead is not None:
            ax_dead.plot(step, dead, color=run.colour(m), lw=1.3, label=m)
    if ax_loss.lines and np.isfinite(np.concatenate([ln.get_ydata() for ln in ax_loss.lines])).any():
        ax_loss.set_yscale("log")
        ax_loss.legend(title="target model", loc="upper right")
    else:
        _empty(ax_loss, "no positive loss values")
    ax_loss.set_ylabel("loss (per target)")
    ax_dead.set_ylabel("dead fraction")
    if not ax_dead.lines:
        _empty(ax_dead, "no dead-fraction columns")
    lr = _column(run.log, "lr")
    if lr is not None:
        ax_lr.plot(step, lr, color="0.3", lw=1.0)
    else:
        _empty(ax_lr, "no lr column")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    return ""


def _r2(run: _Run, fig: MplFigure) -> str:
    axes = fig.subplots(1, 2)
    n = len(run.models)
    mats = {key: np.asarray(run.metrics.get(key, []), dtype=float) for key in ("r2_per_dim", "r2_global_mean")}
    shown = [mat for mat in mats.values() if mat.ndim == 2 and mat.shape == (n, n) and n > 0]
    lo, hi = colour_range(np.concatenate([mat.ravel() for mat in shown]) if shown else [])
    image = None
    for ax, (key, mat), label in zip(axes, mats.items(), ("R2 per-dimension", "R2 global-mean")):
        ax.set_title(label)
        if not any(mat is m for m in shown):
            _empty(ax, f"{key} missing or not {n}x{n}")
            continue
        image = draw_matrix(ax, mat, run.models, lo, hi, text=lambda v: f"{v:.2f}" if v >= 0 else f"{v:.2f}\n(<0)")
        ax.set_xlabel("target model")
        ax.set_ylabel("source model")
    if image is None:
        return ""
    below = any((m < lo).any() for m in shown)
    fig.colorbar(image, ax=list(axes), shrink=0.85, extend="min" if below else "neither",
                 label=f"R2 (values below {lo:.2f} in grey)" if below else "R2")
    return f"Colour range {lo:.2f} to {hi:.2f}: the values' span rounded out to 0.05"


def _entropy(run: _Run, fig: MplFigure) -> str:
    ax = fig.subplots()
    fe = _column(run.concepts, "firing_entropy")
    fe = fe[np.isfinite(fe)] if fe is not None else np.array([])
    ax.set_xlabel("firing entropy FE_k")
    ax.set_ylabel("concepts")
    if len(run.models) < 2:
        _empty(ax, "firing entropy needs at least 2 models")
        return "single model: FE undefined"
    if fe.size == 0:
        _empty(ax, "no concept fires")
        return "no concept fires"
    ax.hist(np.clip(fe, 0.0, 1.0), bins=np.linspace(0.0, 1.0, 21), color="#4c72b0", edgecolor="white")
    high = int((fe >= 0.99).sum())
    ax.set_xlim(0, 1)
    ax.set_title(f"{fe.size} firing concepts; {high} with FE >= 0.99")
    return f"{fe.size} concepts fire; {high} have FE >= 0.99"


def _cofire(run: _Run, fig: MplFigure) -> str:
    ax = fig.subplots()
    means = run.metrics.get("cofire_proportion_mean", {}) or {}
    for m in run.models:
        energy, cfp = _column(run.concepts, f"energy_{m}"), _column(run.concepts, f"cfp_{m}")
        if energy is None or cfp is None:
            continue
        order = np.argsort(-np.nan_to_num(energy, nan=-np.inf), kind="stable")[:TOP_RANK]
        y = cfp[order]
        if not np.isfinite(y).any():
            continue
        mean = means.get(m)
        mean = float(np.nanmean(cfp)) if mean is None or not np.isfinite(mean) else float(mean)
        rank = np.arange(1, len(y) + 1)
        ax.plot(rank, y, color=run.colour(m), lw=0.6, alpha=0.25)
        smooth = pd.Series(y).rolling(SMOOTH, min_periods=1, center=True).mean().to_numpy()
        ax.plot(rank, smooth, color=run.colour(m), lw=1.6, label=f"{m} (mean CFP {mean:.3f})")
    ax.set_xlabel(f"concept rank by that model's energy (top {TOP_RANK} or all)")
    ax.set_ylabel("co-fire proportion CFP")
    if not ax.lines:
        _empty(ax, "no concept fires")
        return "no concept fires"
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper right")
    return ""


def _scatter(run: _Run, fig: MplFigure) -> str:
    ax = fig.subplots()
    cof, energy = _column(run.concepts, "cofires"), _column(run.concepts, "energy_total")
    ax.set_xlabel("log10 energy_total")
    ax.set_ylabel("log10 co-fires")
    if cof is None or energy is None:
        _empty(ax, "no concept table")
        return "no concept table"
    keep = np.isfinite(cof) & np.isfinite(energy) & (cof > 0) & (energy > 0)
    x, y = np.log10(energy[keep]), np.log10(cof[keep])
    if x.size == 0:
        _empty(ax, "no concept co-fires")
        return "no concept co-fires"
    ax.scatter(x, y, s=8, alpha=0.5, color="#4c72b0", linewidths=0)
    if x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = float(np.corrcoef(x, y)[0, 1])
        slope, icept = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + icept, color="#c44e52", lw=1.5, label=f"fit: slope {slope:.2f}")
        ax.legend(loc="lower right")
        ax.set_title(f"Pearson r = {r:.3f} (n = {x.size})")
        return f"Pearson r = {r:.3f} over {x.size} concepts"
    ax.set_title(f"Pearson r undefined (n = {x.size})")
    return f"Pearson r undefined over {x.size} concepts"


def _captions(run: _Run) -> dict[str, tuple[str, str, int, int]]:
    """Title, caption, width and height (inches * 10) for each figure key."""
    return {
        "training": ("Training curves", "Reconstruction loss per target model (log scale); dead fraction per model "
                     "during training: concepts not active (Z_k > 0) on any of the last sae.dead_tokens tokens that "
                     "model encoded as a source (the AuxK criterion; the setup table counts dead concepts on the "
                     "validation tokens instead); learning rate vs optimiser step.", 70, 68),
        "r2": ("Cross-model reconstruction R2", f"Entry (i, j): target model j (column) reconstructed from source "
               f"model i's (row) codes. Per-dimension R2 = {run.define('r2_per_dim')}; global-mean R2 = "
               f"{run.define('r2_global_mean')}. Colours span the values shown (the bar), so close values stay apart; "
               "values below 0 are grey; each cell states its value.", 100, 45),
        "entropy": ("Firing entropy", f"{run.define('firing_entropy')}, over concepts that fire (20 bins on 0..1); "
                    "paper: bimodal with peaks at 1 and ~0.6.", 65, 42),
        "cofire": ("Co-fire proportion by energy rank", f"{run.define('cofire_proportion')}; a co-fire is a token on "
                   f"which the concept fires in every model. Concepts ranked by that model's energy "
                   f"({run.define('energy')}), top {TOP_RANK} or all; NaN where the concept never fires. Faint: raw; "
                   f"solid: centred rolling mean over {SMOOTH} ranks.", 70, 42),
        "scatter": ("Co-fires vs energy", "log10 co-fires vs log10 energy_total over concepts with co-fires > 0 and "
                    "energy_total > 0, with the Pearson correlation r and least-squares regression line; "
                    f"energy: {run.define('energy')}.", 60, 48),
        "cofire_matrix": ("Co-firing between models", f"Co-firing matrix: {run.define('cofire_matrix')}. The "
                          "diagonal (1: all of model i's firings) is left blank so the colours span the other cells.",
                          62, 45),
        "density": ("Feature density", f"Per model, a histogram over concepts of log10(fires / tokens): the share "
                    f"of the {run.metrics.get('n_tokens', '?')} validation tokens on which the concept fires "
                    f"(Z_k > tau); 0 = every token, -2 = one token in a hundred.", 65, 42),
        "energy_share": ("Energy share per model", f"Each concept's energy split by model: share_i(k) = energy_i(k) / "
                         f"sum_j energy_j(k), with energy_i(k) = {run.define('energy')}. A concept all one colour "
                         "lives in one model's reconstructions; equal parts, in all of them.", 70, 60),
    }


def _cofire_matrix(run: _Run, fig: MplFigure) -> str:
    return draw_cofire_matrix(fig, run.metrics.get("cofire_matrix"), run.models)


def _density(run: _Run, fig: MplFigure) -> str:
    fires = {m: _column(run.concepts, f"fires_{m}") for m in run.models}
    fires = {m: np.nan_to_num(f).astype(np.int64) for m, f in fires.items() if f is not None}
    return draw_density(fig, fires, int(run.metrics.get("n_tokens") or 0), {m: run.colour(m) for m in fires})


def _energy_share(run: _Run, fig: MplFigure) -> str:
    return draw_energy_share(fig, run.concepts, run.models, {m: run.colour(m) for m in run.models})


_DRAW: dict[str, Callable[[_Run, MplFigure], str]] = {
    "training": _training, "r2": _r2, "entropy": _entropy, "cofire": _cofire, "scatter": _scatter,
    "cofire_matrix": _cofire_matrix, "density": _density, "energy_share": _energy_share,
}


def render_figure(path: Path, title: str, caption: str, size: tuple[float, float],
                  draw: Callable[[MplFigure], str]) -> Figure:
    """Draw one figure in the report's style (``draw(fig)`` returns a note for the caption) and save it as ``path``.

    Returns:
        Its record: ``path`` is the file name (relative to its folder); the note ends the caption.
    """
    with matplotlib.rc_context(_RC):
        fig = MplFigure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        note = draw(fig)
        fig.suptitle(title, fontsize=11)
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
    logger.info("wrote %s", path)
    return Figure(Path(path.name), title, f"{caption} {note}." if note else caption)


def make_figures(run_dir: Path, out_dir: Path) -> dict[str, Figure]:
    """Render the report figures of one run folder as PNGs.

    Args:
        run_dir: ``results/runs/<run>/`` holding ``train_log.parquet`` and ``eval/``.
        out_dir: Folder the PNGs are written to (created if needed).

    Returns:
        Figure records keyed by ``training``, ``r2``, ``entropy``, ``cofire``, ``scatter``,
        ``cofire_matrix``, ``density`` and ``energy_share``; each ``path`` is relative to ``out_dir``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _load(run_dir)
    return {key: render_figure(out_dir / f"{key}.png", title, caption, (width / 10, height / 10),
                               lambda fig, key=key: _DRAW[key](run, fig))
            for key, (title, caption, width, height) in _captions(run).items()}
