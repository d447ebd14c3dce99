"""The report's Jinja environment (templates in ``templates/``) and its number formatter, the ``fmt`` filter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

TEMPLATES = Path(__file__).parent / "templates"


def fmt(value: Any, digits: int = 3) -> str:
    """A number for humans, as every page of the report shows it.

    ``-`` for a missing value (None, NaN, NA, infinity); integers with thousands separators
    (``12,345``); other numbers with ``digits`` decimals, except non-zero values smaller than
    ``10**-digits`` in magnitude, which get ``digits`` significant digits (``4.2e-05``, not
    ``0.000``).

    Args:
        value: A Python or NumPy number, or None.
        digits: Decimals (and significant digits for tiny values).
    """
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if value is None or pd.isna(value):
        return "-"
    number = float(value)
    if not math.isfinite(number):
        return "-"
    return f"{number:.{digits}g}" if 0 < abs(number) < 10 ** -digits else f"{number:.{digits}f}"


def environment() -> jinja2.Environment:
    """A fresh environment over ``templates/``: autoescaped, strict about undefined names, with ``fmt``."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    return env
