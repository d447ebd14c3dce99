"""Activation arrays made elsewhere, read as the pipeline reads its aligned stores: split and standardised.

The pipeline's ``prepare`` stage writes standardised tokens; arrays given to ``usae train
--acts`` are standardised as they are read instead, with the same statistics
(:func:`usae.activations.standardize.compute_standardization`: ``prepare.standardize``,
``prepare.stats_images`` rows sampled with ``prepare.seed``) computed on the training rows
only (:mod:`usae.activations.holdout`). The statistics are saved with the model, so the
model encodes raw activations, and evaluation standardises the held-out rows with them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from usae.activations.holdout import HeldOut, hold_out
from usae.activations.sources import TokenSource, open_arrays
from usae.activations.standardize import Standardization, compute_standardization, sample_images
from usae.config import PrepareConfig

logger = logging.getLogger(__name__)

TOKENS_PER_IMAGE = 196
"""Flat (rows, d) arrays hold single tokens: their statistics sample ``prepare.stats_images`` x
this many rows, as many tokens as that many images of the paper's 14 x 14 grid."""

SPLITS = ("val", "train", "all")


class RowView:
    """A token source as a (rows, tokens, d) array, standardised as it is read when ``stats`` is given.

    Supports what :class:`TokenSource` and ``dask.array.from_array`` ask of an array: a
    shape, a dtype and slicing with a contiguous row range first.
    """

    def __init__(self, source: TokenSource, stats: Standardization | None = None) -> None:
        self.source, self.stats = source, stats
        self.shape = source.shape
        self.ndim = 3
        self.dtype = np.dtype(np.float32) if stats is not None else source.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if not isinstance(key[0], slice):
            raise IndexError(f"{self.source.name}: rows are read as a slice, got {key[0]!r}")
        start, stop, step = key[0].indices(self.shape[0])
        if step != 1:
            raise IndexError(f"{self.source.name}: rows are read in a contiguous range, got step {step}")
        block = self.source.read(start, max(start, stop))
        if self.stats is not None:
            block = self.stats.apply(block)
        return block[(slice(None), *key[1:])]


def standardized(source: TokenSource, stats: Standardization, rows: np.ndarray) -> TokenSource:
    """``source`` standardised with ``stats`` as it is read, with only ``rows`` (a boolean mask) valid."""
    return TokenSource(source.name, RowView(source, stats), chunk_rows=source.chunk_rows, valid=rows,
                       attrs=source.attrs, path=source.path)


def training_statistics(source: TokenSource, train_rows: np.ndarray, cfg: PrepareConfig, *,
                        num_workers: int = 1) -> Standardization:
    """``cfg.standardize`` statistics of a seeded sample of the training rows, as ``prepare`` computes them.

    Raises:
        ValueError: the statistics are not finite (NaN or inf in the sampled rows).
    """
    positions = np.flatnonzero(train_rows)
    n_sample = cfg.stats_images * (TOKENS_PER_IMAGE if source.flat else 1)
    sample = positions[sample_images(len(positions), n_sample, cfg.seed)]
    view = RowView(source)
    tokens = da.from_array(view, chunks=(source.chunk_rows, -1, -1), meta=np.empty((0, 0, 0), view.dtype))
    stats = compute_standardization(tokens[sample], cfg.standardize, seed=cfg.seed, num_workers=num_workers,
                                    source=f"{source.name} ({source.path}) training rows")
    logger.info("%s: %s statistics over %d training rows: mean %s, std %.5f", source.name, stats.kind, len(sample),
                np.round(stats.mean, 5) if stats.mean.ndim == 0 else f"vector of {stats.mean.size}", stats.std)
    return stats


@dataclass(frozen=True)
class TrainingArrays:
    """Arrays ready to train on: their training rows, standardised, and what to save with the model.

    Attributes:
        train: model name -> its training rows (the others invalid), standardised as read.
        split: the held-out split.
        standardization: model name -> statistics (``Standardization.to_dict``).
        provenance: absolute paths (``arrays``), ``shapes`` and the ``split``.
    """

    train: dict[str, TokenSource]
    split: HeldOut
    standardization: dict[str, dict[str, Any]]
    provenance: dict[str, Any]

    @property
    def validation_tokens(self) -> int | None:
        """Tokens held out (what evaluation measures over), or None without a held-out split."""
        tokens = next(iter(self.train.values())).tokens_per_row
        return self.split.n_val * tokens if self.split.n_val else None


def training_arrays(paths: dict[str, str | Path], *, val_fraction: float, seed: int, prepare: PrepareConfig,
                    num_workers: int = 1) -> TrainingArrays:
    """Open arrays (:func:`open_arrays`), split them (:func:`hold_out`) and standardise them on
    their training rows (:func:`training_statistics`)."""
    raw = open_arrays({name: Path(path) for name, path in paths.items()})
    split, val_rows = hold_out(raw, val_fraction, seed)
    stats = {name: training_statistics(s, ~val_rows, prepare, num_workers=num_workers) for name, s in raw.items()}
    provenance = {"arrays": {name: str(Path(path).resolve()) for name, path in paths.items()},
                  "shapes": {name: list(s.shape) for name, s in raw.items()}, "split": split.to_dict()}
    return TrainingArrays(train={name: standardized(s, stats[name], ~val_rows) for name, s in raw.items()},
                          split=split, standardization={name: st.to_dict() for name, st in stats.items()},
                          provenance=provenance)


def evaluation_arrays(meta: dict[str, Any], names: list[str], paths: dict[str, str | Path] | None = None,
                      split: str = "val") -> dict[str, TokenSource]:
    """A model's arrays again, for evaluation: the rows of ``split``, standardised with the model's statistics.

    Args:
        meta: the trained model's ``meta`` (``provenance`` and ``standardization``).
        names: the model's models, in order.
        paths: model name -> array; default the paths recorded at training.
        split: ``val`` (the held-out rows), ``train`` or ``all``.

    Raises:
        ValueError: the model was not trained on arrays, arrays missing for or foreign to the
            model, shapes other than at training, or no row in ``split``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    provenance = meta.get("provenance") or {}
    if "split" not in provenance:
        raise ValueError("the model was not trained on activation arrays (`usae train --acts`): its provenance "
                         "records no held-out split; evaluate a pipeline run with -c and --run")
    paths = {n: Path(p) for n, p in (paths or provenance["arrays"]).items()}
    if sorted(paths) != sorted(names):
        raise ValueError(f"the model spans {names}; arrays were given for {sorted(paths)}")
    raw = open_arrays({n: paths[n] for n in names})
    for name, source in raw.items():
        trained = tuple(provenance["shapes"][name])
        if source.shape != trained:
            raise ValueError(f"{name} ({paths[name]}): shape (rows, tokens, d) {source.shape}, but the model was "
                             f"trained on {trained} ({provenance['arrays'][name]}); give the arrays it was trained on")
    val_rows = HeldOut.from_dict(provenance["split"]).val_mask()
    rows = {"val": val_rows, "train": ~val_rows, "all": np.ones_like(val_rows)}[split]
    if not rows.any():
        raise ValueError(f"no {split} row: the model was trained with dataset.val_fraction = "
                         f"{provenance['split']['val_fraction']}; evaluate with --split train or all")
    stats = {n: Standardization.from_dict(meta["standardization"][n]) for n in names}
    return {n: standardized(raw[n], stats[n], rows) for n in names}
