"""The MACO stage of one run: choose concepts, optimise one image per model, compare, write.

Outputs in ``out_dir`` (written atomically): ``images/c<concept>_<model>.png`` and
``maco.json`` with the objective, the settings, the evaluation's ``min_cofires``, ``n_tokens`` and
``chance_alpha`` the universal concepts were chosen with, and per concept and model the achieved
code, the best dataset image's and the random-phase baseline's (all through the same objective), their ratios,
and the cross-model table (the image optimised for model i, read through model j).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from usae import paths
from usae.activations.extract import ImageDataset
from usae.atomic import atomic_path
from usae.config import BackboneSpec, to_dict
from usae.config.maco import MacoConfig
from usae.data.images import load_rgb
from usae.data.manifest import read_manifest, usable
from usae.device import resolve_device
from usae.evaluation.universal import CHANCE_ALPHA, cofire_test, shared_concepts
from usae.maco.objective import ConceptReader
from usae.maco.optimize import maximise, random_phase_images, score_images
from usae.maco.spectrum import ImageSpectrum, measure_spectrum
from usae.registry import MACO_OBJECTIVES
from usae.sae.model import USAE

logger = logging.getLogger(__name__)

RATIO_FLOOR = 0.01
"""Denominators of the ratios are at least this: a random-phase image often does not fire a concept at all."""


def choose_concepts(table: pd.DataFrame, models: list[str], cfg: MacoConfig, min_cofires: int | None = None,
                    n_tokens: int | None = None, alpha: float = CHANCE_ALPHA) -> list[tuple[int, str]]:
    """``(concept, kind)`` pairs: ``cfg.concepts`` if given (kind ``chosen``), else the most universal
    (firing entropy >= ``min_entropy`` and, given ``min_cofires`` (the evaluation's), fired together
    by the models: at least that often and, given ``n_tokens``, more often than chance at family-wise
    error ``alpha`` (:func:`~usae.evaluation.universal.shared_concepts`); most co-fires first; on
    generated images those that detect a planted factor first and ``background`` last) and model-specific ones
    (firing entropy < 0.5, most fires in one model; one model after another)."""
    if cfg.concepts is not None:
        unknown = sorted(set(cfg.concepts) - set(table["concept"]))
        if unknown:
            raise ValueError(f"maco.concepts: {unknown} are not concepts of this run (ids 0..{len(table) - 1})")
        return [(int(c), "chosen") for c in cfg.concepts]
    keep = (table["firing_entropy"] >= cfg.min_entropy).to_numpy()
    if min_cofires is not None:
        # An even firing entropy does not mean the models fire a concept on the same tokens; one they
        # never fire together has no shared meaning to show, however well it detects a factor. Tested on
        # the whole table: the chance test counts every concept of the dictionary.
        keep = keep & shared_concepts(table, min_cofires, n_tokens, alpha)
    universal = table[keep]
    # On generated images a concept that detects a planted factor shows something a reader can
    # check, so those come first; one labelled `background` fires off every object and comes last.
    factor = universal["factor"] if "factor" in universal else pd.Series(None, index=universal.index, dtype=object)
    rank = np.where(factor.eq("background"), 2, np.where(factor.notna(), 0, 1))
    universal = universal.assign(_rank=rank).sort_values(["_rank", "cofires", "concept"], ascending=[True, False, True])
    chosen = [(int(c), "universal") for c in universal["concept"].head(cfg.n_universal)]
    narrow = table[table["firing_entropy"] < 0.5]
    for i in range(cfg.n_specific):
        model = models[i % len(models)]
        mostly = narrow[narrow[f"fires_{model}"] > 0].sort_values([f"fires_{model}", "concept"],
                                                                 ascending=[False, True])
        pick = next((int(c) for c in mostly["concept"] if int(c) not in {c for c, _ in chosen}), None)
        if pick is not None:
            chosen.append((pick, f"specific to {model}"))
    return chosen


def dataset_spectrum(manifest_path: str | Path, out_path: str | Path, *, size: int, n_images: int,
                     seed: int) -> ImageSpectrum:
    """The amplitude spectrum and colour correlation of ``n_images`` training images (a seeded sample), saved."""
    table = usable(read_manifest(manifest_path))
    train = table[table["split"] == "train"]
    if len(train) < 2:
        raise ValueError(f"{manifest_path}: the MACO spectrum needs at least 2 training images, found {len(train)}")
    sample = train.sample(n=min(n_images, len(train)), random_state=seed).sort_values("index")
    spectrum = measure_spectrum((load_rgb(p) for p in sample["path"]), size)
    spectrum.save(out_path)
    logger.info("MACO spectrum of %d training images at %d px written to %s", spectrum.n_images, size, out_path)
    return spectrum


def run_maco(model_dir: str | Path, eval_dir: str | Path, manifest_path: str | Path, spectrum_path: str | Path,
             specs: dict[str, BackboneSpec], cfg: MacoConfig, out_dir: str | Path) -> dict[str, Any]:
    """Optimise, score and write the run's coordinated images (see the module docstring); returns ``maco.json``."""
    from usae.backbones.registry import create_backbone

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device, "maco.device")
    usae = USAE.load(model_dir, device=device)
    table = pd.read_parquet(Path(eval_dir) / "concepts.parquet")
    metrics = json.loads((Path(eval_dir) / paths.EVAL_METRICS).read_text())
    test = cofire_test(metrics)
    chosen = choose_concepts(table, usae.names, cfg, **test)
    ids = [c for c, _ in chosen]
    spectrum = ImageSpectrum.load(spectrum_path)
    objective = MACO_OBJECTIVES.get(cfg.objective, setting="maco.objective")
    readers = {m: ConceptReader(m, create_backbone(specs[m]), usae).to(device) for m in usae.names}
    images = {m: maximise(r, ids, spectrum, objective, cfg=cfg, device=device) for m, r in readers.items()}
    baseline = random_phase_images(cfg.baseline_samples, len(ids), spectrum, cfg.seed)
    report = {"objective": cfg.objective, "objective_text": OBJECTIVE_TEXT[cfg.objective],
              "settings": to_dict(cfg), "models": usae.names, "spectrum_images": spectrum.n_images,
              "ratio_floor": RATIO_FLOOR, "min_cofires": test["min_cofires"], "n_tokens": test["n_tokens"],
              "chance_alpha": test["alpha"], "concepts": [],
              "seconds": None}
    cross = _cross_scores(readers, images, ids, objective, device)  # (concepts, from i, through j)
    base = {m: score_images(r, baseline.flatten(0, 1), np.repeat(ids, cfg.baseline_samples), objective,
                            device=device).view(len(ids), -1).mean(1) for m, r in readers.items()}
    manifest = read_manifest(manifest_path).set_index("index")
    by_concept = table.set_index("concept")
    for slot, (cid, kind) in enumerate(chosen):
        row = by_concept.loc[cid]
        per_model = {}
        for j, m in enumerate(usae.names):
            best = _best_dataset_score(readers[m], row[f"top_rows_{m}"], cid, manifest, objective, device)
            achieved = float(cross[slot, j, j])
            per_model[m] = {"achieved": achieved, "best_dataset": best, "random_phase": float(base[m][slot]),
                            "ratio_vs_dataset": _ratio(achieved, best), "ratio_vs_random": _ratio(achieved,
                                                                                                 base[m][slot]),
                            "image": f"images/c{cid}_{m}.png"}
        report["concepts"].append({"id": cid, "kind": kind, "factor": _text(row.get("factor")),
                                   "firing_entropy": _number(row["firing_entropy"]), "models": per_model,
                                   "cross": cross[slot].tolist()})
    report["cross_mean"] = cross.mean(0).tolist()
    report["random_phase_mean"] = [float(base[m].mean()) for m in usae.names]
    report["seconds"] = round(time.perf_counter() - start, 1)
    _write(out_dir, images, ids, report)
    return report


