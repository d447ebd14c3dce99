"""Baselines: PCA per model on data of known rank, the random dictionary on planted data (chance
recovery, no cross-model reconstruction), and baselines.json in the evaluation folder."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from usae.activations.sources import TokenSource
from usae.config import EvaluateConfig, SAEConfig
from usae.evaluation.baselines import (
    Moments, entropy_summary, pca_basis, pca_reconstruct, random_dictionary,
)
from usae.evaluation.evaluate import blocks, evaluate_sources
from usae.metrics import r2_per_dim
from usae.planted.activations import PlantedConfig, generate_planted
from usae.planted.scoring import evaluate_recovery
from usae.sae.model import USAE

CPU = torch.device("cpu")


def low_rank(n, d, rank, seed, mean_shift=2.0):
    """Tokens mean + z Q^T: Q (d, rank) orthonormal, z with decreasing scales (so PCA's order is known)."""
    gen = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(100 + d).normal(size=(d, rank)))[0]
    z = gen.normal(size=(n, rank)) * np.linspace(3.0, 1.0, rank)
    return (mean_shift + z @ basis.T).astype(np.float32)


def r2(x, x_hat):
    x = torch.as_tensor(x, dtype=torch.float64)
    return float(r2_per_dim((x - x_hat).pow(2).sum(), x.sum(0), x.pow(2).sum(0), x.shape[0]))


def fitted(x):
    moments = Moments.empty(x.shape[1], CPU)
    for part in np.array_split(x, 3):  # streamed in blocks, as evaluation reads them
        moments.update(torch.from_numpy(part))
    return moments


