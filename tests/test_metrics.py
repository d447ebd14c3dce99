"""Metrics against hand-computed answers."""

import math

import numpy as np
import pytest
import torch

from usae.metrics import auroc, best_cosine, firing_counts, firing_entropy, match_atoms, position_spread


def test_firing_counts_use_a_strict_threshold():
    codes = torch.tensor([[0.0, 0.1, 0.5], [0.2, 0.05, 0.0], [0.3, 0.2, 0.11]])
    assert firing_counts(codes, 0.1).tolist() == [2, 1, 2]


def test_firing_entropy_known_answers():
    fires = torch.tensor([
        [5, 7, 0, 2, 0],
        [5, 0, 0, 2, 0],
        [5, 0, 0, 0, 0],
    ])
    fe = firing_entropy(fires)
    assert abs(fe[0].item() - 1.0) < 1e-12  # fires equally in every model
    assert fe[1].item() == 0.0 and math.copysign(1.0, fe[1].item()) == 1.0  # fires in one model only: +0, not -0
    assert math.isnan(fe[2].item()) and math.isnan(fe[4].item())  # never fires
    assert abs(fe[3].item() - math.log(2) / math.log(3)) < 1e-12  # p = (1/2, 1/2, 0)


def test_position_spread_known_answers():
    """exp(entropy over positions) / T: one position 1/T, all alike 1, two alike 2/T, never NaN; counts' scale is
    irrelevant."""
    fires_at = torch.tensor([  # T = 4 positions (rows) x 5 concepts
        [9, 3, 5, 0, 1],
        [0, 3, 5, 0, 1],
        [0, 3, 0, 0, 2],
        [0, 3, 0, 0, 0],
    ])
    spread = position_spread(fires_at)
    assert spread[0].item() == pytest.approx(0.25) and spread[1].item() == pytest.approx(1.0)
    assert spread[2].item() == pytest.approx(0.5) and math.isnan(spread[3].item())
    q = np.array([0.25, 0.25, 0.5])  # by hand: exp(-(2 * 0.25 log 0.25 + 0.5 log 0.5)) / 4 = 2^1.5 / 4
    assert spread[4].item() == pytest.approx(math.exp(-(q * np.log(q)).sum()) / 4) == pytest.approx(2 ** 1.5 / 4)
    torch.testing.assert_close(position_spread(7 * fires_at), spread, equal_nan=True)


def test_firing_entropy_is_scale_free_and_bounded():
    fires = torch.randint(0, 50, (4, 100))
    fe = firing_entropy(fires)
    torch.testing.assert_close(firing_entropy(fires * 7), fe, equal_nan=True)
    finite = fe[~fe.isnan()]
    assert (finite >= 0).all() and (finite <= 1 + 1e-12).all()


def test_r2_forms_on_a_hand_example():
    from usae.metrics import r2_global_mean, r2_per_dim

    a = torch.tensor([[1.0, 10.0], [3.0, 14.0]])  # column means 2 and 12; global mean 7
    sum_x, sum_x2 = a.sum(0), a.pow(2).sum(0)
    # Per-dimension spread: (1+1) + (4+4) = 10. Global spread: 36+9+16+49 = 110.
    sse = torch.tensor(5.0)
    assert r2_per_dim(sse, sum_x, sum_x2, 2).item() == 0.5
    assert abs(r2_global_mean(sse, sum_x, sum_x2, 2).item() - (1 - 5 / 110)) < 1e-12
    perfect, mean_only = torch.tensor(0.0), torch.tensor(10.0)
    assert r2_per_dim(perfect, sum_x, sum_x2, 2).item() == 1.0
    assert r2_per_dim(mean_only, sum_x, sum_x2, 2).item() == 0.0  # predicting each dimension's mean


