"""Learning-rate schedule: linear warm-up, then cosine decay, on the global step.

The reference code steps one scheduler per model only when that model is picked, so its
cosine never finishes (final lr about 2.3e-4 instead of 1e-6); here every model follows
the same global schedule.
"""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, *, lr: float, lr_end: float, warmup: float) -> float:
    """lr at ``step`` (0-based) of ``total_steps``.

    warm-up (step < w = round(warmup * total)):  lr_end + (lr - lr_end) * (step + 1) / w
    then cosine:  lr_end + (lr - lr_end) * (1 + cos(pi * t)) / 2,  t = (step - w) / (total - 1 - w)
    so the last step runs at exactly ``lr_end``.
    """
    warm = round(warmup * total_steps)
    if step < warm:
        return lr_end + (lr - lr_end) * (step + 1) / warm
    span = max(total_steps - 1 - warm, 1)
    t = min((step - warm) / span, 1.0)
    return lr_end + (lr - lr_end) * 0.5 * (1.0 + math.cos(math.pi * t))
