"""The planted factors of the generated image set and how often each value is drawn.

Kept apart from the generator (no imaging or storage dependencies) so that the config can
check ``dataset.synthetic.factor_weights`` before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "cross"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "texture": ("solid", "stripes", "dots", "checker"),
}
"""Values of each categorical factor, in the order used by label columns and coverage arrays."""


def factor_probabilities(weights: Mapping[str, Mapping[str, float]] | None,
                         where: str = "factor_weights") -> dict[str, np.ndarray | None]:
    """Draw probabilities of each factor's values, in :data:`FACTORS` order.

    A factor ``weights`` leaves out gets None (uniform over all its values, drawn exactly as
    the original generator drew it, so default sets stay byte-identical); a factor it names
    draws only the values named, in proportion to their weights.

    Raises:
        ValueError: an unknown factor or value, a negative weight, or weights summing to 0.
    """
    weights = weights or {}
    unknown = sorted(set(weights) - set(FACTORS))
    if unknown:
        raise ValueError(f"{where}: unknown factor(s) {unknown}; choose among {list(FACTORS)}")
    out: dict[str, np.ndarray | None] = {}
    for factor, values in FACTORS.items():
        given = weights.get(factor)
        if given is None:
            out[factor] = None
            continue
        bad = sorted(set(given) - set(values))
        if bad:
            raise ValueError(f"{where}.{factor}: unknown value(s) {bad}; choose among {list(values)}")
        p = np.array([float(given.get(v, 0.0)) for v in values])
        if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError(f"{where}.{factor} = {dict(given)}: weights must be finite, >= 0 and not all 0")
        out[factor] = p / p.sum()
    return out
