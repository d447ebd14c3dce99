"""Settings of the evaluation stage (config section ``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass

from usae.config.base import check_choice, check_range

EVAL_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """What the evaluation of a trained USAE on the validation tokens computes."""

    tau: float = 0.1
    """Firing threshold: concept k fires when Z_k > tau (paper code: 0.1)."""
    top_n: int = 8
    """Top images kept per concept and model (by max activation over tokens)."""
    min_cofires: int = 1000
    """Second Pearson r (log co-fires vs log energy) over concepts with at least this many co-fires."""
    batch_images: int = 32
    """Validation images per block."""
    max_images: int | None = None
    """Evaluate on the first this-many validation images only (None: all)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        check_range("evaluate", "tau", self.tau, 0.0)
        check_range("evaluate", "top_n", self.top_n, 1)
        check_range("evaluate", "min_cofires", self.min_cofires, 0)
        check_range("evaluate", "batch_images", self.batch_images, 1)
        if self.max_images is not None:
            check_range("evaluate", "max_images", self.max_images, 1)
        check_choice("evaluate", "device", self.device, EVAL_DEVICES)
