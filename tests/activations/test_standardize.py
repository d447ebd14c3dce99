"""Standardisation statistics against numpy on small arrays."""

import dask.array as da
import numpy as np
import pytest

from usae.activations.standardize import Standardization, compute_standardization, sample_images


@pytest.fixture
def tokens():
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 2.0, 0.5, 4.0])
    return (rng.normal(size=(10, 6, 4)) * scale + np.array([3.0, -1.0, 0.0, 10.0])).astype(np.float32)


def test_scalar_matches_numpy(tokens):
    stats = compute_standardization(da.from_array(tokens, chunks=(3, -1, -1)), "scalar", seed=5)
    np.testing.assert_allclose(stats.mean, tokens.astype(np.float64).mean(), rtol=1e-12)
    np.testing.assert_allclose(stats.std, tokens.astype(np.float64).std(), rtol=1e-12)
    assert (stats.n_images, stats.n_tokens, stats.seed) == (10, 60, 5)
    out = stats.apply(tokens)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5


def test_per_dim_matches_numpy(tokens):
    stats = compute_standardization(da.from_array(tokens, chunks=(4, -1, -1)), "per_dim", seed=0)
    flat = tokens.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(stats.mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, np.sqrt(flat.var(axis=0).mean()), rtol=1e-12)
    out = stats.apply(tokens).reshape(-1, 4)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    # One global scale keeps the relative scale of the dimensions.
    np.testing.assert_allclose(out.std(axis=0) / out.std(axis=0)[0], flat.std(axis=0) / flat.std(axis=0)[0],
                               rtol=1e-5)


def test_hand_computed_scalar():
    x = np.array([[[1.0, 3.0], [5.0, 7.0]]])  # mean 4, population std sqrt(5)
    stats = compute_standardization(da.from_array(x), "scalar", seed=0)
    assert float(stats.mean) == 4.0 and stats.std == pytest.approx(np.sqrt(5.0))


def test_none_is_identity(tokens):
    stats = compute_standardization(da.from_array(tokens), "none", seed=0)
    np.testing.assert_array_equal(stats.apply(tokens), tokens)


def test_round_trip_through_dict(tokens):
    stats = compute_standardization(da.from_array(tokens), "per_dim", seed=3)
    again = Standardization.from_dict(stats.to_dict())
    np.testing.assert_array_equal(again.apply(tokens), stats.apply(tokens))
    assert again.to_dict() == stats.to_dict()


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown standardization 'zscore'"):
        compute_standardization(da.zeros((1, 1, 1)), "zscore", seed=0)


def test_sample_is_seeded_sorted_and_capped():
    a, b = sample_images(100, 10, seed=1), sample_images(100, 10, seed=1)
    np.testing.assert_array_equal(a, b)
    assert len(set(a)) == 10 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_images(100, 10, seed=2))
    np.testing.assert_array_equal(sample_images(5, 1000, seed=0), np.arange(5))


@pytest.mark.parametrize("kind", ["scalar", "per_dim"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_statistics_name_the_source_and_the_remedy(kind, bad):
    x = np.ones((4, 3, 2))
    x[2, 1, 0] = bad
    with pytest.raises(ValueError, match=r"^dino: standardisation statistics are not finite \(NaN or inf in the "
                                         r"sampled tokens\); rerun it$"):
        compute_standardization(da.from_array(x, chunks=(2, 3, 2)), kind, seed=0, source="dino", remedy="rerun it")
    assert compute_standardization(da.from_array(x, chunks=(2, 3, 2)), "none", seed=0).std == 1.0
