"""Arrays made elsewhere, standardised as the pipeline's prepare stage does, on their training rows only."""

from pathlib import Path

import numpy as np
import pytest
import torch

from usae.activations.external import (
    TOKENS_PER_IMAGE, RowView, evaluation_arrays, training_arrays, training_statistics,
)
from usae.activations.holdout import validation_rows
from usae.activations.sources import open_arrays
from usae.activations.standardize import Standardization
from usae.config import PrepareConfig, SAEConfig, TrainConfig
from usae.training.loop import train_usae

ALL_ROWS = PrepareConfig(stats_images=10_000)  # a sample as large as the data: every training row


def _arrays(folder: Path, n_rows: int = 120, tokens: int | None = 4) -> dict[str, Path]:
    """Two models' arrays; the validation rows (val_fraction 0.25, seed 0) are shifted by +100, so
    statistics that saw them would be far off."""
    rng = np.random.default_rng(0)
    val = validation_rows(n_rows, 0.25, seed=0)
    shape = (n_rows, tokens) if tokens else (n_rows,)
    paths = {}
    for name, d, scale, shift in (("a", 3, 2.0, 5.0), ("b", 5, 0.5, -1.0)):
        x = rng.normal(shift, scale, size=(*shape, d)).astype(np.float32)
        x[val] += 100.0
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], x)
    return paths


def _train_rows(path: Path) -> np.ndarray:
    x = np.load(path)
    return x[~validation_rows(len(x), 0.25, seed=0)].astype(np.float64)


@pytest.mark.parametrize("kind", ["scalar", "per_dim"])
def test_statistics_come_from_the_training_rows_only(tmp_path, kind):
    paths = _arrays(tmp_path)
    data = training_arrays(paths, val_fraction=0.25, seed=0, prepare=PrepareConfig(standardize=kind, stats_images=1000))
    for name, path in paths.items():
        train = _train_rows(path).reshape(-1, np.load(path).shape[-1])
        stats = data.standardization[name]
        if kind == "scalar":
            assert stats["mean"] == pytest.approx(train.mean(), rel=1e-6)
            assert stats["std"] == pytest.approx(train.std(), rel=1e-6)
        else:
            np.testing.assert_allclose(stats["mean"], train.mean(axis=0), rtol=1e-6)
            assert stats["std"] == pytest.approx(np.sqrt(train.var(axis=0).mean()), rel=1e-6)
        assert stats["n_images"] == len(_train_rows(path))


def test_training_sources_read_standardised_training_rows(tmp_path):
    paths = _arrays(tmp_path)
    data = training_arrays(paths, val_fraction=0.25, seed=0, prepare=ALL_ROWS)
    val = validation_rows(120, 0.25, seed=0)
    source = data.train["a"]
    assert np.array_equal(source.valid, ~val) and source.dtype == np.float32
    stats = Standardization.from_dict(data.standardization["a"])
    np.testing.assert_allclose(source.read(10, 30), (np.load(paths["a"])[10:30] - stats.mean) / stats.std, rtol=1e-5)
    train = source.read(0, 120)[~val]
    assert abs(train.mean()) < 1e-5 and train.std() == pytest.approx(1.0, rel=1e-4)
    assert data.validation_tokens == int(val.sum()) * 4
    assert data.provenance["shapes"] == {"a": [120, 4, 3], "b": [120, 4, 5]}
    assert data.provenance["arrays"]["a"] == str(paths["a"].resolve())
    assert data.provenance["split"]["n_val"] == val.sum()


def test_flat_arrays_sample_tokens_for_as_many_images(tmp_path):
    paths = _arrays(tmp_path, n_rows=3000, tokens=None)
    source = open_arrays(paths)["a"]
    train = ~validation_rows(3000, 0.25, seed=0)
    stats = training_statistics(source, train, PrepareConfig(stats_images=2))
    assert source.flat and stats.n_images == 2 * TOKENS_PER_IMAGE == stats.n_tokens
    everything = training_statistics(source, train, ALL_ROWS)
    assert everything.n_images == train.sum() and everything.mean == pytest.approx(_train_rows(paths["a"]).mean())


