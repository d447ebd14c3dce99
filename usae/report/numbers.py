"""How the report writes numbers: :func:`fmt` for a single value, :func:`column_format` for a table column.

Every table of the report (the Jinja pages and, through ``data/meta.js``, the explorer's table)
formats a column with one :class:`NumberFormat`, so a column never mixes ``0.504`` with ``4.4e-05``.
No format ever writes a negative zero (``-0.000``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

MISSING = "-"
"""What a missing value (None, NaN, NA, infinity) reads as."""


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing or not finite."""
    if value is None or isinstance(value, str) or pd.isna(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _unsigned_zero(text: str) -> str:
    """Drop the sign of a text that shows zero (``-0.000`` -> ``0.000``, ``-0.00e+00`` -> ``0.00e+00``)."""
    mantissa = text.lstrip("-").split("e")[0]
    return text.lstrip("-") if text.startswith("-") and not mantissa.strip("0.,") else text


def fmt(value: Any, digits: int = 3) -> str:
    """A number for humans, as every page of the report shows a single value.

    ``-`` for a missing value (None, NaN, NA, infinity); integers with thousands separators
    (``12,345``); other numbers with ``digits`` decimals, except non-zero values smaller than
    ``10**-digits`` in magnitude, which get ``digits`` significant digits (``4.2e-05``, not
    ``0.000``). Zero never carries a sign (``-0.0`` reads ``0.000``).

    Args:
        value: A Python or NumPy number, or None.
        digits: Decimals (and significant digits for tiny values).
    """
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    number = _number(value)
    if number is None:
        return MISSING
    text = f"{number:.{digits}g}" if 0 < abs(number) < 10 ** -digits else f"{number:.{digits}f}"
    return _unsigned_zero(text)


@dataclass(frozen=True)
class NumberFormat:
    """One way of writing every number of a column.

    Attributes:
        kind: ``int`` (thousands separators), ``fixed`` (``digits`` decimals), ``sci``
            (``digits`` significant digits, ``6.29e+00``) or ``percent`` (a fraction times 100
            with ``digits`` decimals and ``%``).
        digits: Decimals (``fixed``, ``percent``) or significant digits (``sci``); unused for ``int``.
    """

    kind: Literal["int", "fixed", "sci", "percent"]
    digits: int = 3

    def __call__(self, value: Any) -> str:
        """``value`` in this format; ``-`` when missing."""
        number = _number(value)
        if number is None:
            return MISSING
        if self.kind == "int":
            return _unsigned_zero(f"{round(number):,}")
        if self.kind == "sci":
            return _unsigned_zero(f"{number:.{max(self.digits - 1, 0)}e}")
        if self.kind == "percent":
            return _unsigned_zero(f"{100 * number:.{self.digits}f}") + "%"
        return _unsigned_zero(f"{number:.{self.digits}f}")

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "digits"}``, what ``static/explorer.js`` applies to a column."""
        return {"kind": self.kind, "digits": self.digits}


def column_format(values: Iterable[Any], digits: int = 3) -> NumberFormat:
    """The one format of a table column, chosen from all its values.

    ``int`` when every present value is an integer type (counts); else ``fixed`` with
    ``digits`` decimals when that shows every non-zero value with at least one significant
    digit (smallest non-zero magnitude >= ``10**-digits``); else ``sci`` with ``digits``
    significant digits for the whole column. Missing values do not count.

    Args:
        values: The column's values (numbers, None, NaN).
        digits: Decimals of ``fixed`` and significant digits of ``sci``.
    """
    present = [v for v in values if _number(v) is not None]
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return NumberFormat("int", digits)
    nonzero = [abs(float(v)) for v in present if float(v) != 0.0]
    if nonzero and min(nonzero) < 10 ** -digits:
        return NumberFormat("sci", digits)
    return NumberFormat("fixed", digits)


def percent(fraction: Any, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals (``0.0291`` -> ``2.9%``), the same format for every
    value, so a column of percentages always lines up; ``-`` when missing."""
    return NumberFormat("percent", digits)(fraction)
