"""The whole config.yaml: every section, checked together, and the one function that reads it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from usae.config.base import as_mapping, from_dict
from usae.config.checks import Section
from usae.config.data import BackboneSpec, ExtractConfig, ManifestConfig, PrepareConfig
from usae.config.evaluate import EvaluateConfig
from usae.config.settings import NAME, REQUIRED, file_default, setting
from usae.config.train import RunConfig, SAEConfig, TrainConfig


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(Section):
    """The whole ``config.yaml``: dataset, models, and the settings of each stage."""

    results: str = setting("results", "Folder every output goes under.")
    dataset: ManifestConfig = setting(ManifestConfig, "Image source and train/val split (stage `manifest`).")
    models: dict[str, BackboneSpec] = setting(
        REQUIRED, "Backbones by short name; the name is used in paths.", keys=NAME, min_items=1, item="model")
    extract: ExtractConfig = setting(ExtractConfig, "Activation extraction (stage `extract`).")
    prepare: PrepareConfig = setting(PrepareConfig, "Patch-grid alignment and standardisation (stage `prepare`).")
    sae: SAEConfig = setting(SAEConfig, "Universal SAE architecture shared by every run (runs may override keys).")
    train: TrainConfig = setting(TrainConfig, "Training settings shared by every run (runs may override keys).")
    runs: dict[str, RunConfig] = setting(
        REQUIRED, "Training runs by name (`results/runs/<name>/`); `null` = one run named `usae`. Each may pick "
        "models and override `sae`/`train` keys, e.g. `runs: {k32: {}, k16: {sae: {k: 16}}}`.",
        keys=NAME, absent={"usae": {}})
    evaluate: EvaluateConfig = setting(EvaluateConfig, "Evaluation of every run on the validation tokens "
                                                       "(stage `evaluate`).")


def load_config(data: dict[str, Any]) -> PipelineConfig:
    """Build and check the pipeline config from a parsed ``config.yaml`` dict.

    The one way a config is read: ``usae`` commands and the Snakefile both call it, so
    both accept and refuse exactly the same files, with the same messages.

    Raises:
        ValueError: naming the first bad key and what it allows.
    """
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping of sections, got {data!r}")
    data = dict(data)
    models = data.pop("models", None) or {}
    if not isinstance(models, dict):
        raise ValueError("models: expected a mapping of name -> model settings")
    specs = {key: from_dict(BackboneSpec, value, section=f"models.{key}", key=key) for key, value in models.items()}
    runs = data.pop("runs", None)
    if runs is None:
        runs = file_default(_field(PipelineConfig, "runs"))
    if not isinstance(runs, dict):
        raise ValueError("runs: expected a mapping of run name -> settings")
    shared = {name: as_mapping(name, data.get(name)) for name in ("sae", "train")}
    built = {key: _run(key, value, shared, list(specs)) for key, value in runs.items()}
    return from_dict(PipelineConfig, data, models=specs, runs=built)


def _run(key: str, value: dict[str, Any] | None, shared: dict[str, dict[str, Any]], all_models: list[str]) -> RunConfig:
    """A run's settings: the shared ``sae``/``train`` sections updated with the run's own keys."""
    where = f"runs.{key}"
    value = as_mapping(where, value)
    for name, base in shared.items():  # a run's section holds only the keys it changes
        value[name] = {**base, **as_mapping(f"{where}.{name}", value.get(name))}
    if value.get("models") is None:
        value["models"] = all_models
    return from_dict(RunConfig, value, section=where, key=key)


def _field(cls: type, name: str):
    return next(f for f in fields(cls) if f.name == name)
