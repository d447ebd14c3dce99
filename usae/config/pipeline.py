"""The whole config.yaml: every section, checked together, and the one function that reads it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from usae.config.base import as_mapping, check_keys, from_dict
from usae.config.checks import Section, check_field
from usae.config.data import BackboneSpec, ExtractConfig, ManifestConfig, PrepareConfig
from usae.config.evaluate import EvaluateConfig
from usae.config.maco import MacoConfig
from usae.config.settings import NAME, REQUIRED, file_default, hints_of, setting, spec_of
from usae.config.tracking import TrackingConfig
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
    test_sets: dict[str, ManifestConfig] = setting(
        {}, "Other image sets every run is also evaluated on, without retraining, by name (`results/<name>/`, "
        "`results/runs/<run>/eval_<name>/`); each is a `dataset` section (its `name` is the key). Every image of a "
        "test set is evaluated (no split; `val_fraction` is unused), standardised with the training data's "
        "statistics.", keys=NAME, item="test set")
    evaluate: EvaluateConfig = setting(EvaluateConfig, "Evaluation of every run on the validation tokens "
                                                       "(stage `evaluate`).")
    maco: MacoConfig = setting(MacoConfig, "Coordinated activation maximisation of every run of two or more models "
                                           "(stage `maco`).")
    tracking: TrackingConfig = setting(TrackingConfig, "Optional experiment tracking of every run (TensorBoard, "
                                                       "Weights & Biases): training rows and evaluation metrics.")


def load_config(data: dict[str, Any]) -> PipelineConfig:
    """Build and check the pipeline config from a parsed ``config.yaml`` dict.

    The one way a config is read: ``usae`` commands and the Snakefile both call it, so
    both accept and refuse exactly the same files, with the same messages. A key is named
    where the file has it: a bad ``sae`` key under ``sae``, not under every run that
    inherits it.

    Raises:
        ValueError: naming the first bad key and what it allows.
    """
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping of sections, got {data!r}")
    check_keys(PipelineConfig, data, "top level")
    data = dict(data)
    specs = _models(data.pop("models", None))
    shared = {name: as_mapping(name, data.pop(name, None)) for name in ("sae", "train")}
    sae = from_dict(SAEConfig, shared["sae"], section="sae")  # before the runs that inherit it
    train = from_dict(TrainConfig, shared["train"], section="train")
    runs = data.pop("runs", None)
    if runs is None:
        runs = file_default(_field(PipelineConfig, "runs"))
    if not isinstance(runs, dict):
        raise ValueError("runs: expected a mapping of run name -> settings")
    built = {key: _run(key, value, shared, list(specs)) for key, value in runs.items()}
    test_sets = _test_sets(data.pop("test_sets", None))
    return from_dict(PipelineConfig, data, models=specs, runs=built, sae=sae, train=train, test_sets=test_sets)


def _models(models: Any) -> dict[str, BackboneSpec]:
    """Every ``models`` entry built and checked; at least one (before runs, which default to all models)."""
    if models is not None and not isinstance(models, dict):
        raise ValueError("models: expected a mapping of name -> model settings")
    specs = {key: from_dict(BackboneSpec, value, section=f"models.{key}", key=key)
             for key, value in (models or {}).items()}
    field = _field(PipelineConfig, "models")
    check_field("models", specs, hints_of(PipelineConfig)["models"], spec_of(field))
    return specs


def _test_sets(test_sets: Any) -> dict[str, ManifestConfig]:
    """Every ``test_sets`` entry as a ``dataset`` section named by its key."""
    built = {}
    for key, value in as_mapping("test_sets", test_sets).items():
        value = as_mapping(f"test_sets.{key}", value)
        if value.pop("name", key) != key:
            raise ValueError(f"test_sets.{key}.name: a test set is named by its key ({key!r}); leave name out")
        built[key] = from_dict(ManifestConfig, value, section=f"test_sets.{key}", name=key)
    return built


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
