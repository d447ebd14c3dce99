"""Whether a run's training was stable, read from its training log (``train_log.parquet``).

A run is **stable** when all three hold:

1. **Finite:** no NaN or infinity in any logged loss, dead fraction or L0.
2. **No late rise:** the training loss at the end is at most :data:`MAX_RISE` above its lowest
   value. The loss is the sum over models of the per-target losses of a log row (each row is
   the mean over ``train.log_every`` steps), smoothed by a trailing mean over
   :data:`SMOOTH_SHARE` of the rows (at least one), because the paper scheme's rows differ by
   which models were the sources; "at the end" is the last smoothed value, "lowest" the
   smallest smoothed value.
3. **Alive:** at the last row, no model has more than :data:`MAX_DEAD` of the latents dead
   (the training's AuxK criterion: not active on any of the last ``sae.dead_tokens`` tokens
   that model encoded).

A run without a log row is not judged (``stable`` None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_RISE = 0.10
"""Largest allowed rise of the final smoothed loss over its minimum (0.10: 10%)."""
SMOOTH_SHARE = 0.10
"""Share of the log rows the trailing mean of the loss spans."""
MAX_DEAD = 0.25
"""Largest allowed share of dead latents of any model at the end of training."""
CRITERION = (f"stable: every logged loss, dead fraction and L0 finite; the final loss (summed over models, trailing "
             f"mean over {SMOOTH_SHARE:.0%} of the log rows) at most {MAX_RISE:.0%} above its minimum; at most "
             f"{MAX_DEAD:.0%} of the latents dead for any model at the last log row")
"""The criterion in one sentence, for captions."""


@dataclass(frozen=True)
class Stability:
    """The verdict on one run's training.

    Attributes:
        stable: True or False by the module's criterion; None without a training log.
        reasons: Why it is not stable (empty when stable), one phrase each.
        rise: Final smoothed loss / its minimum - 1 (None without loss columns).
        non_finite: Number of NaN or infinite values among the checked columns.
        dead_at_end: Model -> dead fraction at the last log row.
    """

    stable: bool | None
    reasons: list[str] = field(default_factory=list)
    rise: float | None = None
    non_finite: int = 0
    dead_at_end: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``stable``, ``unstable: <reasons>`` or ``no training log``."""
        if self.stable is None:
            return "no training log"
        return "stable" if self.stable else "unstable: " + "; ".join(self.reasons)


def training_stability(log: pd.DataFrame | None, models: list[str]) -> Stability:
    """Judge the training of a run of ``models`` from its log (see the module docstring).

    Args:
        log: ``train_log.parquet`` as a table (``loss_<model>``, ``dead_<model>``, ``l0`` columns).
        models: The run's models.

    Returns:
        The verdict with its figures.
    """
    if log is None or log.empty:
        return Stability(None)
    losses = [f"loss_{m}" for m in models if f"loss_{m}" in log.columns]
    dead = {m: f"dead_{m}" for m in models if f"dead_{m}" in log.columns}
    checked = [*losses, *dead.values(), *(["l0"] if "l0" in log.columns else [])]
    values = log[checked].to_numpy(dtype=float)
    non_finite = int((~np.isfinite(values)).sum())
    reasons = [f"{non_finite} NaN/inf value{'s' if non_finite != 1 else ''} in the log"] if non_finite else []
    rise = _final_rise(log[losses].sum(axis=1, skipna=False)) if losses else None
    if rise is not None and rise > MAX_RISE:
        reasons.append(f"final loss {rise:.0%} above its minimum")
    dead_at_end = {m: float(log[c].iloc[-1]) for m, c in dead.items()}
    reasons += [f"{m} ends with {share:.0%} dead" for m, share in dead_at_end.items() if share > MAX_DEAD]
    return Stability(not reasons, reasons, rise, non_finite, dead_at_end)


def _final_rise(loss: pd.Series) -> float | None:
    """Last / smallest value of the trailing mean of ``loss``, minus 1; None when not finite."""
    window = max(1, round(SMOOTH_SHARE * len(loss)))
    smooth = loss.rolling(window, min_periods=1).mean().to_numpy(dtype=float)
    if not np.isfinite(smooth).all() or smooth.min() <= 0:
        return None
    rise = float(smooth[-1] / smooth.min() - 1.0)
    return rise if math.isfinite(rise) else None
