"""Panels shared by the report's figures: an empty panel with a note, and model x model matrices drawn as
annotated heatmaps on a colour range taken from the data (a fixed 0..1 range makes 0.77 and 0.97 look alike;
:func:`colour_range` spans the values shown, and every cell carries its number).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

TEXT_DARK_ABOVE = 0.6
"""Cells whose colour position (0..1 on the range) is above this get black text (viridis is light there)."""


def empty_panel(ax: Axes, note: str) -> None:
    """Mark ``ax`` as an empty panel carrying ``note``."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)


def colour_range(values: Iterable[float], step: float = 0.05, lowest: float | None = 0.0) -> tuple[float, float]:
    """The colour range of a heatmap: the finite values' span, rounded out to multiples of ``step``.

    lo = floor(min / step) * step and hi = ceil(max / step) * step over the finite values at
    or above ``lowest`` (values under it are drawn in the "under" colour); when every value
    is equal, hi = lo + step. With no such value: (lowest or 0, that + 1).

    Args:
        values: The matrix entries (NaN and infinities are ignored).
        step: Rounding step of both ends (> 0).
        lowest: Values below this do not set the range (None: all count).

    Returns:
        ``(lo, hi)`` with lo < hi.
    """
    finite = [float(v) for v in values if math.isfinite(float(v)) and (lowest is None or float(v) >= lowest)]
    if not finite:
        base = 0.0 if lowest is None else float(lowest)
        return base, base + 1.0
    lo = math.floor(round(min(finite) / step, 9)) * step
    hi = math.ceil(round(max(finite) / step, 9)) * step
    if hi <= lo:
        hi = lo + step
    return round(lo, 10), round(hi, 10)


def draw_matrix(ax: Axes, matrix: np.ndarray, models: list[str], lo: float, hi: float, *,
                text: Callable[[float], str], under: str = "0.8", missing: str = "nan") -> AxesImage:
    """An (M, M) matrix as a viridis heatmap on ``lo..hi`` with every cell's value written in it.

    Rows are source models, columns target models. Values under ``lo`` are drawn in ``under``
    (grey), NaN in white; ``text(v)`` writes a finite cell's value, ``missing`` a NaN cell's.
    """
    cmap = matplotlib.colormaps["viridis"].with_extremes(under=under, bad="white")
    image = ax.imshow(matrix, cmap=cmap, vmin=lo, vmax=hi)
    for (i, j), v in np.ndenumerate(matrix):
        position = (v - lo) / (hi - lo) if np.isfinite(v) else 1.0
        ax.text(j, i, text(float(v)) if np.isfinite(v) else missing, ha="center", va="center", fontsize=8,
                color="black" if position < 0 or position > TEXT_DARK_ABOVE else "white")
    n = len(models)
    ax.set_xticks(range(n), models, rotation=30, ha="right")
    ax.set_yticks(range(n), models)
    ax.grid(False)
    return image
