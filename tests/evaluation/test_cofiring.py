"""The co-fire threshold scaled with the evaluation tokens, and the thresholded Pearson r with its reason when empty."""

import math

import pytest
import torch

from usae.evaluation.cofiring import busy_pearson, cofire_summary, resolve_min_cofires, scaled_min_cofires


@pytest.mark.parametrize(("n_tokens", "expected"), [
    (10_000_000, 1000), (6_125, 1), (1, 1), (250_000, 25), (250_001, 26), (100_000_000, 10_000),
])
def test_scaled_min_cofires_is_one_in_ten_thousand_tokens(n_tokens, expected):
    assert scaled_min_cofires(n_tokens) == expected


def test_resolve_keeps_a_set_threshold_and_states_the_rule():
    assert resolve_min_cofires(0, 6_125) == (0, "evaluate.min_cofires = 0")
    value, rule = resolve_min_cofires(None, 6_125)
    assert value == 1 and rule.startswith("scaled with the tokens: max(1, ceil(1,000 x 6,125 / 10,000,000)) = 1")


def test_busy_pearson_hand_example():
    cofires = torch.tensor([10, 100, 1000, 5, 0])
    energy = torch.tensor([1.0, 100.0, 10000.0, 3.0, 7.0])  # log-linear over the first three: r = 1
    full = busy_pearson(cofires, energy, 10)
    assert full["r"] == pytest.approx(1.0) and full["n_concepts"] == 3 and full["note"] is None
    few = busy_pearson(cofires, energy, 100)
    assert math.isnan(few["r"]) and few["n_concepts"] == 2
    assert few["note"] == "only 2 concepts co-fire at least 100 times (with energy > 0); Pearson r needs at least 3"
    one = busy_pearson(cofires, energy, 1000)
    assert one["note"].startswith("only 1 concept co-fires at least 1,000 times")


def test_busy_pearson_says_when_r_is_undefined():
    flat = busy_pearson(torch.tensor([50, 50, 50]), torch.tensor([1.0, 2.0, 3.0]), 10)
    assert math.isnan(flat["r"]) and flat["note"] == ("the 3 concepts with at least 10 co-fires all have the "
                                                       "same co-fires or energy")


def test_cofire_summary_entries():
    out = cofire_summary(torch.tensor([[4, 1], [1, 2]]), torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0]),
                         None, 100)
    assert out["cofire_matrix"] == [[1.0, 0.25], [0.5, 1.0]] and out["pair_cofires"] == [[4, 1], [1, 2]]
    assert out["min_cofires"] == 1 and out["n_concepts_min_cofires"] == 3 and out["pearson_min_cofires_note"] is None
