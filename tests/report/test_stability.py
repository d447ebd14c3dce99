"""Training stability from a training log: known verdicts for finite, rising and dying runs."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd

from usae.report.stability import MAX_DEAD, training_stability


def _log(loss_a: list[float], loss_b: list[float] | None = None, dead_b: float = 0.05) -> pd.DataFrame:
    n = len(loss_a)
    return pd.DataFrame({"step": np.arange(n) * 10 + 9, "l0": 4.0, "loss_a": loss_a,
                         "loss_b": loss_b if loss_b is not None else [1.0] * n, "dead_a": 0.0, "dead_b": dead_b})


def test_a_falling_loss_with_live_latents_is_stable() -> None:
    got = training_stability(_log([4.0, 3.0, 2.0, 1.0, 0.9, 0.8, 0.8, 0.7, 0.7, 0.7]), ["a", "b"])
    assert got.stable is True and got.reasons == [] and got.verdict == "stable"
    assert got.rise == 0.0 and got.non_finite == 0 and got.dead_at_end == {"a": 0.0, "b": 0.05}


def test_a_late_rise_of_the_smoothed_loss_is_unstable() -> None:
    # 10 rows: a trailing mean over 1 row; summed loss falls to 2.0 (1 + 1) and ends at 3.0 (2 + 1): 50% above
    got = training_stability(_log([4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]), ["a", "b"])
    assert got.stable is False and got.rise == 0.5
    assert got.verdict == "unstable: final loss 50% above its minimum"
    # 20 rows: trailing mean over 2 rows, so one high last row counts half: (2 + 3) / 2 / 2 - 1 = 25%
    got = training_stability(_log([1.0] * 19 + [2.0]), ["a", "b"])
    assert got.rise == 0.25 and not got.stable


def test_noise_within_the_tolerance_is_stable() -> None:
    got = training_stability(_log([2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.1]), ["a", "b"])
    assert got.stable is True and got.rise == pytest.approx(0.05)


def test_nan_and_dead_models_are_named() -> None:
    got = training_stability(_log([1.0, np.nan, 0.5], dead_b=0.5), ["a", "b"])
    assert got.stable is False and got.non_finite == 1 and got.rise is None
    assert got.reasons == ["1 NaN/inf value in the log", "b ends with 50% dead"]
    log = _log([1.0, 0.5, 0.5], dead_b=MAX_DEAD)  # at the limit: still alive
    log.loc[1, "l0"] = np.inf
    assert training_stability(log, ["a", "b"]).reasons == ["1 NaN/inf value in the log"]


def test_without_a_log_nothing_is_judged() -> None:
    for log in (None, pd.DataFrame()):
        got = training_stability(log, ["a"])
        assert got.stable is None and got.verdict == "no training log"
