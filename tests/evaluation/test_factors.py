"""Tests of per-token factor labels and the streaming per-concept factor AUROC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from usae.planted.images import FACTORS, generate_images, load_object_map, patch_factor_coverage
from usae.evaluation.factors import FactorAUROC, factor_labels, factor_value_names
from usae.metrics import auroc


def _sparse(rng: np.random.Generator, n: int, m: int, k: int, p_zero: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Random top-k style codes: distinct indices per token, some values exactly 0."""
    idx = np.argsort(rng.random((n, m)), axis=1)[:, :k]
    val = rng.lognormal(0.0, 1.0, (n, k)) * (rng.random((n, k)) > p_zero)
    return val.astype(np.float32), idx


def _dense(val: np.ndarray, idx: np.ndarray, m: int) -> np.ndarray:
    out = np.zeros((val.shape[0], m))
    np.put_along_axis(out, idx, val, axis=1)
    return out


def _exact(dense: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.full((dense.shape[1], labels.shape[1]), np.nan)
    for v in range(labels.shape[1]):
        if labels[:, v].any() and not labels[:, v].all():
            for c in range(dense.shape[1]):
                out[c, v] = auroc(dense[:, c], labels[:, v])
    return out


def test_matches_exact_within_bound() -> None:
    rng = np.random.default_rng(0)
    n, m, k, nv = 400, 12, 4, 5
    val, idx = _sparse(rng, n, m, k)
    labels = rng.random((n, nv)) < np.array([0.1, 0.3, 0.5, 0.02, 0.0])
    acc = FactorAUROC(m, nv, n_bins=64)
    acc.update(val, idx, labels)
    got, exact, bound = acc.result(), _exact(_dense(val, idx, m), labels), acc.tie_bound()
    assert np.array_equal(np.isnan(got), np.isnan(exact)) and np.isnan(got[:, 4]).all()
    ok = ~np.isnan(exact)
    assert np.all(np.abs(got - exact)[ok] <= bound[ok] + 1e-12)
    assert np.max(np.abs(got - exact)[ok]) < 1e-2


def test_exact_when_positive_values_in_distinct_bins() -> None:
    n, m, nv = 50, 3, 2
    rng = np.random.default_rng(1)
    # concept 0: values 10**(j/10), one per log bin when a bin spans < 10**(1/10); concept 1: all zero
    val = np.zeros((n, 2), dtype=np.float64)
    val[::2, 0] = 10.0 ** (np.arange(0, n, 2) / 20.0 - 1.0)
    idx = np.tile([0, 1], (n, 1))
    labels = rng.random((n, nv)) < 0.4
    acc = FactorAUROC(m, nv, n_bins=256, max_value=100.0, decades=4.0)
    acc.update(val, idx, labels)
    assert np.all(acc.tie_bound() == 0.0)
    np.testing.assert_allclose(acc.result(), _exact(_dense(val, idx, m), labels), atol=1e-12)
    np.testing.assert_array_equal(acc.result()[1:], 0.5)  # never fires (1: value 0 only, 2: absent)


def test_planted_detector() -> None:
    rng = np.random.default_rng(2)
    n, m, k, nv = 600, 8, 3, 4
    labels = rng.random((n, nv)) < 0.3
    val, idx = _sparse(rng, n, m, k, p_zero=0.5)
    idx = np.where(idx == 3, 7, idx)  # concept 3 only where planted below
    val[idx == 7] = 0.0
    idx[labels[:, 1], 0], val[labels[:, 1], 0] = 3, rng.uniform(0.5, 2.0, labels[:, 1].sum())
    acc = FactorAUROC(m, nv)
    acc.update(val, idx, labels)
    auc = acc.result()
    assert auc[3, 1] == 1.0
    assert np.all(np.abs(auc[3, [0, 2, 3]] - 0.5) < 0.1)
    np.testing.assert_array_equal(auc[7], 0.5)  # never fires
    best_v, best_auc = acc.best()
    assert best_v[3] == 1 and best_auc[3] == 1.0 and best_v[7] == 0 and best_auc[7] == 0.5


def test_all_zero_and_empty_classes() -> None:
    acc = FactorAUROC(4, 3)
    labels = np.array([[True, False, True]] * 3 + [[False, False, True]] * 2)
    acc.update(np.zeros((5, 2)), np.tile([0, 1], (5, 1)), labels)
    auc = acc.result()
    np.testing.assert_array_equal(auc[:, 0], 0.5)
    assert np.isnan(auc[:, 1:]).all() and np.isnan(acc.tie_bound()[:, 1:]).all()
    best_v, best_auc = acc.best()
    np.testing.assert_array_equal(best_v, 0)
    np.testing.assert_array_equal(best_auc, 0.5)
    empty = FactorAUROC(2, 2)
    assert np.isnan(empty.result()).all() and np.array_equal(empty.best()[0], [-1, -1])


@pytest.mark.parametrize("max_value", [5.0, None])
def test_streaming_equals_one_batch(max_value: float | None) -> None:
    rng = np.random.default_rng(3)
    n, m, k, nv = 300, 10, 4, 6
    val, idx = _sparse(rng, n, m, k)
    labels = rng.random((n, nv)) < 0.25
    one = FactorAUROC(m, nv, max_value=max_value)
    one.update(val, idx, labels)
    many = FactorAUROC(m, nv, max_value=max_value)
    for s, e in [(0, 1), (1, 70), (70, 70), (70, 211), (211, n)]:
        many.update(val[s:e], idx[s:e], labels[s:e])
    exact = _exact(_dense(val, idx, m), labels)
    if max_value is not None:
        np.testing.assert_array_equal(many.pos, one.pos)
        np.testing.assert_array_equal(many.every, one.every)
        np.testing.assert_array_equal(many.result(), one.result())
    for acc in (one, many):  # adaptive ranges differ with batching, but stay within the bound
        assert np.all(np.abs(acc.result() - exact) <= acc.tie_bound() + 1e-12)


def test_update_rejects_bad_input() -> None:
    acc = FactorAUROC(4, 2)
    with pytest.raises(ValueError):
        acc.update(np.ones((3, 2)), np.zeros((3, 2), dtype=int), np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError):
        acc.update(-np.ones((3, 2)), np.zeros((3, 2), dtype=int), np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError):
        acc.update(np.ones((3, 2)), np.full((3, 2), 4), np.zeros((3, 2), dtype=bool))


def test_factor_labels_match_coverage(tmp_path: Path) -> None:
    s = generate_images(tmp_path / "set", n_images=3, image_size=64, seed=0)
    objects_path = s.object_map_path.parent / "objects.parquet"
    grid, thr = 8, 0.3
    order = np.array([2, 0, 2, 1])
    out = factor_labels(s.object_map_path, objects_path, order, grid, threshold=thr, chunk_images=3)
    names = [f"{f}={v}" for f, vals in FACTORS.items() for v in vals]
    assert out.names == names == factor_value_names() and len(names) == 15
    assert "shape=circle" in names and "colour=red" in names and "texture=stripes" in names
    assert out.labels.shape == (4 * grid * grid, 15) and out.labels.dtype == bool
    cover = patch_factor_coverage(np.asarray(load_object_map(s.object_map_path)), pd.read_parquet(objects_path), grid)
    full = np.concatenate([cover[f] for f in FACTORS], axis=-1) >= thr  # (3, grid, grid, 15)
    for i, img in enumerate(order):
        for r in range(grid):
            for c in range(grid):
                np.testing.assert_array_equal(out.labels[(i * grid + r) * grid + c], full[img, r, c])
    assert out.labels.any() and not out.labels.all()
    one_by_one = factor_labels(s.object_map_path, objects_path, order, grid, threshold=thr, chunk_images=1)
    np.testing.assert_array_equal(one_by_one.labels, out.labels)
    with pytest.raises(ValueError):
        factor_labels(s.object_map_path, objects_path, np.array([3]), grid)


@pytest.mark.parametrize(("score", "label"), [
    (0.95, "colour=red"), (0.75, "colour=red"),  # told apart from chance: named
    (0.74, None), (0.503, None), (0.26, None),  # near chance: no label
    (0.25, "background"), (0.1, "background"),  # even the best factor is below chance: fires off objects
    (float("nan"), None),
])
def test_factor_label_only_where_it_means_something(score: float, label: str | None) -> None:
    from usae.evaluation.run import factor_label

    assert factor_label(["colour=red", "shape=circle"], 0, score, min_auroc=0.75) == label
    assert factor_label(["colour=red"], -1, 0.9, min_auroc=0.75) is None  # no factor scored
