"""Stage 3 on hand-made extraction parts: order, alignment, standardisation, refusals."""

import json

import numpy as np
import pandas as pd
import pytest

from usae.activations.align import resize_grid
from usae.activations.parts import create_part_layer
from usae.activations.prepare import prepare_activations
from usae.activations.sources import open_aligned
from usae.activations.store import atomic_store, base_attrs, open_store
from usae.config import PrepareConfig
from usae.data.manifest import COLUMNS, SPLITS, manifest_hash

N_IMAGES, D = 10, 3


def write_manifest(path, splits):
    table = pd.DataFrame({
        "index": range(len(splits)), "image_id": [f"im{i:02d}" for i in range(len(splits))],
        "path": [f"/x/im{i}.png" for i in range(len(splits))], "split": splits, "label": None,
        "width": 8, "height": 8, "status": "ok", "reason": "",
    })[list(COLUMNS)]
    table.to_parquet(path)
    return table


def planted_tokens(grid):
    """Image n, grid cell (r, c), dim k holds n + 10*k + a smooth function of the cell centre."""
    centres = (np.arange(grid) + 0.5) / grid
    y, x = np.meshgrid(centres, centres, indexing="ij")
    spatial = (x + 2 * y).reshape(1, grid * grid, 1)
    return (np.arange(N_IMAGES)[:, None, None] + 10 * np.arange(D)[None, None, :] + spatial).astype(np.float16)


def write_parts(root, table, tokens, grid, bounds, *, valid=None, manifest=None):
    paths = []
    for part, (lo, hi) in enumerate(bounds):
        path = root / f"part{part}.zarr"
        with atomic_store(path) as g:
            g.attrs.update(base_attrs(stage="extract", models={"m": "final"}, manifest_hash=manifest or manifest_hash(table),
                                      part=part, n_parts=len(bounds), n_images=hi - lo))
            layer = create_part_layer(g, "final", {"model": {"key": "m"}, "grid": [grid, grid], "d_model": D,
                                                   "n_prefix": 1}, hi - lo, prefix=False, chunk_rows=3, compressor="none")
            layer["patches"][:] = tokens[lo:hi]
            g.create_array("rows", data=np.arange(lo, hi, dtype=np.int64))
            g.create_array("valid", data=np.ones(hi - lo, bool) if valid is None else valid[lo:hi])
        paths.append(path)
    return paths


@pytest.fixture
def setup(tmp_path):
    splits = ["train", "val", "train", "train", "val", "train", "train", "val", "train", "train"]
    table = write_manifest(tmp_path / "manifest.parquet", splits)
    tokens = planted_tokens(8)
    parts = write_parts(tmp_path, table, tokens, 8, [(0, 4), (4, 10)])
    return tmp_path, table, tokens, parts


def test_rows_are_split_in_manifest_order_and_aligned(setup):
    root, table, tokens, parts = setup
    cfg = PrepareConfig(grid=4, standardize="none", images_per_chunk=2)
    prepare_activations(parts[::-1], root / "manifest.parquet", cfg, root / "out.zarr", root / "out.json")
    store = open_store(root / "out.zarr")
    expected = resize_grid(tokens.astype(np.float32), (8, 8), (4, 4)).numpy()
    for split in ("train", "val"):
        rows = store[split]["rows"][:]
        np.testing.assert_array_equal(rows, np.flatnonzero(table["split"] == split))
        np.testing.assert_allclose(store[split]["tokens"][:], expected[rows], atol=0.05)
    assert store["train"]["tokens"].chunks == (2, 16, D)
    assert store.attrs["grid"] == [4, 4] and store.attrs["source_grid"] == [8, 8]
    # every value was checked finite before it was written: the loader trusts the store through its checksums
    assert store.attrs["finite_checked"] is True
    assert all(s.checked_finite for s in open_aligned({"m": root / "out.zarr"}, split).values() for split in SPLITS)


def test_scalar_statistics_use_a_seeded_train_sample(setup):
    root, table, tokens, parts = setup
    cfg = PrepareConfig(grid=8, standardize="scalar", stats_images=3, seed=4)
    stats = prepare_activations(parts, root / "manifest.parquet", cfg, root / "out.zarr", root / "out.json")
    train = np.flatnonzero(table["split"] == "train")
    rng = np.random.default_rng(4)
    sample = train[np.sort(rng.choice(len(train), 3, replace=False))]
    picked = tokens[sample].astype(np.float64)
    assert float(stats.mean) == pytest.approx(picked.mean()) and stats.std == pytest.approx(picked.std())
    out = open_store(root / "out.zarr")["train"]["tokens"][:].astype(np.float64)
    np.testing.assert_allclose(out, (tokens[train] - picked.mean()) / picked.std(), atol=2e-3)
    saved = json.loads((root / "out.json").read_text())
    assert saved["standardization"]["kind"] == "scalar" and saved["standardization"]["seed"] == 4
    assert open_store(root / "out.zarr").attrs["standardization"] == saved["standardization"]