def test_row_view_reads_row_ranges_only(tmp_path):
    view = RowView(open_arrays(_arrays(tmp_path))["a"])
    assert view[2:5, :, 1:].shape == (3, 4, 2)
    with pytest.raises(IndexError, match="rows are read as a slice"):
        view[3]
    with pytest.raises(IndexError, match="contiguous range"):
        view[0:10:2]


def test_the_model_encodes_raw_activations_as_it_was_trained_on_standardised_ones(tmp_path):
    paths = _arrays(tmp_path)
    data = training_arrays(paths, val_fraction=0.25, seed=0, prepare=PrepareConfig(standardize="per_dim"))
    result = train_usae(data.train, SAEConfig(n_latents=16, k=3, aux_k=0, decode="dense"),
                        TrainConfig(max_steps=3, batch_tokens=64, buffer_tokens=512, device="cpu", read_threads=1),
                        tmp_path / "run", standardization=data.standardization, provenance=data.provenance)
    from usae.sae.model import USAE

    model = USAE.load(result.model_dir)
    raw = np.load(paths["b"])[:7]
    stats = data.standardization["b"]
    manual = (raw - np.asarray(stats["mean"], np.float32)) / np.float32(stats["std"])
    with torch.no_grad():
        from_raw = model.encode("b", torch.from_numpy(raw))
        from_manual = model.encode("b", torch.from_numpy(manual), standardized=True)
    assert from_raw.shape == (7, 4, 16) and (from_manual > 0).any()
    torch.testing.assert_close(from_raw, from_manual, rtol=1e-5, atol=1e-5)
    assert model.meta["standardization"]["b"]["kind"] == "per_dim"
    assert model.meta["provenance"]["split"]["val_fraction"] == 0.25


def _meta(paths: dict[str, Path], val_fraction: float = 0.25) -> dict:
    data = training_arrays(paths, val_fraction=val_fraction, seed=0, prepare=ALL_ROWS)
    return {"provenance": data.provenance, "standardization": data.standardization}


def test_evaluation_reads_the_held_out_rows_with_the_training_statistics(tmp_path):
    paths = _arrays(tmp_path)
    meta = _meta(paths)
    val = validation_rows(120, 0.25, seed=0)
    sources = evaluation_arrays(meta, ["a", "b"])  # the recorded paths
    assert np.array_equal(sources["a"].valid, val)
    stats = Standardization.from_dict(meta["standardization"]["a"])
    np.testing.assert_allclose(sources["a"].read(0, 120), stats.apply(np.load(paths["a"])), rtol=1e-6)
    assert sources["a"].read(0, 120)[val].mean() > 10  # the shifted rows, on the training scale
    assert np.array_equal(evaluation_arrays(meta, ["a", "b"], split="train")["b"].valid, ~val)
    assert evaluation_arrays(meta, ["a", "b"], split="all")["b"].valid.all()


def test_evaluation_refuses_other_arrays_and_runs(tmp_path):
    paths = _arrays(tmp_path)
    meta = _meta(paths)
    (tmp_path / "short").mkdir()
    short = _arrays(tmp_path / "short", n_rows=100)
    with pytest.raises(ValueError, match=r"a \(.*short/a.npy\): shape \(rows, tokens, d\) \(100, 4, 3\), but the "
                                         r"model was trained on \(120, 4, 3\)"):
        evaluation_arrays(meta, ["a", "b"], short)
    with pytest.raises(ValueError, match=r"the model spans \['a', 'b'\]; arrays were given for \['a'\]"):
        evaluation_arrays(meta, ["a", "b"], {"a": paths["a"]})
    with pytest.raises(ValueError, match="not trained on activation arrays"):
        evaluation_arrays({"provenance": {"stores": {}}}, ["a", "b"])
    with pytest.raises(ValueError, match="unknown split 'test'"):
        evaluation_arrays(meta, ["a", "b"], split="test")
    with pytest.raises(ValueError, match=r"no val row: .*val_fraction = 0.0; evaluate with --split train or all"):
        evaluation_arrays(_meta(paths, val_fraction=0.0), ["a", "b"])
