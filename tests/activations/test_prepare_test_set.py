"""Stage 3 for a test set: the training data's statistics, every image in ``val``."""

import json

import numpy as np
import pytest

from usae.activations.prepare import prepare_activations
from usae.activations.store import open_store
from usae.config import PrepareConfig

from test_prepare import N_IMAGES, planted_tokens, write_manifest, write_parts


@pytest.fixture
def trained(tmp_path):
    """The training data prepared (scalar statistics), and a test set shifted by +50."""
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    train_dir.mkdir(), test_dir.mkdir()
    splits = ["train"] * 7 + ["val"] * 3
    table = write_manifest(train_dir / "m.parquet", splits)
    tokens = planted_tokens(4)
    parts = write_parts(train_dir, table, tokens, 4, [(0, 10)])
    cfg = PrepareConfig(grid=4, standardize="scalar")
    stats = prepare_activations(parts, train_dir / "m.parquet", cfg, train_dir / "a.zarr", train_dir / "a.json")
    test_table = write_manifest(test_dir / "m.parquet", ["train", "val"] * 5)  # its own split is ignored
    shifted = (tokens.astype(np.float32) + 50).astype(np.float16)
    test_parts = write_parts(test_dir, test_table, shifted, 4, [(0, 4), (4, 10)])
    return cfg, stats, train_dir, test_dir, test_parts, shifted


def test_a_shifted_test_set_stays_shifted(trained):
    """Standardised with the training statistics, +50 stays +50 / std; its own would centre it."""
    cfg, stats, train_dir, test_dir, parts, shifted = trained
    used = prepare_activations(parts, test_dir / "m.parquet", cfg, test_dir / "a.zarr", test_dir / "a.json",
                               reference_stats=train_dir / "a.json")
    assert float(used.mean) == pytest.approx(float(stats.mean)) and used.std == pytest.approx(stats.std)
    store = open_store(test_dir / "a.zarr")
    out = store["val"]["tokens"][:].astype(np.float64)
    np.testing.assert_allclose(out, (shifted.astype(np.float64) - float(stats.mean)) / stats.std, atol=5e-3)
    assert out.mean() == pytest.approx(50 / stats.std + (planted_tokens(4).astype(np.float64).mean()
                                                         - float(stats.mean)) / stats.std, abs=1e-2)
    assert out.mean() > 5  # not centred on its own mean
    np.testing.assert_array_equal(store["val"]["rows"][:], np.arange(N_IMAGES))
    assert store["train"]["tokens"].shape[0] == 0
    assert store.attrs["standardized_with"] == {"stats": str(train_dir / "a.json"),
                                                "manifest_hash": open_store(train_dir / "a.zarr").attrs["manifest_hash"]}
    assert json.loads((test_dir / "a.json").read_text())["standardization"] == store.attrs["standardization"]


def test_refuses_statistics_of_another_grid_or_none(trained):
    cfg, _, train_dir, test_dir, parts, _ = trained
    with pytest.raises(ValueError, match="not of these activations"):
        prepare_activations(parts, test_dir / "m.parquet", PrepareConfig(grid=2), test_dir / "a.zarr",
                            test_dir / "a.json", reference_stats=train_dir / "a.json")
    with pytest.raises(FileNotFoundError, match="nothing.json not found"):
        prepare_activations(parts, test_dir / "m.parquet", cfg, test_dir / "a.zarr", test_dir / "a.json",
                            reference_stats=train_dir / "nothing.json")
    assert not (test_dir / "a.zarr").exists()
