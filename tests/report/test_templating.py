"""The report's one number formatter (the Jinja ``fmt`` filter) and its environment."""

import math

import numpy as np
import pandas as pd
import pytest

from usae.report.templating import environment, fmt


@pytest.mark.parametrize(("value", "digits", "text"), [
    (None, 3, "-"), (math.nan, 3, "-"), (np.float32("nan"), 3, "-"), (math.inf, 3, "-"), (pd.NA, 3, "-"),
    (12345, 3, "12,345"), (np.int64(-7), 1, "-7"), (0.0, 3, "0.000"), (1.23456, 3, "1.235"), (0.25, 1, "0.2"),
    (4.2e-05, 3, "4.2e-05"), (-0.0004, 3, "-0.0004"), (0.001, 3, "0.001"), (np.float32(0.5), 1, "0.5"),
])
def test_fmt(value, digits, text):
    assert fmt(value, digits) == text


def test_fmt_is_the_environments_filter():
    env = environment()
    assert env.from_string("{{ x | fmt }} {{ (100 * y) | fmt(1) }}").render(x=1234, y=0.1234) == "1,234 12.3"


def test_column_and_percent_filters():
    env = environment()
    page = env.from_string("{% set f = xs | column_format %}{% for x in xs %}{{ f(x) }} {% endfor %}{{ p | percent }}")
    assert page.render(xs=[6.287, 4.4e-05, None], p=0.0291) == "6.29e+00 4.40e-05 - 2.9%"
    assert env.from_string("{{ x | fmt }}").render(x=-0.0) == "0.000"
