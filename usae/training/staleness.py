"""Were a saved run and the aligned stores made with the settings the config now gives? Checked
without torch by the workflow's driver, before any job.

Snakemake reruns a job whose params changed only where its metadata (``.snakemake/metadata``,
in the working directory) recorded the params the output was made with. A results folder that
was copied, moved or made on another machine has no such record: after a config change
Snakemake says "Nothing to be done" and keeps the old outputs. A saved model records its
settings (``config.json``: ``sae``, ``meta.train``, ``models``) and an aligned store its
``prepare`` settings (``zarr.json`` attribute ``config``), so the driver compares them with the
config and names every difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from usae import paths
from usae.config import PipelineConfig, PrepareConfig, RunConfig, SAEConfig, TrainConfig, result_settings, to_dict
from usae.config.settings import file_default, settings
from usae.sae.integrity import CONFIG as MODEL_CONFIG

RESOLVED = "auto"
"""A setting given as ``auto`` is resolved at training time (``sae.dead_tokens``, ``sae.decode``,
``train.device``); the model records the value it resolved to, which is not a change."""


_NO_RECORD = ("Snakemake redoes it only if .snakemake/metadata recorded the old ones; a results folder copied or "
              "moved from elsewhere has no record, and then it and all that follows from it stay stale:")


def changed_settings(model_dir: str | Path, run: RunConfig) -> list[str]:
    """``"sae.k: 48 -> 64"`` for each setting the saved model at ``model_dir`` was trained with
    that ``run`` now gives otherwise, in the config's key order; [] when there is no readable
    saved model (:func:`usae.sae.integrity.damaged_models` names a broken one) or nothing differs.

    Only settings that change the result count (``train`` keys declared ``changes_results=False``
    do not). A key the model lacks was trained with that key's default (it predates the key).
    """
    try:
        saved = json.loads((Path(model_dir) / MODEL_CONFIG).read_text())
        recorded = _flat(saved["models"], saved["sae"], saved["meta"]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    wanted = _flat(list(run.models), to_dict(run.sae), result_settings(run.train))
    return _changes(recorded, wanted, _flat(None, _defaults(SAEConfig), _defaults(TrainConfig)))


def changed_preparation(store: str | Path, prepare: PrepareConfig) -> list[str]:
    """``"prepare.grid: 7 -> 9"`` for each ``prepare`` setting the aligned store at ``store`` was made
    with that ``prepare`` now gives otherwise; [] when the store or its record is missing."""
    try:
        attrs = json.loads(Path(paths.store_marker(store)).read_text())["attributes"]
        recorded = {f"prepare.{k}": v for k, v in attrs["config"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    wanted = {f"prepare.{k}": v for k, v in result_settings(prepare).items()}
    return _changes(recorded, wanted, {f"prepare.{k}": v for k, v in _defaults(PrepareConfig).items()})


def stale_runs(cfg: PipelineConfig) -> list[str]:
    """One message per configured run whose saved model was trained with other settings, saying
    what changed and how to retrain it when Snakemake has no record to rerun it by."""
    messages = []
    for name in sorted(cfg.runs):
        model = paths.run_model(cfg, name)
        if changes := changed_settings(model, cfg.runs[name]):
            messages.append(f"{model} was trained with settings the config now changes ({'; '.join(changes)}). "
                            f"{_NO_RECORD} rerun with --forcerun {model}")
    return messages


def stale_stores(cfg: PipelineConfig) -> list[str]:
    """One message per configured model whose aligned store was prepared with other settings."""
    messages = []
    for name, spec in cfg.models.items():
        store = paths.aligned(cfg, name, spec.layer_tag)
        if changes := changed_preparation(store, cfg.prepare):
            messages.append(
                f"{store} was prepared with settings the config now changes ({'; '.join(changes)}). {_NO_RECORD} "
                f"rerun with --forcerun {paths.store_marker(store)}")
    return messages


def _changes(recorded: dict[str, Any], wanted: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """``"key: before -> now"`` for each key of ``wanted`` whose recorded value (its default when the
    record predates the key) differs; a wanted ``auto`` is resolved when the work runs, never a change."""
    changes = []
    for key, value in wanted.items():
        before = recorded.get(key, defaults.get(key))
        if value != RESOLVED and before != value:
            changes.append(f"{key}: {_shown(before)} -> {_shown(value)}")
    return changes


def _flat(models: list[str] | None, sae: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    flat = {} if models is None else {"models": list(models)}
    return flat | {f"sae.{k}": v for k, v in sae.items()} | {f"train.{k}": v for k, v in train.items()}


def _defaults(section: type) -> dict[str, Any]:
    return {f.name: file_default(f) for f, _, _ in settings(section)}


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, str)) or value is None else str(value)
