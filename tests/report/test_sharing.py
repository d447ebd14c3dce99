"""Figures of how the models share the code: co-firing matrix, feature density, energy share."""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from usae.report.sharing import draw_cofire_matrix, draw_density, draw_energy_share, energy_shares  # noqa: E402

COLOURS = {"a": (1.0, 0.0, 0.0), "b": (0.0, 0.0, 1.0)}


def _figure() -> Figure:
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig


def test_energy_shares_hand_example():
    table = pd.DataFrame({"energy_a": [1.0, 0.0, 0.0, math.nan], "energy_b": [3.0, 2.0, 0.0, 1.0]}, index=[5, 6, 7, 8])
    shares = energy_shares(table, ["a", "b"])
    assert list(shares.index) == [5, 6, 7, 8] and list(shares.columns) == ["share_a", "share_b"]
    assert shares.loc[5].tolist() == [0.25, 0.75] and shares.loc[6].tolist() == [0.0, 1.0]
    assert shares.loc[[7, 8]].isna().all().all()  # no energy; an unknown energy


def test_cofire_matrix_leaves_the_diagonal_blank():
    fig = _figure()
    note = draw_cofire_matrix(fig, [[1.0, 0.25], [0.5, 1.0]], ["a", "b"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["all", "25%", "50%", "all"]
    assert note == "Colour range 25% to 50%"
    assert "rerun evaluate" in draw_cofire_matrix(_figure(), None, ["a", "b"])
    assert "needs two models" in draw_cofire_matrix(_figure(), [[1.0]], ["a"])


def test_density_counts_what_it_cannot_draw():
    fig = _figure()
    # 100 tokens: fires 100 -> 0.0, 10 -> -1.0, 1 -> -2.0; 0 never fires (log10 0 = -inf, not drawn).
    note = draw_density(fig, {"a": np.array([100, 10, 1, 0]), "b": np.array([10, 10, 0, 0])}, 100, COLOURS)
    assert note == "Concepts that never fire (not drawn): a 1, b 2"
    drawn = [p for p in fig.axes[0].patches]
    assert len(drawn) == 2  # one outline per model
    assert draw_density(_figure(), {"a": np.zeros(3, dtype=np.int64)}, 100, COLOURS) == "no concept fires"


def test_energy_share_draws_the_top_concepts_by_energy():
    table = pd.DataFrame({"concept": [0, 1, 2, 3], "energy_total": [1.0, 4.0, 0.0, 2.0],
                          "energy_a": [0.5, 1.0, 0.0, 2.0], "energy_b": [0.5, 3.0, 0.0, 0.0]})
    fig = _figure()
    assert draw_energy_share(fig, table, ["a", "b"], COLOURS, top=2) == "Drawn: the 2 concepts with the largest energy_total"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3"]
    widths = [round(bar.get_width(), 6) for bar in ax.patches]
    assert widths == [0.25, 1.0, 0.75, 0.0]  # model a's bars, then model b's, stacked
    assert draw_energy_share(_figure(), None, ["a", "b"], COLOURS) == "no concept table"