OBJECTIVE_TEXT = {
    "mean": "the concept's code Z_k averaged over the model's patch tokens",
    "max": "the concept's largest code Z_k over the model's patch tokens",
    "centre": "the concept's code Z_k averaged over the central half of the model's token grid",
}


def _cross_scores(readers: dict[str, ConceptReader], images: dict[str, torch.Tensor], ids: list[int], objective,
                  device: torch.device) -> np.ndarray:
    """``[c, i, j]``: concept ``ids[c]``'s objective through model j of the image optimised for model i."""
    names = list(readers)
    out = np.zeros((len(ids), len(names), len(names)))
    for i, source in enumerate(names):
        for j, target in enumerate(names):
            out[:, i, j] = score_images(readers[target], images[source], ids, objective, device=device).numpy()
    return out


def _best_dataset_score(reader: ConceptReader, rows: Any, cid: int, manifest: pd.DataFrame, objective,
                        device: torch.device) -> float | None:
    """The largest objective over the concept's top validation images for this model, each image
    decoded and resized exactly as extraction does (None without any)."""
    images = [manifest.loc[int(r), "path"] for r in rows if int(r) >= 0]
    decoded = ImageDataset(images, reader.backbone.preprocessing)
    pictures = [pixels.float() / 255.0 for pixels, ok, _ in (decoded[i] for i in range(len(images))) if ok]
    if not pictures:
        return None
    return float(score_images(reader, torch.stack(pictures), [cid] * len(pictures), objective, device=device).max())


def _ratio(value: float, reference: float | torch.Tensor | None) -> float | None:
    return None if reference is None else float(value) / max(float(reference), RATIO_FLOOR)


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _number(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _write(out_dir: str | Path, images: dict[str, torch.Tensor], ids: list[int], report: dict[str, Any]) -> None:
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        for model, batch in images.items():
            for cid, image in zip(ids, batch):
                pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
                Image.fromarray(pixels).save(tmp / "images" / f"c{cid}_{model}.png")
        (tmp / paths.MACO_REPORT).write_text(json.dumps(report, indent=2))
