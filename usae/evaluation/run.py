"""Evaluate a saved run on the validation split of its aligned stores (the ``evaluate`` stage)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from usae.activations.sources import open_aligned
from usae.config import EvaluateConfig, to_dict
from usae.device import resolve_device
from usae.evaluation.evaluate import evaluate_sources
from usae.evaluation.factors import FactorAUROC, factor_labels
from usae.sae.model import Codes
from usae.sae.model import USAE

logger = logging.getLogger(__name__)


class PlantedFactors:
    """Scores every concept as a detector of each planted factor of the generated image set.

    Token labels come from the set's object map (a patch is positive for "colour=red" when a
    red object covers at least half of it, :meth:`from_images`); AUROC is streamed per model
    (``FactorAUROC``).

    Args:
        names: ``"factor=value"`` per label column.
        labels: ``(n_images, tokens_per_image, n_values)`` bool, images in store-row order.
        models: the models whose codes are scored. n_concepts: latents per code.
        min_auroc: AUROC from which a concept is named after its best factor (:func:`factor_label`).
    """

    def __init__(self, names: list[str], labels: np.ndarray, models: list[str], n_concepts: int,
                 min_auroc: float) -> None:
        self.names = names
        self.labels = labels
        self.scorers = {m: FactorAUROC(n_concepts, len(names)) for m in models}
        self.n_concepts = n_concepts
        self.min_auroc = min_auroc

    @classmethod
    def from_images(cls, synthetic_dir: Path, manifest: pd.DataFrame, store_rows: np.ndarray, grid: int,
                    models: list[str], n_concepts: int, min_auroc: float) -> PlantedFactors:
        """The scorer of the generated images at ``store_rows`` (manifest indices) on a ``grid`` x ``grid`` grid."""
        ids = manifest.set_index("index").loc[store_rows, "image_id"]
        image_indices = np.array([int(str(i).rsplit("_", 1)[-1]) for i in ids])
        found = factor_labels(synthetic_dir / "object_map.zarr", synthetic_dir / "objects.parquet", image_indices, grid)
        labels = found.labels.reshape(len(image_indices), grid * grid, len(found.names))
        return cls(found.names, labels, models, n_concepts, min_auroc)

    def fresh(self) -> PlantedFactors:
        """An empty scorer of the same images and factors: another dictionary's codes (a baseline's)."""
        return PlantedFactors(self.names, self.labels, list(self.scorers), self.n_concepts, self.min_auroc)

    def update(self, name: str, codes: Codes, positions: np.ndarray) -> None:
        labels = self.labels[positions].reshape(-1, len(self.names))
        self.scorers[name].update(codes.values.cpu().numpy(), codes.indices.cpu().numpy(), labels)

    def columns(self) -> dict[str, Any]:
        """Per model the best-detected factor and its AUROC, and the best over the mean of models."""
        out: dict[str, Any] = {}
        tables = {}
        for name, scorer in self.scorers.items():
            tables[name] = scorer.result()
            best, score = scorer.best()
            out[f"factor_{name}"] = [factor_label(self.names, b, a, self.min_auroc) for b, a in zip(best, score)]
            out[f"factor_auroc_{name}"] = score
        mean = np.nanmean(np.stack(list(tables.values())), axis=0) if tables else None
        if mean is not None:
            filled = np.where(np.isnan(mean), -np.inf, mean)
            best = filled.argmax(axis=1)
            out["factor"] = [factor_label(self.names, b, filled[i, b], self.min_auroc)
                             if np.isfinite(filled[i, b]) else None for i, b in enumerate(best)]
            out["factor_auroc"] = np.where(np.isfinite(filled.max(axis=1)), filled.max(axis=1), np.nan)
        return out


def factor_label(names: list[str], best: int, score: float, min_auroc: float) -> str | None:
    """The label of a concept whose best planted-factor AUROC is ``score`` (for value ``best``).

    ``names[best]`` when ``score >= min_auroc``; ``"background"`` when ``score <= 1 - min_auroc``
    (even the best factor is a worse predictor than chance: the concept fires off objects);
    None in between, where the best factor is not told apart from chance well enough to name it.
    """
    if best < 0 or not np.isfinite(score):
        return None
    if score >= min_auroc:
        return names[best]
    return "background" if score <= 1 - min_auroc else None


def _check_data(model_dir: str | Path, trained_on: str | None, sources: dict, test_set: bool) -> None:
    """The stores hold the data the model was trained on or, for a test set, data on its scale."""
    for name, source in sources.items():
        if test_set:
            scaled_by = (source.attrs.get("standardized_with") or {}).get("manifest_hash")
            if scaled_by is None or (trained_on and scaled_by != trained_on):
                raise ValueError(f"{name}: the test set's store was not standardised with the statistics of the "
                                 f"data {model_dir} was trained on (manifest {str(trained_on)[:12]}, store: "
                                 f"{str(scaled_by)[:12]}); prepare the test set again")
            continue
        now = source.attrs.get("manifest_hash")
        if trained_on and now and trained_on != now:
            raise ValueError(f"{model_dir} was trained on manifest {trained_on[:12]} but the stores hold "
                             f"{now[:12]}; retrain or point to the right stores")


def evaluate_run(model_dir: str | Path, store_paths: dict[str, str | Path], cfg: EvaluateConfig,
                 out_dir: str | Path, *, manifest_path: str | Path | None = None,
                 synthetic_dir: str | Path | None = None, test_set: bool = False) -> dict[str, Any]:
    """Load the model, open the stores' ``val`` split, check they match, evaluate.

    With ``synthetic_dir`` (the generated image set) and ``manifest_path``, every concept is
    also scored against the planted factors.
    With ``cfg.baselines`` the baselines are fitted on the stores' ``train`` split.
    With ``test_set``, the stores are of other data (a test set: every image in ``val``,
    standardised with the statistics of the data the model was trained on); no baselines.

    Raises:
        ValueError: the stores come from other data than the model was trained on (with
            ``test_set``: were not standardised with its training data's statistics).
    """
    logger.info("evaluate %s: cfg=%s", model_dir, to_dict(cfg))
    model = USAE.load(model_dir)
    missing = sorted(set(model.names) - set(store_paths))
    if missing:
        raise ValueError(f"{model_dir} spans {model.names}, but no store is given for {missing}")
    sources = open_aligned({n: Path(store_paths[n]) for n in model.names}, split="val")
    _check_data(model_dir, model.meta.get("provenance", {}).get("manifest_hash"), sources, test_set)
    for name, source in sources.items():
        if source.d_model != model.dims[name]:
            raise ValueError(f"{name}: store width {source.d_model} != the model's {model.dims[name]}")
    device = resolve_device(cfg.device, "evaluate.device")
    factors = None
    if synthetic_dir is not None and manifest_path is not None:
        from usae.data.manifest import read_manifest

        first = next(iter(sources.values()))
        factors = PlantedFactors.from_images(Path(synthetic_dir), read_manifest(manifest_path), first.rows,
                                             int(first.attrs["grid"][0]), model.names, model.cfg.n_latents,
                                             min_auroc=cfg.min_factor_auroc)
    baseline_sources = None
    if cfg.baselines and not test_set:
        baseline_sources = open_aligned({n: Path(store_paths[n]) for n in model.names}, split="train")
    return evaluate_sources(model, sources, cfg, out_dir, device=device, factors=factors,
                            baseline_sources=baseline_sources)