def test_cofire_proportion_energy_and_pearson():
    from usae.metrics import cofire_proportion, concept_energy, log_log_pearson

    cfp = cofire_proportion(torch.tensor([2, 0, 1]), torch.tensor([[4, 0, 1], [2, 5, 3]]))
    assert cfp[0, 0].item() == 0.5 and math.isnan(cfp[0, 1].item()) and cfp[0, 2].item() == 1.0
    assert cfp[1].tolist()[0] == 1.0 and cfp[1, 1].item() == 0.0 and abs(cfp[1, 2].item() - 1 / 3) < 1e-12
    energy = concept_energy(torch.tensor([0.5, 2.0]), torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    torch.testing.assert_close(energy, torch.tensor([0.25, 4.0], dtype=torch.float64))
    x = torch.tensor([1.0, 10.0, 100.0, 0.0, 1000.0])
    assert abs(log_log_pearson(x, x.pow(2)).item() - 1.0) < 1e-12  # log-linear: r = 1
    assert abs(log_log_pearson(x, 1 / x.clamp_min(1)).item() + 1.0) < 1e-12
    assert math.isnan(log_log_pearson(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item())


def test_pairwise_cofire_share_hand_example():
    from usae.metrics import pairwise_cofire_share

    # Fired (token, concept) pairs over 3 tokens x 2 concepts: model a {(0,0), (1,0), (2,1)},
    # model b {(0,0), (2,1)}, model c none. P[a,b] = 2 shared pairs; P[a,a] = 3, P[b,b] = 2.
    pairs = torch.tensor([[3, 2, 0], [2, 2, 0], [0, 0, 0]])
    share = pairwise_cofire_share(pairs)
    assert share[0].tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert share[1].tolist() == pytest.approx([1.0, 1.0, 0.0])  # every firing of b is matched by a
    assert torch.isnan(share[2]).all()  # c never fires


def test_energy_share_hand_example():
    from usae.metrics import energy_share

    energy = torch.tensor([[1.0, 0.0, 0.0], [3.0, 2.0, 0.0]])  # concept 0: 1/4 vs 3/4; concept 1: b alone
    share = energy_share(energy)
    assert share[:, 0].tolist() == [0.25, 0.75] and share[:, 1].tolist() == [0.0, 1.0]
    assert torch.isnan(share[:, 2]).all()  # no energy anywhere
    torch.testing.assert_close(share[:, :2].sum(dim=0), torch.ones(2, dtype=torch.float64))


def test_log_firing_frequency_hand_example():
    from usae.metrics import log_firing_frequency

    density = log_firing_frequency(torch.tensor([[1000, 10, 0], [1, 100, 1000]]), 1000)
    assert density[0].tolist()[:2] == pytest.approx([0.0, -2.0]) and density[0, 2].item() == -math.inf
    assert density[1].tolist() == pytest.approx([-3.0, -1.0, 0.0])


def test_firing_entropy_needs_two_models():
    assert torch.isnan(firing_entropy(torch.tensor([[3, 0, 1]]))).all()


def test_hungarian_consistency_known_answers():
    from usae.metrics import hungarian_consistency

    eye = torch.eye(4)
    share, matched = hungarian_consistency(eye, eye[[2, 0, 3, 1]])  # a permutation: every atom found
    assert share == 1.0 and torch.allclose(matched, torch.ones(4, dtype=torch.float64))
    # One-to-one: two USAE atoms equal to the same solo atom cannot both match it.
    usae = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    solo = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    share, matched = hungarian_consistency(usae, solo)
    assert share == 0.5 and sorted(matched.tolist()) == [0.0, 1.0]
    share, matched = hungarian_consistency(torch.eye(3), torch.eye(3)[:2])  # more USAE atoms than solo ones
    assert share == 2 / 3 and int(torch.isnan(matched).sum()) == 1


def test_best_cosine_hand_cases():
    eye = np.eye(2)
    np.testing.assert_allclose(best_cosine(eye, eye), [1.0, 1.0])
    np.testing.assert_allclose(best_cosine(eye[:1], eye[1:]), [0.0], atol=1e-12)
    np.testing.assert_allclose(best_cosine(eye[:1], -eye[:1]), [-1.0])  # no abs is taken
    # Best over rows is the max (signed): +x beats -x; scaling does not matter.
    idx, cos = match_atoms(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[-3.0, 0.0], [0.0, 5.0], [1.0, 1.0]]))
    np.testing.assert_array_equal(idx, [2, 1])
    np.testing.assert_allclose(cos, [1 / np.sqrt(2), 1.0])


def test_auroc_hand_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # One tie between a positive and a negative counts 1/2: pairs (0.5>0.2, 0.5=0.5) -> 1.5/2.
    assert auroc([0.2, 0.5, 0.5], [False, False, True]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in s[y] for q in s[~y]])
    assert auroc(s, y) == pytest.approx(brute)
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc([0.1, 0.2], [1, 1])


def test_binned_auroc_hand_cases():
    from usae.metrics import binned_auroc

    # Two concepts, three bins in increasing score order; 2 positives, 3 negatives.
    pos = np.array([[0, 0, 2], [1, 1, 0]])
    neg = np.array([[3, 0, 0], [1, 1, 1]])
    # Concept 0: every positive above every negative. Concept 1: pos in bin 0 ties 1 neg (1/2);
    # pos in bin 1 beats 1 neg and ties 1 (1.5): (0.5 + 1.5) / 6.
    np.testing.assert_allclose(binned_auroc(pos, neg, 2, 3), [1.0, 2 / 6])
    scores, labels = np.array([0.1, 0.2, 0.2, 0.7, 0.9]), np.array([0, 1, 0, 0, 1], dtype=bool)
    bins = np.searchsorted(np.unique(scores), scores)  # one bin per distinct score: exact
    hist = [np.bincount(bins[mask], minlength=4)[None] for mask in (labels, ~labels)]
    assert binned_auroc(*hist, 2, 3)[0] == pytest.approx(auroc(scores, labels))
