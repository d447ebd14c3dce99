"""Concept heatmaps: read them from ``eval/heatmaps.zarr`` and draw them as image overlays."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from PIL import Image

if TYPE_CHECKING:
    from usae.report.explorer import ExplorerIndex

logger = logging.getLogger(__name__)

# Viridis, 9 stops (matplotlib); the same table is in static/explorer.js.
VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


class Heatmaps:
    """Read access to ``eval/heatmaps.zarr``, one chunk of concepts at a time per model and array."""

    def __init__(self, eval_dir: Path, models: Iterable[str]) -> None:
        group = zarr.open_group(Path(eval_dir) / "heatmaps.zarr", mode="r")
        tokens = int(group.attrs["tokens_per_image"])
        grid = group.attrs.get("grid")
        side = int(round(math.sqrt(tokens)))
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1])) if grid else (side, tokens // max(side, 1))
        if self.grid[0] * self.grid[1] != tokens:
            raise ValueError(f"heatmap grid {self.grid} does not match {tokens} tokens per image")
        self.n_images: int | None = group.attrs.get("n_images")
        """Validation images the firing maps count over (None: an evaluation from before they were written)."""
        present = set(group.group_keys())
        self._rows = {m: np.asarray(group[m]["rows"][:]) for m in models if m in present}
        self._arrays = {(m, key): group[m][key] for m in models if m in present for key in ("maps", "firing_map")
                        if key in group[m]}
        for m in models:
            if m not in present:
                logger.warning("heatmaps.zarr has no group for model %s; its pages show images only", m)
        self._block: dict[tuple[str, str], tuple[int, int, np.ndarray]] = {}

    def get(self, model: str, concept: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows ``(top_n,)`` and maps ``(top_n, h, w)`` float64 of one concept, or None."""
        maps = self._read(model, "maps", concept)
        return None if maps is None else (self._rows[model][concept], maps.reshape(-1, *self.grid))

    def firing(self, model: str, concept: int) -> np.ndarray | None:
        """Where ``model`` fires ``concept``: ``(h, w)``, the share of the validation images in which it fires
        the concept at each token position; None for an evaluation without firing maps."""
        counts = self._read(model, "firing_map", concept)
        if counts is None or not self.n_images:
            return None
        return counts.reshape(self.grid) / self.n_images

    def _read(self, model: str, key: str, concept: int) -> np.ndarray | None:
        """Row ``concept`` of ``model``'s array ``key`` as float64 (its chunk read once), or None without it."""
        array = self._arrays.get((model, key))
        if array is None:
            return None
        start, stop, block = self._block.get((model, key), (0, 0, np.empty(0)))
        if not start <= concept < stop:
            size = int(array.chunks[0])
            start = concept // size * size
            stop = min(start + size, array.shape[0])
            block = np.asarray(array[start:stop], dtype=np.float64)
            self._block[(model, key)] = (start, stop, block)
        return block[concept - start]


def colorize(values: np.ndarray, size: int, *, vmax: float | None = None, alpha: float = 0.5) -> Image.Image:
    """A heatmap grid as an RGBA overlay of ``size x size``: bilinear upsample, viridis, alpha.

    Alpha grows with the value (``alpha * sqrt(v / vmax)``), so inactive patches stay clear.
    """
    grid = np.asarray(values, dtype=np.float32)
    top = float(vmax if vmax is not None else grid.max())
    norm = np.clip(grid / top, 0.0, 1.0) if top > 0 else np.zeros_like(grid)
    big = np.asarray(Image.fromarray(norm, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    big = np.clip(big, 0.0, 1.0).astype(np.float64)
    pos = big * (len(VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = VIRIDIS[lo] * (1 - frac) + VIRIDIS[lo + 1] * frac
    a = alpha * np.sqrt(big) * 255.0
    rgba = np.concatenate([rgb, a[..., None]], axis=-1)
    return Image.fromarray(np.round(rgba).clip(0, 255).astype(np.uint8), mode="RGBA")


def render_overlays(concept_id: int, index: ExplorerIndex, *, alpha: float = 0.5,
                    heatmaps: Heatmaps | None = None) -> dict[tuple[str, int], str]:
    """Write ``overlays/c<id>_<model>_<slot>.png`` for each top image with a heatmap.

    Maps are normalised by the concept's maximum over all slots of that model.

    Returns:
        ``(model, slot)`` -> overlay path relative to ``index.out_dir``.
    """
    heatmaps = heatmaps or Heatmaps(index.eval_dir, index.models)
    (index.out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    written = {}
    for m in index.models:
        heat = heatmaps.get(m, int(concept_id))
        if heat is None:
            continue
        rows, maps = heat
        valid = rows >= 0
        vmax = float(maps[valid].max()) if valid.any() else 0.0
        for slot in np.flatnonzero(valid):
            rel = f"overlays/c{int(concept_id)}_{m}_{int(slot)}.png"
            colorize(maps[slot], index.thumb_size, vmax=vmax, alpha=alpha).save(index.out_dir / rel)
            written[(m, int(slot))] = rel
    return written
