"""The whole config.yaml: every section, checked together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from usae.config.base import from_dict
from usae.config.data import BackboneSpec, ExtractConfig, ManifestConfig, PrepareConfig


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The whole ``config.yaml``: dataset, models, and the settings of each stage."""

    results: str = "results"
    """Folder every output goes under."""
    dataset: ManifestConfig = field(default_factory=ManifestConfig)
    """Image source and split (stage ``manifest``)."""
    models: dict[str, BackboneSpec]
    """Backbones, by short name."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Stage ``extract``."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """Stage ``prepare``."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: at least one model is required")
        bad = [k for k in self.models if not k.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"models: names {bad} must use only letters, digits, '_' and '-'")


def load_config(data: dict[str, Any]) -> PipelineConfig:
    """Build and check the pipeline config from a parsed ``config.yaml`` dict."""
    data = dict(data)
    models = data.pop("models", None) or {}
    if not isinstance(models, dict):
        raise ValueError("models: expected a mapping of name -> model settings")
    specs = {key: from_dict(BackboneSpec, value, section=f"models.{key}", key=key) for key, value in models.items()}
    return from_dict(PipelineConfig, data, models=specs)
