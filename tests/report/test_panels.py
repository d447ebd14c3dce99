"""Figure panels: the data-driven colour range of the model x model heatmaps, and their annotated cells."""

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from usae.report.panels import colour_range, draw_matrix, empty_panel  # noqa: E402


@pytest.mark.parametrize(("values", "kwargs", "expected"), [
    ([0.77, 0.97, 0.43, 0.891], {}, (0.4, 1.0)),  # floor(0.43 / 0.05) = 8, ceil(0.97 / 0.05) = 20
    ([0.85, 0.9], {}, (0.85, 0.9)),  # ends already on the step stay (no float drift to 0.80)
    ([-0.3, 0.55, 0.62], {}, (0.55, 0.65)),  # below `lowest` (0): grey, not part of the range
    ([-0.3, 0.55], {"lowest": None}, (-0.3, 0.55)),
    ([0.5, 0.5], {}, (0.5, 0.55)),  # one value: one step wide
    ([0.45, 0.55], {"step": 0.1}, (0.4, 0.6)),
    ([math.nan, math.inf], {}, (0.0, 1.0)),  # nothing finite: the plain 0..1
])
def test_colour_range_hand_cases(values, kwargs, expected):
    lo, hi = colour_range(values, **kwargs)
    assert (lo, hi) == pytest.approx(expected) and lo < hi


def test_draw_matrix_writes_every_cell_on_the_range():
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = draw_matrix(ax, np.array([[0.97, 0.77], [np.nan, -0.1]]), ["a", "b"], 0.75, 1.0,
                        text=lambda v: f"{v:.2f}", missing="none")
    assert image.get_clim() == (0.75, 1.0)
    assert [t.get_text() for t in ax.texts] == ["0.97", "0.77", "none", "-0.10"]
    colours = [t.get_color() for t in ax.texts]
    assert colours[0] == "black" and colours[1] == "white" and colours[3] == "black"  # light top, dark bottom, grey under
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_empty_panel_carries_its_note():
    fig = Figure()
    ax = fig.subplots()
    empty_panel(ax, "no data")
    assert [t.get_text() for t in ax.texts] == ["no data"] and list(ax.get_xticks()) == []
