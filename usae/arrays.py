"""A run on activation arrays made elsewhere, end to end: train, evaluate, report (``usae ... --acts``).

The run folder has the pipeline's layout (``model/``, ``train_log.parquet``, ``eval/``,
``report/``): training holds out rows and standardises as :mod:`usae.activations.external`
says, evaluation writes the pipeline's files on the held-out rows, and the report is the
pipeline's, without the sections that need images.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from usae.activations.external import TOKENS_PER_IMAGE, evaluation_arrays, training_arrays
from usae.config import EvaluateConfig
from usae.config.arrays import ArraysSettings
from usae.device import resolve_device
from usae.evaluation.evaluate import evaluate_sources
from usae.sae.model import USAE
from usae.training.loop import TrainResult, train_usae

logger = logging.getLogger(__name__)


def train_arrays(paths: dict[str, str | Path], settings: ArraysSettings, out_dir: str | Path, *,
                 num_workers: int = 1) -> TrainResult:
    """Train a USAE on arrays (one per model, rows aligned) into the run folder ``out_dir``.

    Rows of ``dataset.val_fraction`` are held out; each model's statistics come from its
    training rows and are saved with the model, so ``USAE.load(out_dir / "model").encode(name,
    raw)`` takes raw activations. The split, the arrays' paths and shapes are in
    ``model.meta["provenance"]``.
    """
    data = training_arrays(paths, val_fraction=settings.dataset.val_fraction, seed=settings.dataset.seed,
                           prepare=settings.prepare, num_workers=num_workers)
    return train_usae(data.train, settings.sae, settings.train, out_dir, standardization=data.standardization,
                      provenance=data.provenance, validation_tokens=data.validation_tokens)


def evaluate_arrays(run: str | Path, cfg: EvaluateConfig, *, paths: dict[str, str | Path] | None = None,
                    split: str = "val", out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a run trained on arrays, writing the pipeline's evaluation files.

    Args:
        run: the run folder (or its ``model/``).
        cfg: the ``evaluate`` settings. For (rows, d) arrays a block is ``batch_images`` x
            196 rows: a row is one token, not an image.
        paths: model name -> array; default the paths the model was trained on.
        split: ``val`` (the held-out rows), ``train`` or ``all``.
        out_dir: default ``<run>/eval``, where the report looks.

    Returns:
        The metrics written to ``metrics.json``.
    """
    run_dir = run_folder(run)
    model = USAE.load(run_dir / "model")
    sources = evaluation_arrays(model.meta, model.names, paths, split)
    if model.meta["provenance"]["split"]["unit"] == "token":
        cfg = dataclasses.replace(cfg, batch_images=cfg.batch_images * TOKENS_PER_IMAGE)
    out = Path(out_dir) if out_dir is not None else run_dir / "eval"
    logger.info("evaluate %s on its %s rows into %s", run_dir, split, out)
    return evaluate_sources(model, sources, cfg, out, device=resolve_device(cfg.device, "evaluate.device"))


def report_arrays(run: str | Path, cfg: EvaluateConfig, *, paths: dict[str, str | Path] | None = None,
                  split: str = "val", out_dir: str | Path | None = None) -> Path:
    """The report of a run trained on arrays (default ``<run>/report``); return its index.html.

    The run is evaluated first (into ``<run>/eval``) when ``paths`` are given or it has no
    evaluation yet. There are no images: the sections that show them say so.
    """
    from usae.report.build import build_report  # matplotlib and jinja: only for the report

    run_dir = run_folder(run)
    if paths is not None or not (run_dir / "eval" / "metrics.json").is_file():
        evaluate_arrays(run_dir, cfg, paths=paths, split=split)
    return build_report(run_dir, None, Path(out_dir) if out_dir is not None else run_dir / "report")


def run_folder(path: str | Path) -> Path:
    """The run folder of ``path``: a run folder (holding ``model/``) or its ``model/`` folder.

    Raises:
        FileNotFoundError: neither holds a saved model.
    """
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path
    if path.name == "model" and (path / "config.json").is_file():
        return path.parent
    raise FileNotFoundError(f"no trained model in {path}: expected {path / 'model' / 'config.json'}, as "
                            f"`usae train --acts NAME=PATH ... --out {path}` writes")
