"""Evaluation on hand-checkable models: perfect reconstruction, the mean, one-model concepts."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from usae.activations.sources import TokenSource
from usae.config import EvaluateConfig, SAEConfig
from usae.evaluation.evaluate import evaluate_sources
from usae.sae.model import USAE

N_IMG, T, D = 10, 3, 4
CPU = torch.device("cpu")


def identity_usae(means):
    """Decoders [I; -I]: TopK_4 of ReLU([x, -x]) keeps |x_i| on the right sign, so decoding is exact."""
    model = USAE({"a": D, "b": D}, SAEConfig(n_latents=2 * D, k=D, aux_k=0))
    rows = torch.cat([torch.eye(D), -torch.eye(D)])
    with torch.no_grad():
        for name in ("a", "b"):
            model.W_dec[name].copy_(rows)
            model.W_enc[name].copy_(rows.t())
            model.b_dec[name].copy_(torch.as_tensor(means, dtype=torch.float32))
    return model


def sources(x, rows=None):
    return {n: TokenSource(n, x.copy(), chunk_rows=4, rows=rows) for n in ("a", "b")}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N_IMG, T, D)) + np.array([1.0, -2.0, 0.5, 3.0])).astype(np.float32)


def run(model, srcs, tmp_path, **cfg):
    cfg = EvaluateConfig(top_n=3, batch_images=4, device="cpu", **cfg)
    metrics = evaluate_sources(model, srcs, cfg, tmp_path / "eval", device=CPU)
    table = pd.read_parquet(tmp_path / "eval" / "concepts.parquet")
    assert metrics == json.loads((tmp_path / "eval" / "metrics.json").read_text())
    return metrics, table


def test_perfect_reconstruction_gives_r2_one_and_full_entropy(data, tmp_path):
    metrics, table = run(identity_usae(data.reshape(-1, D).mean(0)), sources(data), tmp_path)
    np.testing.assert_allclose(metrics["r2_per_dim"], 1.0, atol=1e-6)
    np.testing.assert_allclose(metrics["r2_global_mean"], 1.0, atol=1e-6)
    np.testing.assert_allclose(metrics["mse"], 0.0, atol=1e-10)
    assert metrics["n_tokens"] == N_IMG * T and metrics["n_images"] == N_IMG
    fired = table["fires_a"] > 0
    np.testing.assert_allclose(table.loc[fired, "firing_entropy"], 1.0)  # same tokens in both models
    assert (table["cofires"] == table["fires_a"]).all() and (table.loc[fired, "cfp_a"] == 1.0).all()
    assert metrics["l0"]["a"] <= D
    # Chance, position by position: N * sum_t (F[t, k] / N)^2 over the N images, fires the same in both models,
    # with F[t, k] the images where latent k fires at token t: x_j - mean_j > tau (k = j) or < -tau (k = D + j).
    centred = data - data.reshape(-1, D).mean(0)
    at = np.concatenate([(centred > 0.1).sum(0), (-centred > 0.1).sum(0)], axis=1)  # (T, 2 D)
    np.testing.assert_allclose(table["cofires_chance"], N_IMG * ((at / N_IMG) ** 2).sum(0), rtol=1e-9)
    # Pooled over positions it would be n * (fires_a / n)^2; the data has no positional pattern, yet sampling
    # makes the two differ: the sum over positions is never below the pooled value (Cauchy-Schwarz).
    assert (table["cofires_chance"] >= table["fires_a"] ** 2 / (N_IMG * T) - 1e-9).all()


def test_predicting_the_mean_gives_r2_zero_and_one_model_concepts_entropy_zero(data, tmp_path):
    model = identity_usae(data.reshape(-1, D).mean(0))
    with torch.no_grad():
        model.b_enc["b"].fill_(-1e6)  # model b's encoder never fires: its codes are all zero
    metrics, table = run(model, sources(data), tmp_path)
    r2 = np.array(metrics["r2_per_dim"])
    np.testing.assert_allclose(r2[1], 0.0, atol=1e-6)  # from b: b_dec = per-dimension mean
    np.testing.assert_allclose(r2[0], 1.0, atol=1e-6)
    fired = table["fires_a"] > 0
    assert fired.any() and (table["fires_b"] == 0).all()
    np.testing.assert_allclose(table.loc[fired, "firing_entropy"], 0.0)
    assert (table["cofires"] == 0).all() and metrics["dead"]["b"] == 2 * D
    assert (table["cofires_chance"] == 0).all()  # model b never fires: no co-fire to expect
    # The global-mean form counts the spread between dimension means as explained.
    assert metrics["r2_global_mean"][1][0] > 0.5


def test_counts_top_images_and_heatmaps_match_brute_force(data, tmp_path):
    rows = np.arange(100, 100 + N_IMG)
    model = identity_usae(np.zeros(D))
    metrics, table = run(model, sources(data, rows=rows), tmp_path, tau=0.5)
    z = model.encode("a", torch.from_numpy(data.reshape(-1, D)), standardized=True).detach().numpy()
    z = z.reshape(N_IMG, T, -1)
    np.testing.assert_array_equal(table["fires_a"], (z > 0.5).sum(axis=(0, 1)))
    energy = z.reshape(-1, 2 * D).mean(0) ** 2
    np.testing.assert_allclose(table["energy_a"], energy, rtol=1e-5)
    maps = zarr.open_group(tmp_path / "eval" / "heatmaps.zarr")["a"]
    for concept in range(2 * D):
        per_image = z[:, :, concept].max(axis=1)
        order = np.argsort(-per_image, kind="stable")[:3]
        expected = [rows[i] if per_image[i] > 0 else -1 for i in order]
        assert sorted(table.loc[concept, "top_rows_a"]) == sorted(expected)
        for slot, row in enumerate(maps["rows"][concept]):
            if row >= 0:
                # float16 storage: about 3 significant digits
                np.testing.assert_allclose(maps["maps"][concept, slot], z[row - 100, :, concept], rtol=1e-3, atol=1e-3)


def test_firing_maps_count_the_images_firing_each_concept_at_each_position(data, tmp_path):
    """heatmaps.zarr/<model>/firing_map[k, t] is the brute-force count of images with Z_k > tau at token t; its rows
    sum to the concept's firings, and the attrs give the images it counts over."""
    model = identity_usae(np.zeros(D))
    valid = np.ones(N_IMG, bool)
    valid[3] = False  # an invalid image is not counted
    srcs = {n: TokenSource(n, data.copy(), chunk_rows=4, valid=valid) for n in ("a", "b")}
    _, table = run(model, srcs, tmp_path, tau=0.5)
    z = model.encode("a", torch.from_numpy(data[valid].reshape(-1, D)), standardized=True).detach().numpy()
    expected = (z.reshape(valid.sum(), T, 2 * D) > 0.5).sum(axis=0).T  # (concepts, positions)
    group = zarr.open_group(tmp_path / "eval" / "heatmaps.zarr", mode="r")
    assert group.attrs["n_images"] == N_IMG - 1 and group.attrs["tokens_per_image"] == T
    for name in ("a", "b"):  # both models read the same tokens
        where = group[name]["firing_map"][:]
        assert where.dtype == np.uint32 and where.shape == (2 * D, T)
        np.testing.assert_array_equal(where, expected)
        np.testing.assert_array_equal(where.sum(axis=1), table[f"fires_{name}"])
    assert expected.max() > 1 and (expected == 0).any()  # the known answer is not trivial
    q = expected / np.maximum(expected.sum(axis=1, keepdims=True), 1)  # both models alike: pooled = one model's
    spread = np.exp(-np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0).sum(axis=1)) / T
    fired = expected.sum(axis=1) > 0
    np.testing.assert_allclose(table.loc[fired, "position_spread"], spread[fired], rtol=1e-12)
    assert table.loc[~fired, "position_spread"].isna().all() and (~fired).any() and fired.any()


