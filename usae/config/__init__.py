"""Typed, validated settings of every stage: one frozen dataclass per config section.

Each key is declared once, with ``setting()`` (default, allowed values, description);
the checks, ``usae/workflow/schemas/config.schema.yaml`` and the README's configuration table
all come from that declaration (``python -m usae.config.generate`` rewrites the files).
``load_config`` is the one reader of a ``config.yaml``, for Snakemake and ``usae`` alike.
"""

from usae.config.base import from_dict, result_settings, to_dict, with_run_settings
from usae.config.data import (
    CHANNEL_ORDERS, COMPRESSORS, DEVICES, FINAL_LAYER, INPUT_LAYOUTS, SOURCES, STANDARDIZATIONS, BackboneSpec,
    ExtractConfig, ManifestConfig, PrepareConfig, SyntheticImagesConfig, extraction_group, extraction_groups,
    layer_tag, part_settings, same_backbone, spec_settings,
)
from usae.config.evaluate import EvaluateConfig
from usae.config.maco import MacoConfig
from usae.config.pipeline import PipelineConfig, load_config
from usae.config.tracking import TrackingConfig
from usae.config.train import RunConfig, SAEConfig, TrainConfig

__all__ = [
    "CHANNEL_ORDERS", "COMPRESSORS", "DEVICES", "FINAL_LAYER", "INPUT_LAYOUTS", "SOURCES", "STANDARDIZATIONS",
    "BackboneSpec", "ExtractConfig", "ManifestConfig", "PipelineConfig", "PrepareConfig", "SyntheticImagesConfig",
    "extraction_group", "extraction_groups", "from_dict", "layer_tag", "same_backbone", "load_config", "to_dict",
    "result_settings", "with_run_settings", "part_settings", "spec_settings",
    "RunConfig", "SAEConfig", "TrainConfig", "EvaluateConfig",
    "MacoConfig", "TrackingConfig",
]
