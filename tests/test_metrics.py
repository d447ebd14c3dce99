"""Metrics against hand-computed answers."""

import math

import torch

from usae.metrics import firing_counts, firing_entropy


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
    assert fe[1].item() == 0.0  # fires in one model only
    assert math.isnan(fe[2].item()) and math.isnan(fe[4].item())  # never fires
    assert abs(fe[3].item() - math.log(2) / math.log(3)) < 1e-12  # p = (1/2, 1/2, 0)


def test_firing_entropy_is_scale_free_and_bounded():
    fires = torch.randint(0, 50, (4, 100))
    fe = firing_entropy(fires)
    torch.testing.assert_close(firing_entropy(fires * 7), fe, equal_nan=True)
    finite = fe[~fe.isnan()]
    assert (finite >= 0).all() and (finite <= 1 + 1e-12).all()