def test_invalid_images_are_skipped_and_missing_models_refused(data, tmp_path):
    valid = np.ones(N_IMG, bool)
    valid[[2, 7]] = False
    srcs = {n: TokenSource(n, data.copy(), chunk_rows=4, valid=valid) for n in ("a", "b")}
    metrics, _ = run(identity_usae(np.zeros(D)), srcs, tmp_path)
    assert metrics["n_images"] == 8 and metrics["n_tokens"] == 8 * T
    with pytest.raises(ValueError, match=r"no validation tokens for models \['b'\]"):
        evaluate_sources(identity_usae(np.zeros(D)), {"a": srcs["a"]}, EvaluateConfig(device="cpu"),
                         tmp_path / "x", device=CPU)


def test_dead_counts_both_ways_against_brute_force(data, tmp_path):
    """``dead``: never active (Z > 0); ``dead_above_tau``: never firing (Z > tau); each per model."""
    model = identity_usae(np.zeros(D))
    tau = 1.5
    metrics, _ = run(model, sources(data), tmp_path, tau=tau)
    z = model.encode("a", torch.from_numpy(data.reshape(-1, D)), standardized=True).detach().numpy()
    never_active = int((z.max(axis=0) <= 0).sum())
    never_above_tau = int((z.max(axis=0) <= tau).sum())
    assert never_above_tau > never_active  # the data makes the two counts differ
    assert metrics["dead"]["a"] == never_active and metrics["dead_above_tau"]["a"] == never_above_tau
    assert metrics["dead_above_tau_fraction"]["a"] == never_above_tau / (2 * D)
    assert "dead_above_tau" in metrics["definitions"] and "tau" in metrics["definitions"]["dead_above_tau"]


