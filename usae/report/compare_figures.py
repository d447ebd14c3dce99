"""Small-multiples figures of the comparison page: one panel per run, side by side (four to a row).

R2 matrices on one shared colour scale, firing-entropy histograms on one shared count axis, and
the training curves (loss per target, dead fraction) with one colour per model across every
panel. A run lacking what a panel needs gets an empty panel saying why, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure

from usae.report.figures import PALETTE, Figure, render_figure
from usae.report.panels import colour_range, draw_matrix, empty_panel

PANELS_PER_ROW = 4
ENTROPY_BINS = 20


@dataclass(frozen=True)
class PanelRun:
    """What the panels of one run draw.

    Attributes:
        models: The run's models, in order.
        r2: Per-dimension R2 matrix (source rows, target columns); None when absent.
        entropy: Firing entropy of the concepts that fire; None when the run has fewer than
            two models or no concept table.
        log: The training log; None when absent.
    """

    models: list[str]
    r2: np.ndarray | None
    entropy: np.ndarray | None
    log: pd.DataFrame | None


def _panels(fig: MplFigure, names: list[str]) -> list[Axes]:
    """One titled panel per run name, :data:`PANELS_PER_ROW` to a row; spare grid cells hidden."""
    cols = min(len(names), PANELS_PER_ROW)
    axes = fig.subplots(math.ceil(len(names) / cols), cols, squeeze=False).ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes, names):
        ax.set_title(name)
    return list(axes[: len(names)])


def _same_y(axes: list[Axes], label: str) -> None:
    """One y range for the panels that drew something, labelled in the first panel of each row (not ``sharey``:
    an empty panel's cleared ticks would clear every panel's)."""
    drawn = [ax for ax in axes if ax.lines or ax.patches]
    if drawn:
        lo, hi = min(ax.get_ylim()[0] for ax in drawn), max(ax.get_ylim()[1] for ax in drawn)
        for ax in drawn:
            ax.set_ylim(lo, hi)
    for ax in axes[::PANELS_PER_ROW]:
        ax.set_ylabel(label)


def draw_r2_panels(fig: MplFigure, runs: dict[str, PanelRun]) -> str:
    """Each run's R2 matrix, every panel on the colour range of all runs' entries together."""
    shown = {name: run.r2 for name, run in runs.items()
             if run.r2 is not None and run.r2.shape == (len(run.models), len(run.models))}
    lo, hi = colour_range(np.concatenate([m.ravel() for m in shown.values()]) if shown else [])
    image = None
    for ax, (name, run) in zip(_panels(fig, list(runs)), runs.items()):
        if name not in shown:
            empty_panel(ax, "no R2 matrix")
            continue
        image = draw_matrix(ax, shown[name], run.models, lo, hi, text=lambda v: f"{v:.2f}")
    if image is None:
        return "no run has an R2 matrix"
    below = any((m < lo).any() for m in shown.values())
    fig.colorbar(image, ax=[ax for ax in fig.axes if ax.get_visible()], shrink=0.8, extend="min" if below else "neither",
                 label=f"R2 (below {lo:.2f} in grey)" if below else "R2")
    return f"One colour scale for every panel: {lo:.2f} to {hi:.2f}"


def draw_entropy_panels(fig: MplFigure, runs: dict[str, PanelRun]) -> str:
    """Each run's histogram of firing entropy (bins on 0..1), on one shared count axis."""
    bins = np.linspace(0.0, 1.0, ENTROPY_BINS + 1)
    axes = _panels(fig, list(runs))
    for ax, run in zip(axes, runs.values()):
        ax.set_xlabel("firing entropy")
        if run.entropy is None:
            empty_panel(ax, "one model: firing entropy undefined" if len(run.models) < 2 else "no concept table")
            continue
        if run.entropy.size == 0:
            empty_panel(ax, "no concept fires")
            continue
        ax.hist(np.clip(run.entropy, 0.0, 1.0), bins=bins, color="#4c72b0", edgecolor="white")
        ax.set_xlim(0, 1)
    _same_y(axes, "concepts")
    return "" if any(ax.patches for ax in axes) else "no run has two models with concepts that fire"


def model_colours(runs: dict[str, PanelRun]) -> dict[str, tuple[float, float, float]]:
    """One colour per model over all runs (models in order of first appearance)."""
    models = list(dict.fromkeys(m for run in runs.values() for m in run.models))
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def draw_curve_panels(fig: MplFigure, runs: dict[str, PanelRun], prefix: str, label: str, *,
                      log_scale: bool) -> str:
    """Each run's ``<prefix>_<model>`` log columns against the step, one colour per model in every panel."""
    colours = model_colours(runs)
    axes = _panels(fig, list(runs))
    for ax, run in zip(axes, runs.values()):
        columns = [m for m in run.models if run.log is not None and f"{prefix}_{m}" in run.log.columns]
        if not columns:
            empty_panel(ax, "no training log")
            continue
        step = run.log["step"].to_numpy(dtype=float)
        for m in columns:
            values = run.log[f"{prefix}_{m}"].to_numpy(dtype=float)
            ax.plot(step, np.where(values > 0, values, np.nan) if log_scale else values, color=colours[m], lw=1.3,
                    label=m)
        ax.set_xlabel("step")
        if log_scale:
            ax.set_yscale("log")
    drawn = [ax for ax in axes if ax.lines]
    if not drawn:
        return "no run has a training log"
    _same_y(axes, label)
    handles = {line.get_label(): line for ax in drawn for line in ax.lines}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 8),
               title="model")
    return ""


_CAPTIONS = {
    "r2": ("R2 matrices", "Per-dimension R2 (variance explained) of target model j (column) from source model i's "
           "(row) codes, on the validation tokens; values below 0 are grey."),
    "entropy": ("Firing entropy", "Histogram over the concepts that fire of FE_k = -(1/log M) sum_i p_i log p_i, "
                f"p_i = fires_i / sum_j fires_j ({ENTROPY_BINS} bins on 0..1); undefined for a single model."),
    "loss": ("Training loss", "Reconstruction loss per target model (log scale) against the optimiser step, as "
             "logged (mean over train.log_every steps)."),
    "dead": ("Dead fraction during training", "Share of the latents not active (Z_k > 0) on any of the last "
             "sae.dead_tokens tokens a model encoded (the AuxK criterion), against the optimiser step."),
}


def comparison_figures(runs: dict[str, PanelRun], out_dir: Path) -> dict[str, Figure]:
    """Write the comparison's figures to ``out_dir`` (keys ``r2``, ``entropy``, ``loss``, ``dead``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = min(len(runs), PANELS_PER_ROW)
    rows = math.ceil(len(runs) / cols)
    draw: dict[str, tuple[Callable[[MplFigure], str], float]] = {
        "r2": (lambda fig: draw_r2_panels(fig, runs), 3.0),
        "entropy": (lambda fig: draw_entropy_panels(fig, runs), 2.4),
        "loss": (lambda fig: draw_curve_panels(fig, runs, "loss", "loss (per target)", log_scale=True), 2.6),
        "dead": (lambda fig: draw_curve_panels(fig, runs, "dead", "dead fraction", log_scale=False), 2.6),
    }
    return {key: render_figure(out_dir / f"{key}.png", *_CAPTIONS[key], (1.2 + 3.0 * cols, 0.9 + height * rows),
                               function)
            for key, (function, height) in draw.items()}
