"""The report's number formats: one value (fmt), one column (column_format), percentages; never a negative zero."""

import math

import numpy as np
import pytest

from usae.report.numbers import NumberFormat, column_format, fmt, percent


@pytest.mark.parametrize(("value", "text"), [
    (-0.0, "0.000"), (np.float32(-0.0), "0.000"), (np.int64(0), "0"), (-0.0004, "-0.0004"), (-1.5, "-1.500"),
])
def test_fmt_never_writes_a_negative_zero(value, text):
    assert fmt(value) == text


@pytest.mark.parametrize(("fmt_", "value", "text"), [
    (NumberFormat("int"), 12345.0, "12,345"), (NumberFormat("int"), -0.2, "0"),
    (NumberFormat("fixed", 3), 0.5, "0.500"), (NumberFormat("fixed", 3), -0.0001, "0.000"),
    (NumberFormat("fixed", 1), 32.0, "32.0"),
    (NumberFormat("sci", 3), 6.287, "6.29e+00"), (NumberFormat("sci", 3), 4.36e-05, "4.36e-05"),
    (NumberFormat("sci", 3), -0.0, "0.00e+00"), (NumberFormat("sci", 3), 0.0, "0.00e+00"),
    (NumberFormat("percent", 1), 0.0291, "2.9%"), (NumberFormat("percent", 0), 0.675, "68%"),
    (NumberFormat("percent", 1), -1e-9, "0.0%"),
    (NumberFormat("fixed", 3), None, "-"), (NumberFormat("sci", 3), math.nan, "-"), (NumberFormat("int"), math.inf, "-"),
])
def test_number_format_writes_each_kind(fmt_, value, text):
    assert fmt_(value) == text


def test_column_format_picks_one_format_for_the_whole_column():
    assert column_format([3, np.int64(1_000), None]) == NumberFormat("int")
    # Fixed shows every non-zero value with a significant digit: 0.001 is the smallest it may hold.
    assert column_format([0.504, 0.001, 0.0, math.nan]) == NumberFormat("fixed", 3)
    # 4.36e-05 would read 0.000 beside 6.287: the whole column goes scientific.
    sci = column_format([6.287, 4.36e-05, None])
    assert sci == NumberFormat("sci", 3) and [sci(v) for v in (6.287, 4.36e-05)] == ["6.29e+00", "4.36e-05"]
    assert column_format([0.05, 2.0], digits=1) == NumberFormat("sci", 1)
    assert column_format([1, 2.5]) == NumberFormat("fixed", 3)  # one float makes the column real-valued
    assert column_format([None, math.nan]) == NumberFormat("fixed", 3)
    assert column_format([True, False]) == NumberFormat("fixed", 3)  # booleans are not counts


def test_percent_is_one_fixed_format():
    assert [percent(v) for v in (0.0291, 0.0004, 1.0, None)] == ["2.9%", "0.0%", "100.0%", "-"]
    assert NumberFormat("percent", 1).to_json() == {"kind": "percent", "digits": 1}
