"""The report's Jinja environment (templates in ``templates/``) with the number filters of :mod:`usae.report.numbers`."""

from __future__ import annotations

from pathlib import Path

import jinja2

from usae.report.numbers import column_format, fmt, percent

__all__ = ["TEMPLATES", "environment", "fmt"]

TEMPLATES = Path(__file__).parent / "templates"


def environment() -> jinja2.Environment:
    """A fresh environment over ``templates/``: autoescaped, strict about undefined names.

    Filters: ``fmt`` (one value), ``percent`` (a fraction, one fixed format) and ``column_format`` (a list of a column's values -> a callable
    :class:`usae.report.numbers.NumberFormat`: ``{% set f = values | column_format %}{{ f(v) }}``).
    """
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["column_format"] = column_format
    env.filters["percent"] = percent
    return env
