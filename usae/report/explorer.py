"""A static concept explorer that opens from disk (``file://``, no network, no ``fetch``).

Output layout under ``out_dir``::

    concepts.html          every concept: searchable, sortable table (data/concepts.js)
    concept.html           one template page; ``concept.html?id=K`` loads data/cK.js
    static/explorer.js     the page logic (both pages), static/style.css
    data/meta.js           window.USAE_META = {models, grid, thumb_size, pages: [ids with a page]}
    data/concepts.js       window.USAE_CONCEPTS = [summary row per concept]  (NaN -> null)
    data/c<id>.js          window.USAE_CONCEPT = {summary, per model top images + heatmaps}
    thumbs/<row>.jpg       square thumbnail of each manifest row in a top list
    overlays/c<id>_<model>_<slot>.png   heatmap overlays (RGBA) for the static cards only

Data is loaded with ``<script src>`` files that assign globals, so the pages work from disk.
"""

from __future__ import annotations

import html
import json
import logging
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from PIL import Image

from usae.data.images import ImageReadError, load_rgb

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"
# Viridis, 9 stops (matplotlib); the same table is in static/explorer.js.
VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


@dataclass(frozen=True)
class ExplorerIndex:
    """What :func:`write_explorer` wrote.

    Attributes:
        out_dir: The explorer folder.
        eval_dir: The evaluation folder it was built from (heatmaps for the overlays).
        manifest_path: The manifest (image paths, for thumbnails made on demand).
        models: Model names, in column order.
        grid: Heatmap grid ``(h, w)``.
        thumb_size: Thumbnail side in pixels.
        n_concepts: Concepts in ``data/concepts.js``.
        concept_ids: Concepts with a page (``data/c<id>.js``), ascending.
        thumbnails: Manifest rows with a thumbnail, ascending.
        unreadable: ``(row, reason)`` of the top images that could not be read.
    """

    out_dir: Path
    eval_dir: Path
    manifest_path: Path
    models: tuple[str, ...]
    grid: tuple[int, int]
    thumb_size: int
    n_concepts: int
    concept_ids: tuple[int, ...]
    thumbnails: tuple[int, ...]
    unreadable: tuple[tuple[int, str], ...] = field(default=())

    @property
    def n_pages(self) -> int:
        """Concepts with a page."""
        return len(self.concept_ids)

    @property
    def n_thumbnails(self) -> int:
        """Thumbnails written."""
        return len(self.thumbnails)


_LAST: dict[str, ExplorerIndex] = {}  # the latest write_explorer result, for card_html without an index


