"""Figures of how the models share the code: the model x model co-firing matrix, the feature density
(log10 firing frequency of every concept, per model) and each important concept's energy share per model.

Each ``draw_*`` fills a matplotlib figure from plain arrays and returns a note for the caption
(empty when there is nothing to add); :mod:`usae.report.figures` registers and captions them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import PercentFormatter

from usae.metrics import energy_share, log_firing_frequency
from usae.report.panels import colour_range, draw_matrix, empty_panel

DENSITY_BIN = 0.25
"""Width of the feature-density bins, in log10 units."""
TOP_SHARE = 25
"""Concepts (largest total energy first) whose energy shares are drawn."""

Colour = tuple[float, float, float]


def _empty(fig: MplFigure, note: str) -> str:
    empty_panel(fig.subplots(), note)
    return note


def energy_shares(table: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """``share_<model>`` columns of a concept table (:func:`usae.metrics.energy_share` of its ``energy_<model>``)."""
    energy = torch.from_numpy(np.stack([table[f"energy_{m}"].to_numpy(dtype=np.float64) for m in models]))
    shares = energy_share(energy).numpy()
    return pd.DataFrame({f"share_{m}": shares[i] for i, m in enumerate(models)}, index=table.index)


def draw_cofire_matrix(fig: MplFigure, matrix: Sequence[Sequence[float]] | None, models: list[str]) -> str:
    """The co-firing matrix (``metrics.json`` ``cofire_matrix``), diagonal blank, colours spanning the rest."""
    n = len(models)
    mat = np.asarray(matrix if matrix is not None else [], dtype=float)
    if n < 2 or mat.shape != (n, n):
        return _empty(fig, "needs two models and an evaluation with cofire_matrix (rerun evaluate)")
    shown = np.where(np.eye(n, dtype=bool), np.nan, mat)  # the diagonal is 1 by definition
    lo, hi = colour_range(shown.ravel())
    ax = fig.subplots()
    image = draw_matrix(ax, shown, models, lo, hi, text=lambda v: f"{100 * v:.0f}%", missing="all")
    ax.set_xlabel("model j (fires the same concept on the same token)")
    ax.set_ylabel("model i (its firings)")
    bar = fig.colorbar(image, ax=ax, shrink=0.85, label="share of model i's firings")
    bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    return f"Colour range {100 * lo:.0f}% to {100 * hi:.0f}%"


def draw_density(fig: MplFigure, fires: dict[str, np.ndarray], n_tokens: int, colours: dict[str, Colour]) -> str:
    """Histogram of log10 firing frequency per concept, one outline per model; concepts that never fire counted."""
    if not fires or n_tokens <= 0:
        return _empty(fig, "no firing counts")
    density = {m: log_firing_frequency(torch.from_numpy(np.asarray(f, dtype=np.int64)), n_tokens).numpy()
               for m, f in fires.items()}
    finite = np.concatenate([d[np.isfinite(d)] for d in density.values()])
    if finite.size == 0:
        return _empty(fig, "no concept fires")
    # Bins start at the rarest concept's value: with few tokens the counts 1, 2, 3 are far apart in log10, and
    # bins on round numbers would leave empty bins between them.
    start = float(finite.min()) - 1e-9
    bins = start + DENSITY_BIN * np.arange(max(1, int(np.ceil(-start / DENSITY_BIN))) + 1)
    ax = fig.subplots()
    notes = []
    for m, d in density.items():
        dead = int((~np.isfinite(d)).sum())
        ax.hist(d[np.isfinite(d)], bins=bins, histtype="step", lw=1.6, color=colours[m],
                label=f"{m} ({dead} never fire)")
        notes.append(f"{m} {dead}")
    ax.set_xlabel("log10 firing frequency (share of tokens with Z_k > tau)")
    ax.set_ylabel("concepts")
    ax.legend(loc="upper right")
    return "Concepts that never fire (not drawn): " + ", ".join(notes)


def draw_energy_share(fig: MplFigure, table: pd.DataFrame | None, models: list[str],
                      colours: dict[str, Colour], top: int = TOP_SHARE) -> str:
    """Stacked bars: the energy share per model of the ``top`` concepts with the largest total energy."""
    needed = ["concept", "energy_total", *(f"energy_{m}" for m in models)]
    if table is None or any(c not in table.columns for c in needed):
        return _empty(fig, "no concept table")
    ranked = table.sort_values("energy_total", ascending=False, kind="stable")
    ranked = ranked[ranked["energy_total"] > 0].head(top)
    if ranked.empty:
        return _empty(fig, "no concept has energy")
    shares = energy_shares(ranked, models)
    ax = fig.subplots()
    y = np.arange(len(ranked))
    left = np.zeros(len(ranked))
    for m in models:
        ax.barh(y, shares[f"share_{m}"], left=left, color=colours[m], label=m, height=0.8)
        left += shares[f"share_{m}"].to_numpy()
    ax.set_yticks(y, [str(int(c)) for c in ranked["concept"]], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the concept's energy")
    ax.set_ylabel("concept (largest total energy first)")
    ax.grid(False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(models))
    return f"Drawn: the {len(ranked)} concepts with the largest energy_total"
