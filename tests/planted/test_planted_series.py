"""Depth and model-count series of planted settings: known answers, nested models, errors; and the proof that
the comparison of runs recovers what was planted (universal concepts by "layer" follow the shared share; the
shared atoms are recovered for every number of models)."""

from __future__ import annotations

import numpy as np
import pytest

from usae.planted.activations import PlantedConfig, generate_planted
from usae.planted.series import depth_series, models_series

BASE = PlantedConfig(widths=(24, 32, 28, 20, 36), n_shared=24, n_private=24, n_tokens=500, active_shared=2.0,
                     active_private=2.0, seed=0)


def test_depth_series_plants_the_shares_and_keeps_every_concept_as_busy() -> None:
    series = depth_series(BASE, (0.0, 0.25, 0.5, 1.0))
    assert [(c.n_shared, c.n_private) for c in series] == [(0, 48), (12, 36), (24, 24), (48, 0)]
    for c in series:  # 4 expected active concepts per token, 1 in 12 for each concept
        assert c.active_shared + c.active_private == pytest.approx(4.0)
        assert c.active_shared == pytest.approx(c.n_shared / 12) and c.widths == BASE.widths
    counts = [generate_planted(c).shared_codes.counts().mean() for c in series[1:3]]
    assert counts == pytest.approx([1.0, 2.0], abs=0.15)


def test_models_series_nests_the_models() -> None:
    two, five = (generate_planted(c) for c in models_series(BASE, (2, 5)))
    assert two.names == ("m0", "m1") and len(five.names) == 5
    for name in two.names:  # a model added leaves the others' data as it was
        np.testing.assert_array_equal(two.acts[name], five.acts[name])
        np.testing.assert_array_equal(two.shared_atoms[name], five.shared_atoms[name])


@pytest.mark.parametrize(("call", "message"), [
    (lambda: depth_series(BASE, ()), "at least one share"),
    (lambda: depth_series(BASE, (0.5, 1.2)), r"shares \[1.2\] are outside"),
    (lambda: models_series(BASE, (1, 3)), r"counts \[1, 3\] must each be in 2..5"),
    (lambda: models_series(BASE, (6,)), "2..5"),
])
def test_series_refuse_impossible_settings(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