def test_moments_match_numpy():
    x = low_rank(200, 6, 3, seed=0)
    moments = fitted(x)
    np.testing.assert_allclose(moments.mean().numpy(), x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(moments.covariance().numpy(), np.cov(x.T, bias=True), rtol=1e-6, atol=1e-8)


def test_pca_of_known_rank_reconstructs_exactly_at_that_rank_on_new_tokens():
    train, val = low_rank(300, 8, 3, seed=0), low_rank(100, 8, 3, seed=1)
    moments = fitted(train)
    for k, exact in ((3, True), (4, True), (2, False)):
        basis = pca_basis(moments.covariance(), k)
        torch.testing.assert_close(basis.t() @ basis, torch.eye(k, dtype=torch.float64))
        score = r2(val, pca_reconstruct(torch.from_numpy(val), moments.mean(), basis))
        assert score == pytest.approx(1.0, abs=1e-9) if exact else 0.5 < score < 0.99


def test_pca_keeps_the_largest_variance_direction():
    """Known answer: variances 9, 4, 1 along the axes; one component is the first axis, R2 = 9 / 14."""
    gen = np.random.default_rng(0)
    x = np.zeros((4000, 3))
    x[:, :] = gen.normal(size=(4000, 3)) * np.array([3.0, 2.0, 1.0])
    x = torch.from_numpy(x - x.mean(0))
    moments = fitted(x.numpy())
    basis = pca_basis(moments.covariance(), 1)
    assert abs(float(basis[0, 0])) == pytest.approx(1.0, abs=1e-2)
    assert r2(x, pca_reconstruct(x, moments.mean(), basis)) == pytest.approx(9 / 14, abs=0.02)


def test_pca_refuses_more_components_than_dimensions():
    with pytest.raises(ValueError, match=r"1 <= k <= d = 4 components, got k = 5"):
        pca_basis(torch.eye(4, dtype=torch.float64), 5)


def test_random_dictionary_is_the_training_initialisation_with_topk():
    cfg = SAEConfig(n_latents=32, k=4, aux_k=0, activation="batchtopk")
    means = {"a": torch.full((6,), 2.0), "b": torch.zeros(5)}
    model = random_dictionary({"a": 6, "b": 5}, cfg, means, seed=3)
    init = USAE({"a": 6, "b": 5}, cfg, seed=3)
    for name in ("a", "b"):
        torch.testing.assert_close(model.W_dec[name].norm(dim=1), torch.ones(32))
        torch.testing.assert_close(model.W_enc[name], model.W_dec[name].t())
        torch.testing.assert_close(model.W_dec[name], init.W_dec[name])
        torch.testing.assert_close(model.b_dec[name], means[name])
        assert not model.b_enc[name].any()
    assert model.cfg.activation == "topk" and not model.training
    codes = model.encode_sparse("a", torch.randn(7, 6))
    assert codes.indices.shape == (7, 4)  # exactly k a token, not BatchTopK's 2k slots


def test_random_dictionary_on_planted_data_recovers_at_chance():
    """No shared atom matched at cosine >= 0.9, the best cosines those of random directions, and no
    cross-model reconstruction: the floor the trained USAE's recovery is read against."""
    data = generate_planted(PlantedConfig(widths=(64, 96, 128), n_shared=128, n_private=32, n_tokens=4000, seed=0))
    means = {n: torch.from_numpy(data.acts[n].mean(0)) for n in data.names}
    model = random_dictionary(dict(zip(data.names, (64, 96, 128))), SAEConfig(n_latents=512, k=8, aux_k=0), means,
                              seed=0)
    rec = evaluate_recovery(data, model, n_tokens=4000)
    assert all(share == 0.0 for share in rec.shared_recovered.values())
    assert all(cos < 0.6 for cos in rec.shared_mean_cos.values()), rec.shared_mean_cos
    assert rec.n_shared_concepts == 0 and np.isnan(rec.entropy_auroc)
    off = rec.r2[~np.eye(3, dtype=bool)]
    assert (off < 0.05).all(), rec.r2


def test_entropy_summary_known_counts():
    table = pd.DataFrame({"firing_entropy": [np.nan, 0.95, 0.5, 1.0, 0.05, 0.9]})
    summary = entropy_summary(table, 2)
    assert summary["concepts_firing"] == 5 and summary["universal"] == 3
    assert summary["firing_entropy_histogram"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 3]
    assert "universal_energetic" not in summary and "universal_factor" not in summary  # no such columns
    assert entropy_summary(table, 1)["universal"] is None  # firing entropy is undefined for one model


def test_spread_blocks_sample_the_whole_split():
    src = {"a": TokenSource("a", np.arange(100, dtype=np.float32).reshape(100, 1, 1), chunk_rows=10)}
    first = [int(p) for positions, _ in blocks(src, 5, 20) for p in positions]
    spread = [int(p) for positions, _ in blocks(src, 5, 20, spread=True) for p in positions]
    assert first == list(range(20))
    assert len(spread) == 20 and spread[:5] == [0, 1, 2, 3, 4] and spread[-5:] == [95, 96, 97, 98, 99]
    assert len(set(spread)) == 20
    assert [int(p) for positions, _ in blocks(src, 5, None, spread=True) for p in positions] == list(range(100))


def sources(x):
    return {n: TokenSource(n, x[n].reshape(-1, 3, x[n].shape[-1]).copy(), chunk_rows=4) for n in x}


def test_baselines_json_in_the_eval_folder(tmp_path):
    """Rank-2 tokens and k = 2: PCA reconstructs each model exactly and has no cross-model entries;
    the random dictionary's figures and the USAE's own stand in the same table."""
    train = {"a": low_rank(120, 6, 2, seed=0), "b": low_rank(120, 5, 2, seed=1)}
    val = {"a": low_rank(60, 6, 2, seed=2), "b": low_rank(60, 5, 2, seed=3)}
    model = USAE({"a": 6, "b": 5}, SAEConfig(n_latents=16, k=2, aux_k=0), seed=0)
    cfg = EvaluateConfig(top_n=2, batch_images=4, device="cpu")
    metrics = evaluate_sources(model, sources(val), cfg, tmp_path / "eval", device=CPU,
                               baseline_sources=sources(train))
    out = json.loads((tmp_path / "eval" / "baselines.json").read_text())
    rows = {row["method"]: row for row in out["table"]}
    assert list(rows) == ["usae", "pca", "random_dictionary"]
    assert rows["pca"]["r2_self"] == pytest.approx({"a": 1.0, "b": 1.0}, abs=1e-6)
    assert rows["pca"]["r2_cross_min"] is None and rows["pca"]["universal"] is None
    assert out["pca"]["k"] == {"a": 2, "b": 2} and out["pca"]["fit_tokens"] == 60  # as many images as evaluated
    assert rows["usae"]["r2_self"] == {"a": metrics["r2_per_dim"][0][0], "b": metrics["r2_per_dim"][1][1]}
    assert rows["usae"]["r2_cross_min"] == min(metrics["r2_per_dim"][0][1], metrics["r2_per_dim"][1][0])
    rand = out["random_dictionary"]
    assert np.array(rand["r2_per_dim"]).shape == (2, 2) and rand["seed"] == 0
    assert rows["random_dictionary"]["r2_self"]["a"] == rand["r2_per_dim"][0][0] < 1.0
    assert sum(rand["firing_entropy_histogram"]) == rand["concepts_firing"] >= rand["universal"]


def test_no_baselines_without_training_tokens(tmp_path):
    val = {"a": low_rank(30, 6, 2, seed=2), "b": low_rank(30, 5, 2, seed=3)}
    model = USAE({"a": 6, "b": 5}, SAEConfig(n_latents=16, k=2, aux_k=0), seed=0)
    evaluate_sources(model, sources(val), EvaluateConfig(device="cpu"), tmp_path / "eval", device=CPU)
    assert not (tmp_path / "eval" / "baselines.json").exists()
