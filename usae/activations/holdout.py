"""The held-out split of activation arrays made elsewhere: which rows are trained on, which evaluated.

Rows go to validation exactly as images without a split do in a manifest
(:func:`usae.data.manifest.hashed_split`, ``dataset.val_fraction`` and ``dataset.seed``): a
seeded hash of the row's index, so appending rows never moves the others. A row is an
image when the arrays are (images, tokens, d), so all tokens of an image fall on one side;
in flat (rows, d) arrays a row is a single token, and tokens of one image may fall on both.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from usae.activations.sources import TokenSource
from usae.config import ManifestConfig
from usae.data.manifest import hashed_split

logger = logging.getLogger(__name__)

METHOD = "sha256(f'{seed}:{row}') / 2**64 < val_fraction, as dataset.val_fraction splits images"


@dataclass(frozen=True)
class HeldOut:
    """A split of ``n_rows`` aligned rows, as recorded in the trained model's provenance.

    Attributes:
        unit: ``image`` (rows of (images, tokens, d) arrays) or ``token`` (rows of (rows, d) arrays).
        val_fraction: share of rows drawn for validation (``dataset.val_fraction``).
        seed: seed of the draw (``dataset.seed``).
        n_rows: rows of every array.
        n_train: rows trained on.
        n_val: rows held out.
    """

    unit: str
    val_fraction: float
    seed: int
    n_rows: int
    n_train: int
    n_val: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": METHOD}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOut:
        return cls(**{k: data[k] for k in ("unit", "val_fraction", "seed", "n_rows", "n_train", "n_val")})

    def val_mask(self) -> np.ndarray:
        """The validation rows, recomputed from the seed (the same on every call and machine)."""
        return validation_rows(self.n_rows, self.val_fraction, self.seed)


def validation_rows(n_rows: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (n_rows,): True for the rows held out for validation."""
    split = ManifestConfig(val_fraction=val_fraction, seed=seed)
    return np.fromiter((hashed_split(str(row), split) == "val" for row in range(n_rows)), dtype=bool, count=n_rows)


def hold_out(sources: dict[str, TokenSource], val_fraction: float, seed: int) -> tuple[HeldOut, np.ndarray]:
    """The split of aligned ``sources`` (each row in every source the same input) and its validation mask.

    Raises:
        ValueError: the split leaves no training row, or ``val_fraction`` > 0 leaves no
            validation row (naming the rows and the fraction; 0 means no held-out rows).
    """
    first = next(iter(sources.values()))
    mask = validation_rows(first.n_rows, val_fraction, seed)
    n_val = int(mask.sum())
    unit = "token" if first.flat else "image"
    where = f"{first.n_rows} {unit} rows of {', '.join(sources)} at dataset.val_fraction = {val_fraction}"
    if n_val == first.n_rows:
        raise ValueError(f"no training row: {where} (seed {seed}) puts every row in validation; lower it")
    if val_fraction > 0 and n_val == 0:
        raise ValueError(f"no validation row: {where} (seed {seed}) holds none out; raise it, or set it to 0 "
                         "to train on every row")
    split = HeldOut(unit=unit, val_fraction=float(val_fraction), seed=int(seed), n_rows=first.n_rows,
                    n_train=first.n_rows - n_val, n_val=n_val)
    logger.info("held-out split by %s: %d rows for training, %d for validation (dataset.val_fraction = %s, "
                "seed %d)", unit, split.n_train, split.n_val, val_fraction, seed)
    return split, mask
