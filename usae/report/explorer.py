"""A static concept explorer that opens from disk (``file://``, no network, no ``fetch``).

Output layout under ``out_dir``::

    concepts.html          every concept: searchable, sortable table (data/concepts.js)
    concept.html           one template page; ``concept.html?id=K`` loads data/cK.js
    static/explorer.js     the page logic (both pages), static/style.css
    data/meta.js           window.USAE_META = {models, grid, thumb_size, pages: [ids with a page], no_images,
                                                   formats: {column: number format of concepts.html's table}}
    data/concepts.js       window.USAE_CONCEPTS = [summary row per concept]  (NaN -> null)
    data/c<id>.js          window.USAE_CONCEPT = {summary, per model top images + heatmaps and where on the image
                                                  grid it fires (``where``), maco if optimised}
    thumbs/<row>.jpg       square thumbnail of each manifest row in a top list
    overlays/c<id>_<model>_<slot>.png   heatmap overlays (RGBA) for the static cards only
    maco/images/c<id>_<model>.png       MACO images, copied in by :func:`usae.report.maco.load_maco`

Data is loaded with ``<script src>`` files that assign globals, so the pages work from disk.
This module writes the data and copies the pages; thumbnails and heatmap overlays are drawn
by :mod:`usae.report.thumbnails` and :mod:`usae.report.heatmaps`, the static cards of the
report's index page by :mod:`usae.report.cards`.
"""

from __future__ import annotations

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

from usae.report.heatmaps import Heatmaps
from usae.report.maco import Maco, concept_maco
from usae.report.numbers import NumberFormat, column_format
from usae.report.sharing import energy_shares
from usae.report.templating import environment
from usae.report.thumbnails import write_thumbnails

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
NO_IMAGES = ("This run was trained on activation arrays (usae train --acts), without images: top images, their "
             "heatmaps and the excluded-images list are left out. A concept's top rows are listed by their row "
             "index in the arrays, with the concept's largest activation over the row's tokens.")
"""Why a report without a manifest shows no images (on index.html and every concept page)."""
PAGES = ("concepts.html", "concept.html")
"""Pages rendered without variables from ``templates/``: they fill themselves in from ``data/*.js``."""


@dataclass(frozen=True)
class ExplorerIndex:
    """What :func:`write_explorer` wrote.

    Attributes:
        out_dir: The explorer folder.
        eval_dir: The evaluation folder it was built from (heatmaps for the overlays).
        manifest_path: The manifest (image paths, for thumbnails made on demand); None without images.
        models: Model names, in column order.
        grid: Heatmap grid ``(h, w)``; None without images.
        thumb_size: Thumbnail side in pixels.
        n_concepts: Concepts in ``data/concepts.js``.
        concept_ids: Concepts with a page (``data/c<id>.js``), ascending.
        thumbnails: Manifest rows with a thumbnail, ascending.
        unreadable: ``(row, reason)`` of the top images that could not be read.
    """

    out_dir: Path
    eval_dir: Path
    manifest_path: Path | None
    models: tuple[str, ...]
    grid: tuple[int, int] | None
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


