"""Static concept cards for the report's index page: a concept's numbers and its top images per model.

:func:`card` gathers what a card shows (drawing missing thumbnails and the heatmap overlays
into the explorer folder, and the concept's MACO images when it has some); ``templates/card.html``
renders it; :func:`card_html` does both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from usae.report.explorer import ExplorerIndex, json_value
from usae.report.heatmaps import render_overlays
from usae.report.maco import Maco, concept_maco
from usae.report.sharing import energy_shares
from usae.report.templating import environment
from usae.report.thumbnails import write_thumbnails


def card(concept_row: dict[str, Any], models: Iterable[str], *, index: ExplorerIndex | None = None,
         maco: Maco | None = None) -> dict[str, Any]:
    """What the card of one concept shows, for ``templates/card.html``.

    With ``index``, overlays (and any missing thumbnails) are rendered on demand into its
    explorer folder, images that cannot be read are left out, and the title links to the
    concept's page only when it has one. Without it, the card references the files by name.

    Args:
        concept_row: A ``concepts.parquet`` row as a dict (``concept``, ``top_rows_<m>``, ...).
        models: Models to show, one column each.
        index: The explorer the card's files live in.
        maco: The run's MACO results (copied into the explorer folder), if any.

    Returns:
        ``id``, ``factor`` (or None), ``linked``, the numbers ``firing_entropy``, ``cofires``,
        ``cofires_chance`` (None for one model, or a table evaluated before it existed),
        ``position_spread`` (None for a table evaluated before it existed),
        ``energy_total``, ``factor_auroc``, ``objective_text`` (the MACO objective; None when
        the concept was not optimised), and ``models``: per model ``name``, ``fires``, ``share``
        (the concept's energy share in that model, :func:`usae.report.sharing.energy_shares`; None
        without energy), ``scale_max`` (the top of its heatmaps' colour scale: the largest
        activation over that model's top images, as :func:`usae.report.heatmaps.render_overlays`
        normalises them), ``maco`` (see :func:`usae.report.maco.concept_maco`; or None) and
        ``tiles`` (``row``, ``value``, ``overlay`` path or None).
    """
    cid = int(concept_row["concept"] if "concept" in concept_row else concept_row["id"])
    models = list(models)
    thumbs, overlays = _files(concept_row, cid, models, index) if index is not None else (None, None)
    factor = concept_row.get("factor")
    optimised = concept_maco(maco, cid, models) or {"objective_text": None, "models": {}}
    shares = _energy_shares(concept_row, models)
    return {
        "id": cid, "factor": str(factor) if json_value(factor) else None,
        "linked": index is None or cid in index.concept_ids,
        **{key: concept_row.get(key) for key in ("firing_entropy", "cofires", "cofires_chance", "position_spread",
                                                 "energy_total", "factor_auroc")},
        "objective_text": optimised["objective_text"],
        "models": [{"name": m, "fires": concept_row.get(f"fires_{m}"), "share": shares.get(m),
                    "scale_max": _scale_max(concept_row, m), "maco": optimised["models"].get(m),
                    "tiles": _tiles(concept_row, cid, m, thumbs, overlays)} for m in models],
    }


def card_html(concept_row: dict[str, Any], models: Iterable[str], out_dir_relative_prefix: str = "", *,
              index: ExplorerIndex | None = None, maco: Maco | None = None) -> str:
    """The card of :func:`card` as HTML; ``out_dir_relative_prefix`` leads from the page to the explorer folder."""
    macro = environment().get_template("card.html").module.card
    return str(macro(card(concept_row, models, index=index, maco=maco), out_dir_relative_prefix))


def _files(concept_row: dict[str, Any], cid: int, models: list[str],
           index: ExplorerIndex) -> tuple[set[int], dict[tuple[str, int], str]]:
    """Thumbnails present (made now where missing and readable) and the overlays drawn now; none without images."""
    if index.manifest_path is None:
        return set(), {}
    needed = {int(r) for m in models for r in concept_row[f"top_rows_{m}"] if r >= 0}
    thumbs = {r for r in needed if (index.out_dir / "thumbs" / f"{r}.jpg").exists()}
    if needed - thumbs - {r for r, _ in index.unreadable}:
        made, _ = write_thumbnails(index.manifest_path, needed - thumbs, index.out_dir / "thumbs", index.thumb_size)
        thumbs |= set(made)
    return thumbs, render_overlays(cid, index)


def _tiles(concept_row: dict[str, Any], cid: int, model: str, thumbs: set[int] | None,
           overlays: dict[tuple[str, int], str] | None) -> list[dict[str, Any]]:
    """One tile per top image of ``model`` that has a thumbnail (all of them when ``thumbs`` is None)."""
    values = list(concept_row.get(f"top_values_{model}", []))
    tiles = []
    for slot, r in enumerate(int(x) for x in concept_row[f"top_rows_{model}"]):
        if r < 0 or (thumbs is not None and r not in thumbs):
            continue
        overlay = f"overlays/c{cid}_{model}_{slot}.png"
        tiles.append({"row": r, "value": values[slot] if slot < len(values) else None,
                      "overlay": overlay if overlays is None or (model, slot) in overlays else None})
    return tiles


def _energy_shares(concept_row: dict[str, Any], models: list[str]) -> dict[str, float | None]:
    """Model -> the concept's energy share there; empty when the row has no ``energy_<model>``."""
    if any(f"energy_{m}" not in concept_row for m in models):
        return {}
    shares = energy_shares(pd.DataFrame({f"energy_{m}": [concept_row[f"energy_{m}"]] for m in models}), models)
    return {m: json_value(shares[f"share_{m}"].iloc[0]) for m in models}


def _scale_max(concept_row: dict[str, Any], model: str) -> float | None:
    """The largest top value of ``model`` over its filled slots (the overlays' 1.0), None when it never fires."""
    values = [float(v) for r, v in zip(concept_row.get(f"top_rows_{model}", []),
                                       concept_row.get(f"top_values_{model}", [])) if r >= 0]
    return max(values) if values else None
