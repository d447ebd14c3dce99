"""Settings of the evaluation stage (config section ``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass

from usae.config.checks import Section
from usae.config.settings import setting
from usae.registry import DEVICES


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(Section):
    """What the evaluation of a trained USAE on the validation tokens computes."""

    section_name = "evaluate"

    tau: float = setting(0.1, "Firing threshold: concept k fires when Z_k > tau (paper code: 0.1).", minimum=0.0)
    top_n: int = setting(8, "Top validation images kept per concept and model (by max activation over tokens).",
                         minimum=1)
    min_cofires: int | None = setting(
        None, "The second Pearson r (log co-fires vs log energy) is over concepts with at least this many "
        "co-fires; `null` = the paper's 1000 per 10 M evaluation tokens, scaled to the tokens evaluated "
        "(at least 1).", minimum=0)
    chance_alpha: float = setting(
        0.05, "Family-wise error of the test that a universal concept co-fires more often than chance: the models "
        "fire it together on more tokens than Poisson(its chance co-fires, independent firing at each token "
        "position) gives with P < this / the dictionary's concepts (Bonferroni), the chance that even one concept "
        "of an independently firing dictionary passes. Used by the `... more often than chance` counts, the "
        "report's most-universal gallery and MACO's universal "
        "picks.", exclusive_minimum=0.0, maximum=1.0, quiet_default=True)
    batch_images: int = setting(32, "Validation images per block.", minimum=1)
    max_images: int | None = setting(None, "Evaluate on the first this-many validation images only; `null` = all.",
                                     minimum=1)
    baselines: bool = setting(
        True, "Also evaluate two baselines and write `baselines.json`: PCA per model (`sae.k` components, fitted on "
        "as many training images as are evaluated; R2 of each model alone, no cross-model entries) and a random "
        "dictionary (the USAE untrained: its R2 matrix, firing entropy and universal-concept counts, those with "
        "energy >= mean and, on generated images, planted-factor AUROC >= 0.9 too), the floor of every figure.")
    device: str = setting("auto", "`auto` = CUDA when present, else CPU.", choices=DEVICES)
    min_factor_auroc: float = setting(
        0.75, "Generated images: a concept is labelled with the planted factor it detects best only when that "
        "patch-level AUROC is at least this; `background` when its best AUROC is at most 1 minus this (it fires "
        "off every factor); otherwise no label (near chance).", minimum=0.5, maximum=1.0)