def write_explorer(eval_dir: Path, manifest_path: Path | None, out_dir: Path, models: list[str], *,
                   thumb_size: int = 128, page_concepts: Iterable[int] | None = None,
                   maco: Maco | None = None) -> ExplorerIndex:
    """Write the concept explorer of an evaluated run into ``out_dir``.

    Args:
        eval_dir: ``results/runs/<run>/eval`` with ``concepts.parquet`` and ``heatmaps.zarr``.
        manifest_path: The manifest Parquet (``index`` -> ``path``); None for a run without
            images (activation arrays): no thumbnails and no heatmaps, and the concept pages
            say so (``no_images`` in ``data/meta.js``).
        out_dir: Explorer folder (created; existing files are overwritten).
        models: Model names (columns ``fires_<m>`` etc. must exist).
        thumb_size: Thumbnail side in pixels.
        page_concepts: Concepts that get a page; default every concept that fires.
        maco: MACO results whose images are already in ``out_dir/maco``: a page of an optimised
            concept shows them.

    Returns:
        What was written.

    Raises:
        ValueError: A model has no columns in ``concepts.parquet``.
    """
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    table = _read_concepts(eval_dir, models)
    table = pd.concat([table, energy_shares(table, models)], axis=1)
    heatmaps = Heatmaps(eval_dir, models) if manifest_path is not None else None
    grid = list(heatmaps.grid) if heatmaps is not None else None
    pages = _page_ids(table, models, page_concepts)
    for sub in ("data", "thumbs", "static"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    by_id = table.set_index("concept", drop=False)
    needed = sorted({int(r) for cid in pages for m in models for r in by_id.loc[cid, f"top_rows_{m}"] if r >= 0})
    thumbs, unreadable = (write_thumbnails(manifest_path, needed, out_dir / "thumbs", thumb_size)
                          if manifest_path is not None else ([], []))
    summaries = [_summary(row, models) for row in table.to_dict("records")]
    _write_js(out_dir / "data" / "concepts.js", "USAE_CONCEPTS", summaries)
    meta = {"models": list(models), "grid": grid, "thumb_size": thumb_size, "pages": pages,
            "n_concepts": len(table), "no_images": NO_IMAGES if manifest_path is None else None,
            "formats": column_formats(summaries, {f"share_{m}": NumberFormat("percent", 1) for m in models})}
    _write_js(out_dir / "data" / "meta.js", "USAE_META", meta)
    _write_concept_pages(out_dir / "data", by_id, summaries, pages, models, heatmaps, set(thumbs), maco)
    _copy_pages(out_dir)
    index = ExplorerIndex(out_dir=out_dir, eval_dir=eval_dir,
                          manifest_path=Path(manifest_path) if manifest_path is not None else None,
                          models=tuple(models), grid=heatmaps.grid if heatmaps is not None else None,
                          thumb_size=thumb_size, n_concepts=len(table),
                          concept_ids=tuple(pages), thumbnails=tuple(thumbs), unreadable=tuple(unreadable))
    logger.info("explorer: %d concepts, %d pages, %d thumbnails (%d unreadable) in %s", len(table), len(pages),
                len(thumbs), len(unreadable), out_dir)
    return index


def _read_concepts(eval_dir: Path, models: list[str]) -> pd.DataFrame:
    """``concepts.parquet`` sorted by concept; raises ValueError when a model has no columns."""
    table = pd.read_parquet(eval_dir / "concepts.parquet").sort_values("concept").reset_index(drop=True)
    missing = [m for m in models if f"fires_{m}" not in table.columns]
    if missing:
        raise ValueError(f"concepts.parquet has no columns for models {missing}")
    return table


def _write_concept_pages(data_dir: Path, by_id: pd.DataFrame, summaries: list[dict[str, Any]], pages: list[int],
                         models: list[str], heatmaps: Heatmaps | None, have: set[int], maco: Maco | None) -> None:
    """``data/c<id>.js`` for every concept with a page: its summary, neighbours, top images per model, and
    its MACO images when it was optimised (the key is left out otherwise)."""
    summary_of = {s["id"]: s for s in summaries}
    for i, cid in enumerate(pages):
        page = {"id": cid, "summary": summary_of[cid], "grid": list(heatmaps.grid) if heatmaps else None, "models": {},
                "prev": pages[i - 1] if i > 0 else None, "next": pages[i + 1] if i + 1 < len(pages) else None}
        for m in models:
            page["models"][m] = _model_tops(by_id.loc[cid], m, heatmaps.get(m, cid) if heatmaps else None, have)
            where = heatmaps.firing(m, cid) if heatmaps else None
            if where is not None:
                page["models"][m]["where"] = _firing_map(where, heatmaps.n_images)
        optimised = concept_maco(maco, cid, models)
        if optimised is not None:
            page["maco"] = optimised
        _write_js(data_dir / f"c{cid}.js", "USAE_CONCEPT", page)


def _copy_pages(out_dir: Path) -> None:
    env = environment()
    for name in PAGES:
        (out_dir / name).write_text(env.get_template(name).render(), encoding="utf-8")
    for name in ("explorer.js", "style.css"):
        shutil.copyfile(STATIC / name, out_dir / "static" / name)


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


def json_value(value: Any) -> Any:
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
    out = {"id": int(row["concept"]), "fe": json_value(row.get("firing_entropy")),
           "cofires": json_value(row.get("cofires")), "cofires_chance": json_value(row.get("cofires_chance")),
           "spread": json_value(row.get("position_spread")),
           "energy_total": json_value(row.get("energy_total")),
           "factor": json_value(row.get("factor")), "factor_auroc": json_value(row.get("factor_auroc"))}
    for m in models:
        for key in ("fires", "energy", "share", "cfp", "factor", "factor_auroc"):
            out[f"{key}_{m}"] = json_value(row.get(f"{key}_{m}"))
    return out


def column_formats(rows: list[dict[str, Any]],
                   given: dict[str, NumberFormat] | None = None) -> dict[str, dict[str, Any]]:
    """Key -> the one number format of that column of ``rows``: ``given[key]``, else
    :func:`usae.report.numbers.column_format` of its values; for every key holding a number in
    some row (text columns and ``id`` are left out)."""
    given = given or {}
    keys = [k for k in (rows[0] if rows else {}) if k != "id"]
    numeric = [k for k in keys if any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                      for r in rows)]
    return {k: (given.get(k) or column_format(r.get(k) for r in rows)).to_json() for k in numeric}


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
            grid = _grid(grid)
        tops.append({"slot": slot, "row": r, "value": json_value(round(float(values[slot]), 4)),
                     "thumb": f"thumbs/{r}.jpg" if r in have else None, "heatmap": grid})
    return {"top": tops, "max": top_max}


def _firing_map(share: np.ndarray, n_images: int) -> dict[str, Any]:
    """A concept page's "where it fires" map of one model: per token position the share of the ``n_images``
    validation images in which the model fires the concept (3 decimals), and the largest share."""
    return {"share": _grid(np.round(share, 3)), "max": float(share.max()), "n_images": int(n_images)}


def _grid(values: np.ndarray) -> list[list[float | int]]:
    """A 2-D array as nested lists for JSON, whole numbers written without a decimal point."""
    return [[int(v) if v == int(v) else v for v in line] for line in values.tolist()]


def _write_js(path: Path, name: str, value: Any) -> None:
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    path.write_text(f"window.{name} = {text};\n", encoding="utf-8")