class Heatmaps:
    """Read access to ``eval/heatmaps.zarr``, one chunk of concepts at a time per model."""

    def __init__(self, eval_dir: Path, models: Iterable[str]) -> None:
        group = zarr.open_group(Path(eval_dir) / "heatmaps.zarr", mode="r")
        tokens = int(group.attrs["tokens_per_image"])
        grid = group.attrs.get("grid")
        side = int(round(math.sqrt(tokens)))
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1])) if grid else (side, tokens // max(side, 1))
        if self.grid[0] * self.grid[1] != tokens:
            raise ValueError(f"heatmap grid {self.grid} does not match {tokens} tokens per image")
        present = set(group.group_keys())
        self._rows = {m: np.asarray(group[m]["rows"][:]) for m in models if m in present}
        self._maps = {m: group[m]["maps"] for m in models if m in present}
        for m in models:
            if m not in present:
                logger.warning("heatmaps.zarr has no group for model %s; its pages show images only", m)
        self._block: dict[str, tuple[int, int, np.ndarray]] = {}

    def get(self, model: str, concept: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows ``(top_n,)`` and maps ``(top_n, h, w)`` float64 of one concept, or None."""
        if model not in self._maps:
            return None
        maps = self._maps[model]
        start, stop, block = self._block.get(model, (0, 0, np.empty(0)))
        if not start <= concept < stop:
            size = int(maps.chunks[0])
            start = concept // size * size
            stop = min(start + size, maps.shape[0])
            block = np.asarray(maps[start:stop], dtype=np.float64)
            self._block[model] = (start, stop, block)
        return self._rows[model][concept], block[concept - start].reshape(-1, *self.grid)


def write_explorer(eval_dir: Path, manifest_path: Path, out_dir: Path, models: list[str], *,
                   thumb_size: int = 128, page_concepts: Iterable[int] | None = None) -> ExplorerIndex:
    """Write the concept explorer of an evaluated run into ``out_dir``.

    Args:
        eval_dir: ``results/runs/<run>/eval`` with ``concepts.parquet`` and ``heatmaps.zarr``.
        manifest_path: The manifest Parquet (``index`` -> ``path``).
        out_dir: Explorer folder (created; existing files are overwritten).
        models: Model names (columns ``fires_<m>`` etc. must exist).
        thumb_size: Thumbnail side in pixels.
        page_concepts: Concepts that get a page; default every concept that fires.

    Returns:
        What was written.

    Raises:
        ValueError: A model has no columns in ``concepts.parquet``.
    """
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    table = pd.read_parquet(eval_dir / "concepts.parquet").sort_values("concept").reset_index(drop=True)
    missing = [m for m in models if f"fires_{m}" not in table.columns]
    if missing:
        raise ValueError(f"concepts.parquet has no columns for models {missing}")
    heatmaps = Heatmaps(eval_dir, models)
    pages = _page_ids(table, models, page_concepts)
    for sub in ("data", "thumbs", "static"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    by_id = table.set_index("concept", drop=False)
    needed = sorted({int(r) for cid in pages for m in models for r in by_id.loc[cid, f"top_rows_{m}"] if r >= 0})
    thumbs, unreadable = write_thumbnails(manifest_path, needed, out_dir / "thumbs", thumb_size)
    summaries = [_summary(row, models) for row in table.to_dict("records")]
    _write_js(out_dir / "data" / "concepts.js", "USAE_CONCEPTS", summaries)
    meta = {"models": list(models), "grid": list(heatmaps.grid), "thumb_size": thumb_size, "pages": pages,
            "n_concepts": len(table)}
    _write_js(out_dir / "data" / "meta.js", "USAE_META", meta)
    have = set(thumbs)
    summary_of = {s["id"]: s for s in summaries}
    for i, cid in enumerate(pages):
        page = {"id": cid, "summary": summary_of[cid], "grid": list(heatmaps.grid), "models": {},
                "prev": pages[i - 1] if i > 0 else None, "next": pages[i + 1] if i + 1 < len(pages) else None}
        for m in models:
            page["models"][m] = _model_tops(by_id.loc[cid], m, heatmaps.get(m, cid), have)
        _write_js(out_dir / "data" / f"c{cid}.js", "USAE_CONCEPT", page)
    for name in ("concepts.html", "concept.html"):
        shutil.copyfile(TEMPLATES / name, out_dir / name)
    for name in ("explorer.js", "style.css"):
        shutil.copyfile(STATIC / name, out_dir / "static" / name)
    index = ExplorerIndex(out_dir=out_dir, eval_dir=eval_dir, manifest_path=Path(manifest_path),
                          models=tuple(models), grid=heatmaps.grid, thumb_size=thumb_size, n_concepts=len(table),
                          concept_ids=tuple(pages), thumbnails=tuple(thumbs), unreadable=tuple(unreadable))
    _LAST["index"] = index
    logger.info("explorer: %d concepts, %d pages, %d thumbnails (%d unreadable) in %s", len(table), len(pages),
                len(thumbs), len(unreadable), out_dir)
    return index


def _page_ids(table: pd.DataFrame, models: list[str], page_concepts: Iterable[int] | None) -> list[int]:
    ids = set(table["concept"].astype(int))
    if page_concepts is None:
        fires = sum(table[f"fires_{m}"].to_numpy() for m in models)
        return sorted(int(c) for c in table["concept"][np.asarray(fires) > 0])
    wanted = {int(c) for c in page_concepts}
    if wanted - ids:
        logger.warning("explorer: %d requested concepts are not in the table, e.g. %s", len(wanted - ids),
                       sorted(wanted - ids)[:5])
    return sorted(wanted & ids)


def write_thumbnails(manifest_path: Path, rows: Iterable[int], thumbs_dir: Path,
                     thumb_size: int = 128) -> tuple[list[int], list[tuple[int, str]]]:
    """Write ``thumbs_dir/<row>.jpg`` (square resize) for each manifest row.

    Returns:
        Rows written, and ``(row, reason)`` for rows that are not in the manifest or unreadable.
    """
    manifest = pd.read_parquet(manifest_path, columns=["index", "path"]).set_index("index")["path"]
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    written, unreadable = [], []
    for row in sorted(set(int(r) for r in rows)):
        if row not in manifest.index:
            unreadable.append((row, "not in the manifest"))
            continue
        path = Path(manifest.loc[row])
        if not path.is_absolute() and not path.exists():
            path = Path(manifest_path).parent / path
        try:
            img = load_rgb(path).resize((thumb_size, thumb_size), Image.Resampling.BICUBIC)
        except ImageReadError as err:
            unreadable.append((row, str(err)))
            continue
        img.save(thumbs_dir / f"{row}.jpg", quality=85)
        written.append(row)
    for row, reason in unreadable:
        logger.warning("explorer: image row %d skipped: %s", row, reason)
    return written, unreadable


def _clean(value: Any) -> Any:
    """JSON-safe scalar: numpy -> Python, NaN/inf -> None."""
    if value is None:
        return None
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    return None if pd.isna(value) else value


def _summary(row: dict[str, Any], models: Iterable[str]) -> dict[str, Any]:
    out = {"id": int(row["concept"]), "fe": _clean(row.get("firing_entropy")), "cofires": _clean(row.get("cofires")),
           "energy_total": _clean(row.get("energy_total")), "factor": _clean(row.get("factor")),
           "factor_auroc": _clean(row.get("factor_auroc"))}
    for m in models:
        for key in ("fires", "energy", "cfp", "factor", "factor_auroc"):
            out[f"{key}_{m}"] = _clean(row.get(f"{key}_{m}"))
    return out


def _model_tops(row: pd.Series, model: str, heat: tuple[np.ndarray, np.ndarray] | None,
                have: set[int]) -> dict[str, Any]:
    tops, top_max = [], 0.0
    values = list(row[f"top_values_{model}"])
    for slot, r in enumerate(int(x) for x in row[f"top_rows_{model}"]):
        if r < 0:
            continue
        grid = None
        if heat is not None and slot < len(heat[0]) and int(heat[0][slot]) == r:
            grid = np.round(heat[1][slot], 3)
            top_max = max(top_max, float(grid.max()))
            grid = [[_num(v) for v in line] for line in grid.tolist()]
        tops.append({"slot": slot, "row": r, "value": _clean(round(float(values[slot]), 4)),
                     "thumb": f"thumbs/{r}.jpg" if r in have else None, "heatmap": grid})
    return {"top": tops, "max": top_max}


def _num(v: float) -> float | int:
    return int(v) if v == int(v) else v


def _write_js(path: Path, name: str, value: Any) -> None:
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    path.write_text(f"window.{name} = {text};\n", encoding="utf-8")


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


def _fmt(value: Any, digits: int = 3) -> str:
    value = _clean(value)
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"


def card_html(concept_row: dict[str, Any], models: Iterable[str], out_dir_relative_prefix: str = "", *,
              index: ExplorerIndex | None = None) -> str:
    """A static HTML card: the concept's numbers and, per model, its top images with overlays.

    Overlays (and any missing thumbnails) are rendered on demand into the explorer folder of
    ``index`` (default: the latest :func:`write_explorer` call in this process); images that
    cannot be read are left out. Without any explorer, the card references the files by name.

    Args:
        concept_row: A ``concepts.parquet`` row as a dict (``concept``, ``top_rows_<m>``, ...).
        models: Models to show, one column each.
        out_dir_relative_prefix: Prefix from the page holding the card to the explorer folder.
        index: The explorer the card's files live in.
    """
    index = index or _LAST.get("index")
    cid = int(concept_row["concept"] if "concept" in concept_row else concept_row["id"])
    models = list(models)
    pre = html.escape(out_dir_relative_prefix)
    overlays: dict[tuple[str, int], str] | None = None
    thumbs: set[int] | None = None
    if index is not None:
        needed = {int(r) for m in models for r in concept_row[f"top_rows_{m}"] if r >= 0}
        thumbs = {r for r in needed if (index.out_dir / "thumbs" / f"{r}.jpg").exists()}
        if needed - thumbs - {r for r, _ in index.unreadable}:
            made, _ = write_thumbnails(index.manifest_path, needed - thumbs, index.out_dir / "thumbs", index.thumb_size)
            thumbs |= set(made)
        overlays = render_overlays(cid, index)
    factor = concept_row.get("factor")
    title = f"Concept {cid}" + (f" <span class=\"factor\">{html.escape(str(factor))}</span>" if _clean(factor) else "")
    linked = index is None or cid in index.concept_ids
    head = f"<a href=\"{pre}concept.html?id={cid}\">{title}</a>" if linked else title
    stats = (f"<dl class=\"stats\"><dt>firing entropy</dt><dd>{_fmt(concept_row.get('firing_entropy'))}</dd>"
             f"<dt>co-fires</dt><dd>{_fmt(concept_row.get('cofires'))}</dd>"
             f"<dt>energy</dt><dd>{_fmt(concept_row.get('energy_total'))}</dd>"
             f"<dt>factor AUROC</dt><dd>{_fmt(concept_row.get('factor_auroc'))}</dd></dl>")
    cols = []
    for m in models:
        tiles = []
        values = list(concept_row.get(f"top_values_{m}", []))
        for slot, r in enumerate(int(x) for x in concept_row[f"top_rows_{m}"]):
            if r < 0 or (thumbs is not None and r not in thumbs):
                continue
            over = f"overlays/c{cid}_{m}_{slot}.png"
            layer = (f"<img class=\"overlay\" src=\"{pre}{over}\" alt=\"\">"
                     if overlays is None or (m, slot) in overlays else "")
            value = _fmt(values[slot]) if slot < len(values) else "-"
            tiles.append(f"<figure class=\"tile\"><span class=\"stack\"><img class=\"thumb\" "
                         f"src=\"{pre}thumbs/{r}.jpg\" alt=\"image {r}\">{layer}</span>"
                         f"<figcaption>{value}</figcaption></figure>")
        body = "".join(tiles) or "<p class=\"empty\">no images</p>"
        cols.append(f"<div class=\"model-col\"><h4>{html.escape(m)} <small>fires "
                    f"{_fmt(concept_row.get(f'fires_{m}'))}</small></h4><div class=\"tiles\">{body}</div></div>")
    return (f"<article class=\"usae-card\" id=\"card-{cid}\"><h3>{head}</h3>{stats}"
            f"<div class=\"models\">{''.join(cols)}</div></article>")
