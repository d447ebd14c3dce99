"""Coordinated activation maximisation (MACO) in the report: the stage's images copied in, and what
the concept cards, the concept pages and index.html show of them.

The MACO stage writes ``images/c<concept>_<model>.png`` and ``maco.json`` (see
:mod:`usae.maco.stage`); :func:`load_maco` copies both under the report's ``maco/`` folder, next to
the explorer's ``thumbs/`` and ``overlays/``, so every page refers to them by the same relative path.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger(__name__)

MACO_DIR = "maco"
"""The report's folder of MACO files."""

TILE_NUMBERS = ("achieved", "best_dataset", "ratio_vs_dataset", "random_phase", "ratio_vs_random")
"""Numbers of one concept and model that the report shows beside its optimised image."""


@dataclass(frozen=True)
class Maco:
    """A run's ``maco.json`` with its images copied into the report.

    Attributes:
        objective: The objective's name (``mean``, ``max``, ``centre``).
        objective_text: What the objective is, in words (the captions quote it).
        models: Model names, in the order of the cross-model table.
        concepts: Concept id -> its ``maco.json`` entry, in the stage's order; each model's
            ``image`` is a path relative to the report, None where the file is missing.
        cross_mean: ``[i][j]``: the objective through model j of the image optimised for
            model i, mean over the concepts.
        random_phase_mean: Per model j, the objective of random-phase images (same spectrum).
        ratio_floor: Floor of the ratios' denominators.
        seconds: Time the stage took.
        settings: The stage's settings.
        spectrum_images: Training images whose amplitude spectrum the images keep.
    """

    objective: str
    objective_text: str
    models: tuple[str, ...]
    concepts: dict[int, dict[str, Any]]
    cross_mean: list[list[float | None]]
    random_phase_mean: list[float | None]
    ratio_floor: float
    seconds: float | None
    settings: dict[str, Any]
    spectrum_images: int | None


def load_maco(maco_dir: str | Path, report_dir: str | Path) -> Maco:
    """Read ``maco_dir/maco.json`` and copy it and its images to ``report_dir/maco/``.

    A missing image only loses its picture (logged); its numbers are still shown.

    Raises:
        FileNotFoundError: ``maco.json`` is missing.
        ValueError: The cross-model table or the baseline does not have one entry per model.
    """
    maco_dir, target = Path(maco_dir), Path(report_dir) / MACO_DIR
    source = maco_dir / "maco.json"
    if not source.is_file():
        raise FileNotFoundError(f"report: the MACO folder {maco_dir} has no maco.json")
    raw = json.loads(source.read_text())
    models = tuple(raw["models"])
    cross, baseline = raw["cross_mean"], raw["random_phase_mean"]
    if len(baseline) != len(models) or len(cross) != len(models) or any(len(r) != len(models) for r in cross):
        raise ValueError(f"{source}: cross_mean must be {len(models)} x {len(models)} and random_phase_mean "
                         f"{len(models)} long (one per model of {list(models)})")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target / "maco.json")
    concepts = {int(c["id"]): {**c, "models": {m: _copied(entry, maco_dir, target)
                                                  for m, entry in c["models"].items()}} for c in raw["concepts"]}
    logger.info("report: MACO images of %d concepts from %s", len(concepts), maco_dir)
    return Maco(objective=raw["objective"], objective_text=raw["objective_text"], models=models, concepts=concepts,
                cross_mean=[[_finite(v) for v in row] for row in cross],
                random_phase_mean=[_finite(v) for v in baseline], ratio_floor=float(raw["ratio_floor"]),
                seconds=_finite(raw.get("seconds")), settings=raw.get("settings") or {},
                spectrum_images=raw.get("spectrum_images"))


def concept_maco(maco: Maco | None, concept: int, models: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """What a card and a concept page show of one concept: None when it was not optimised, else
    ``objective_text``, ``kind`` and ``models`` (model -> :data:`TILE_NUMBERS` and ``image``; only
    the models optimised)."""
    entry = maco.concepts.get(int(concept)) if maco is not None else None
    if entry is None:
        return None
    tiles = {m: entry["models"][m] for m in models if m in entry["models"]}
    return {"objective_text": maco.objective_text, "kind": entry.get("kind"), "models": tiles}


def maco_section(maco: Maco, page_ids: set[int] | tuple[int, ...]) -> dict[str, Any]:
    """The index page's MACO section: one row per concept, the cross-model table and its baseline.

    Args:
        maco: What :func:`load_maco` read.
        page_ids: Concepts with an explorer page (their ids link to it).

    Returns:
        ``objective``, ``objective_text``, ``seconds``, ``settings``, ``spectrum_images``,
        ``models``, ``ratio_floor``; ``rows`` (``id``, ``kind``, ``factor``, ``firing_entropy``,
        ``linked``, ``tiles``: one per model, None where not optimised); ``cross`` (per source
        model i: ``model`` and ``cells`` of ``value`` and ``ratio`` = value / max(baseline j,
        floor)); ``baseline`` (per model j).
    """
    rows = [{"id": cid, "kind": c.get("kind"), "factor": c.get("factor"),
             "firing_entropy": _finite(c.get("firing_entropy")), "linked": cid in page_ids,
             "tiles": [c["models"].get(m) for m in maco.models]} for cid, c in maco.concepts.items()]
    cross = [{"model": source, "cells": [{"value": value, "ratio": _ratio(value, base, maco.ratio_floor)}
                                         for value, base in zip(values, maco.random_phase_mean)]}
             for source, values in zip(maco.models, maco.cross_mean)]
    return {"objective": maco.objective, "objective_text": maco.objective_text, "seconds": maco.seconds,
            "settings": maco.settings, "spectrum_images": maco.spectrum_images, "models": list(maco.models),
            "ratio_floor": maco.ratio_floor, "rows": rows, "cross": cross, "baseline": maco.random_phase_mean}


def _copied(entry: dict[str, Any], maco_dir: Path, target: Path) -> dict[str, Any]:
    """One model's numbers, and its image copied into ``target`` (path relative to the report, or None)."""
    tile = {key: _finite(entry.get(key)) for key in TILE_NUMBERS}
    relative = PurePosixPath(str(entry.get("image") or ""))
    source = maco_dir / relative
    # Only files inside the MACO folder: the path comes from a file, and the copy must stay in the report.
    if not relative.parts or relative.is_absolute() or ".." in relative.parts or not source.is_file():
        logger.warning("report: MACO image %r is missing from %s; its numbers are shown without it",
                       entry.get("image"), maco_dir)
        return {**tile, "image": None}
    (target / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target / relative)
    return {**tile, "image": f"{MACO_DIR}/{relative}"}


def _ratio(value: float | None, base: float | None, floor: float) -> float | None:
    """``value / max(base, floor)``: random-phase images often do not fire a concept at all."""
    return None if value is None or base is None else value / max(base, floor)


def _finite(value: Any) -> float | None:
    """A JSON number as a float; None for null, NaN and infinity (the pages' data must be strict JSON)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
