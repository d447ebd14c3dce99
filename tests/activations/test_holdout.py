"""The held-out split of activation arrays: seeded, by image for (images, tokens, d), by row for (rows, d)."""

from pathlib import Path

import numpy as np
import pytest

from usae.activations.holdout import HeldOut, hold_out, validation_rows
from usae.activations.sources import open_arrays
from usae.config import ManifestConfig
from usae.data.manifest import hashed_split


def test_rows_are_drawn_as_the_manifest_draws_images_without_a_split():
    mask = validation_rows(500, 0.2, seed=3)
    split = ManifestConfig(val_fraction=0.2, seed=3)
    assert mask.tolist() == [hashed_split(str(row), split) == "val" for row in range(500)]
    assert 70 < mask.sum() < 130  # about a fifth
    assert not np.array_equal(mask, validation_rows(500, 0.2, seed=4))


def test_appending_rows_moves_no_row_and_a_larger_fraction_only_adds_rows():
    assert np.array_equal(validation_rows(1000, 0.3, seed=0)[:400], validation_rows(400, 0.3, seed=0))
    small, large = validation_rows(400, 0.1, seed=0), validation_rows(400, 0.3, seed=0)
    assert np.all(large[small])


def _save(folder: Path, shape: tuple[int, ...]) -> dict[str, Path]:
    folder.mkdir()
    paths = {}
    for name, d in (("a", 3), ("b", 5)):
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], np.zeros((*shape, d), np.float32))
    return paths


def test_image_arrays_split_by_image_and_flat_arrays_by_token(tmp_path):
    images = open_arrays(_save(tmp_path / "img", (60, 4)))
    flat = open_arrays(_save(tmp_path / "flat", (60,)))
    split, mask = hold_out(images, 0.25, seed=1)
    assert split.unit == "image" and (split.n_rows, split.n_val, split.n_train) == (60, mask.sum(), 60 - mask.sum())
    assert np.array_equal(mask, validation_rows(60, 0.25, 1))
    flat_split, flat_mask = hold_out(flat, 0.25, seed=1)
    assert flat_split.unit == "token" and np.array_equal(flat_mask, mask)


def test_a_split_round_trips_through_its_record(tmp_path):
    split, mask = hold_out(open_arrays(_save(tmp_path / "x", (80, 2))), 0.3, seed=7)
    record = split.to_dict()
    assert record["method"].startswith("sha256") and HeldOut.from_dict(record) == split
    assert np.array_equal(HeldOut.from_dict(record).val_mask(), mask)


def test_splits_that_leave_a_side_empty_are_refused_naming_the_fraction(tmp_path):
    sources = open_arrays(_save(tmp_path / "x", (3, 2)))
    with pytest.raises(ValueError, match=r"no training row: 3 image rows of a, b at dataset.val_fraction = 1.0"):
        hold_out(sources, 1.0, seed=0)
    with pytest.raises(ValueError, match=r"no validation row: .*val_fraction = 0.01 .*set it to 0"):
        hold_out(sources, 0.01, seed=0)
    split, mask = hold_out(sources, 0.0, seed=0)  # 0: train on every row, nothing held out
    assert (split.n_train, split.n_val) == (3, 0) and not mask.any()
