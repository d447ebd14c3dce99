"""The whole config.yaml: every section, checked together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from usae.config.base import from_dict
from usae.config.data import BackboneSpec, ExtractConfig, ManifestConfig, PrepareConfig
from usae.config.evaluate import EvaluateConfig
from usae.config.train import RunConfig, SAEConfig, TrainConfig


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
    sae: SAEConfig = field(default_factory=SAEConfig)
    """USAE architecture shared by every run (runs may override keys)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings shared by every run (runs may override keys)."""
    runs: dict[str, RunConfig] = field(default_factory=dict)
    """Training runs by name; each may override ``sae`` and ``train`` keys and pick models."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Stage ``evaluate``."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: at least one model is required")
        bad = [k for k in self.models if not k.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"models: names {bad} must use only letters, digits, '_' and '-'")
        for run in self.runs.values():
            unknown = sorted(set(run.models) - set(self.models))
            if unknown:
                raise ValueError(f"runs.{run.key}.models: {unknown} are not in models {sorted(self.models)}")


def load_config(data: dict[str, Any]) -> PipelineConfig:
    """Build and check the pipeline config from a parsed ``config.yaml`` dict."""
    data = dict(data)
    models = data.pop("models", None) or {}
    if not isinstance(models, dict):
        raise ValueError("models: expected a mapping of name -> model settings")
    specs = {key: from_dict(BackboneSpec, value, section=f"models.{key}", key=key) for key, value in models.items()}
    runs = data.pop("runs", None)
    runs = {"usae": {}} if runs is None else runs
    if not isinstance(runs, dict):
        raise ValueError("runs: expected a mapping of run name -> settings")
    sae, train = dict(data.get("sae") or {}), dict(data.get("train") or {})
    built = {key: _run(key, value, sae, train, list(specs)) for key, value in runs.items()}
    return from_dict(PipelineConfig, data, models=specs, runs=built)


def _run(key: str, value: dict[str, Any] | None, sae: dict[str, Any], train: dict[str, Any],
         all_models: list[str]) -> RunConfig:
    """A run's settings: the shared ``sae``/``train`` sections updated with the run's own keys."""
    value = dict(value or {})
    unknown = sorted(set(value) - {"models", "sae", "train"})
    if unknown:
        raise ValueError(f"runs.{key}: unknown key(s) {unknown}; allowed: ['models', 'sae', 'train']")
    if not key.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"runs: name {key!r} must use only letters, digits, '_' and '-'")
    return RunConfig(
        key=key,
        models=tuple(value.get("models") or all_models),
        sae=from_dict(SAEConfig, {**sae, **(value.get("sae") or {})}, section=f"runs.{key}.sae"),
        train=from_dict(TrainConfig, {**train, **(value.get("train") or {})}, section=f"runs.{key}.train"),
    )
