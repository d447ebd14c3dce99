"""Settings of coordinated activation maximisation (config section ``maco``)."""

from __future__ import annotations

from dataclasses import dataclass

from usae.config.checks import Section
from usae.config.settings import setting
from usae.registry import DEVICES, MACO_OBJECTIVES


@dataclass(frozen=True, kw_only=True)
class MacoConfig(Section):
    """One optimised image per model for each chosen concept (MACO: Fourier phase, fixed amplitude)."""

    section_name = "maco"

    enabled: bool = setting(True, "Run the stage for every multi-model run and show its images in the report.")
    concepts: tuple[int, ...] | None = setting(
        None, "Concept ids to optimise; `null` = the `n_universal` most universal and `n_specific` model-specific "
        "ones, chosen from the evaluation.", minimum=0, unique=True, item="concept")
    n_universal: int = setting(4, "Concepts with firing entropy >= `min_entropy` that co-fire at least the "
                                   "evaluation's `min_cofires` times (at least once) and more often than chance, most "
                                   "co-fires first.", minimum=0)
    min_entropy: float = setting(0.9, "Firing entropy a concept needs to count as universal.", minimum=0.0,
                                 maximum=1.0)
    n_specific: int = setting(2, "Model-specific concepts for contrast (firing entropy < 0.5, most fires in one "
                                 "model; one per model in turn).", minimum=0)
    objective: str = setting("mean", "What is maximised per image: the concept's code `mean` over the patch tokens, "
                                     "its `max`, or the mean over the `centre` half of the grid (a spatial "
                                     "target).", choices=MACO_OBJECTIVES)
    steps: int = setting(96, "Optimisation steps (MACO: 1000 on a GPU).", minimum=1)
    lr: float = setting(1.0, "NAdam learning rate on the phase (MACO's).", exclusive_minimum=0.0)
    image_size: int = setting(256, "Side of the optimised image in pixels (MACO: 1280 on a GPU); crops of it are "
                                   "resized to each model's input size.", minimum=16)
    crops: int = setting(2, "Random crops per image and step (MACO: 6).", minimum=1)
    crop_min: float = setting(0.6, "Smallest crop side, as a share of the image side (MACO: 0.20).",
                              exclusive_minimum=0.0, maximum=1.0)
    crop_max: float = setting(0.9, "Largest crop side, as a share of the image side (MACO: 0.25).",
                              exclusive_minimum=0.0, maximum=1.0)
    noise: float = setting(0.05, "Gaussian plus uniform pixel noise added to every crop (MACO: 0.05).", minimum=0.0)
    batch_concepts: int = setting(8, "Concepts optimised together in one batch.", minimum=1)
    spectrum_images: int = setting(200, "Training images whose mean amplitude spectrum and colour correlation "
                                        "the images keep.", minimum=2)
    baseline_samples: int = setting(8, "Random-phase images (same spectrum) per concept, the baseline of the "
                                       "activation ratios.", minimum=1)
    seed: int = setting(0, "Seed of the initial phases, crops and noise.", minimum=0)
    device: str = setting("auto", "`auto` = CUDA when present, else CPU.", choices=DEVICES)
    precision: str = setting("fp32", "`bf16` = autocast on a GPU (faster); `fp32` everywhere else.",
                             choices=("fp32", "bf16"))