def test_pair_cofires_and_matrix_match_brute_force(data, tmp_path):
    """P[i, j] counts (token, concept) pairs firing in both models; the matrix divides each row by P[i, i]."""
    model = identity_usae(np.zeros(D))
    with torch.no_grad():
        model.b_enc["b"].fill_(-0.8)  # b fires less often than a, on a subset of a's (token, concept) pairs
    metrics, _ = run(model, sources(data), tmp_path, tau=0.5)
    x = torch.from_numpy(data.reshape(-1, D))
    fired = {n: model.encode(n, x, standardized=True).detach().numpy() > 0.5 for n in ("a", "b")}
    both = int((fired["a"] & fired["b"]).sum())
    n_a, n_b = int(fired["a"].sum()), int(fired["b"].sum())
    assert 0 < both < n_a  # the data makes the matrix non-trivial
    assert metrics["pair_cofires"] == [[n_a, both], [both, n_b]]
    np.testing.assert_allclose(metrics["cofire_matrix"], [[1.0, both / n_a], [both / n_b, 1.0]])
    assert "cofire_matrix" in metrics["definitions"]


def test_min_cofires_scales_with_the_tokens_and_says_why_r_is_empty(data, tmp_path):
    """null: ceil(1000 x 30 / 10^7) = 1 co-fire; a fixed 1000 leaves no concept, and the metrics say so."""
    model = identity_usae(np.zeros(D))
    scaled, _ = run(model, sources(data), tmp_path / "scaled")
    assert scaled["min_cofires"] == 1 and "scaled with the tokens" in scaled["min_cofires_rule"]
    assert scaled["n_concepts_min_cofires"] >= 3 and scaled["pearson_min_cofires_note"] is None
    fixed, _ = run(model, sources(data), tmp_path / "fixed", min_cofires=1000)
    assert fixed["min_cofires"] == 1000 and fixed["min_cofires_rule"] == "evaluate.min_cofires = 1,000"
    assert fixed["pearson_log_cofires_log_energy_min_cofires"] is None and fixed["n_concepts_min_cofires"] == 0
    assert fixed["pearson_min_cofires_note"].startswith("only 0 concepts co-fire at least 1,000 times")


def test_one_evaluation_keeps_one_image_layout(data):
    """Chance co-fires are counted per token position: blocks of another number of tokens per image are refused."""
    from usae.evaluation.accumulate import Accumulator

    acc = Accumulator(identity_usae(data.reshape(-1, D).mean(0)), tau=0.1, top_n=2, device=CPU)
    block = {n: torch.from_numpy(data[:2].reshape(-1, D)) for n in ("a", "b")}
    acc.update(block, torch.arange(2), T)
    assert acc.fires_at.shape == (2, T, 2 * D) and int(acc.fires_at.sum()) == int(acc.fires.sum())
    with pytest.raises(ValueError, match=f"blocks of {2 * T} tokens per image after blocks of {T}"):
        acc.update(block, torch.arange(1), 2 * T)