def test_per_dim_centres_each_dimension(setup):
    root, _, _, parts = setup
    cfg = PrepareConfig(grid=8, standardize="per_dim", stats_images=1000)
    stats = prepare_activations(parts, root / "manifest.parquet", cfg, root / "out.zarr", root / "out.json")
    assert stats.mean.shape == (D,)
    train = open_store(root / "out.zarr")["train"]["tokens"][:].astype(np.float64)
    np.testing.assert_allclose(train.reshape(-1, D).mean(axis=0), 0, atol=2e-3)


def test_invalid_images_are_zeroed_and_flagged(tmp_path):
    table = write_manifest(tmp_path / "m.parquet", ["train"] * N_IMAGES)
    valid = np.ones(N_IMAGES, bool)
    valid[3] = False
    tokens = planted_tokens(4)
    tokens[3] = 1000  # garbage that must not reach the statistics
    parts = write_parts(tmp_path, table, tokens, 4, [(0, 10)], valid=valid)
    stats = prepare_activations(parts, tmp_path / "m.parquet", PrepareConfig(grid=4), tmp_path / "o.zarr",
                                tmp_path / "o.json")
    assert float(stats.mean) < 100
    store = open_store(tmp_path / "o.zarr")["train"]
    np.testing.assert_array_equal(store["valid"][:], valid)
    assert not store["tokens"][3].any()


def test_refuses_parts_of_another_manifest(setup):
    root, table, tokens, _ = setup
    other = write_parts(root / "other", table, tokens, 8, [(0, 10)], manifest="0" * 64)
    with pytest.raises(ValueError, match="another manifest"):
        prepare_activations(other, root / "manifest.parquet", PrepareConfig(grid=8), root / "o.zarr", root / "o.json")
    assert not (root / "o.zarr").exists()


def test_refuses_missing_parts_and_grid_too_large(setup):
    root, _, _, parts = setup
    with pytest.raises(FileNotFoundError, match="part9.zarr"):
        prepare_activations(parts + [root / "part9.zarr"], root / "manifest.parquet", PrepareConfig(grid=8),
                            root / "o.zarr", root / "o.json")
    with pytest.raises(ValueError, match="do not cover"):
        prepare_activations(parts[:1], root / "manifest.parquet", PrepareConfig(grid=8), root / "o.zarr",
                            root / "o.json")
    with pytest.raises(ValueError, match="prepare.grid = 9 is larger"):
        prepare_activations(parts, root / "manifest.parquet", PrepareConfig(grid=9), root / "o.zarr", root / "o.json")
    assert not (root / "o.zarr").exists()


def test_refuses_nan_in_parts_naming_the_model(setup):
    root, table, tokens, _ = setup
    broken = tokens.copy()
    broken[3, 5, 1] = np.nan  # a training image: the statistics see it
    parts = write_parts(root / "nan", table, broken, 8, [(0, 10)])
    with pytest.raises(ValueError, match=r"m: standardisation statistics are not finite .*rerun its extraction"):
        prepare_activations(parts, root / "manifest.parquet", PrepareConfig(grid=8), root / "o.zarr", root / "o.json")
    assert not (root / "o.zarr").exists()


def test_refuses_tokens_beyond_float16_naming_the_image(setup):
    root, table, tokens, _ = setup
    broken = (tokens.astype(np.float32) * 1e-3).astype(np.float16)  # training tokens: std about 0.01
    broken[4, :, :] = 1000.0  # a validation outlier: about 1e5 standard deviations, past float16's 65504
    parts = write_parts(root / "big", table, broken, 8, [(0, 10)])
    cfg = PrepareConfig(grid=8, standardize="scalar")
    with pytest.raises(ValueError, match=r"m val: standardised tokens of manifest index 4 are NaN or inf"):
        prepare_activations(parts, root / "manifest.parquet", cfg, root / "o.zarr", root / "o.json")
    assert not (root / "o.zarr").exists()
