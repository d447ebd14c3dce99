"""Was a saved run trained with the settings its config now gives? Checked without torch by the
workflow's driver, before any job.

Snakemake reruns a job whose params changed only where its metadata (``.snakemake/metadata``,
in the working directory) recorded the params the output was made with. A results folder that
was copied, moved or made on another machine has no such record: after a config change
Snakemake says "Nothing to be done" and keeps the old model, its evaluation and its report. A
saved model records its settings (``config.json``: ``sae``, ``meta.train``, ``models``), so the
driver compares them with the config and names every difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from usae import paths
from usae.config import PipelineConfig, RunConfig, SAEConfig, TrainConfig, result_settings, to_dict
from usae.config.settings import settings

RESOLVED = "auto"
"""A setting given as ``auto`` is resolved at training time (``sae.dead_tokens``, ``sae.decode``,
``train.device``); the model records the value it resolved to, which is not a change."""


def changed_settings(model_dir: str | Path, run: RunConfig) -> list[str]:
    """``"sae.k: 48 -> 64"`` for each setting the saved model at ``model_dir`` was trained with
    that ``run`` now gives otherwise, in the config's key order; [] when there is no readable
    saved model (:func:`usae.sae.integrity.damaged_models` names a broken one) or nothing differs.

    Only settings that change the result count (``train`` keys declared ``changes_results=False``
    do not). A key the model lacks was trained with that key's default (it predates the key).
    """
    path = Path(model_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
        recorded = _flat(saved["models"], saved["sae"], saved["meta"]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    wanted = _flat(list(run.models), to_dict(run.sae), result_settings(run.train))
    defaults = _flat(None, _defaults(SAEConfig), _defaults(TrainConfig))
    changes = []
    for key, value in wanted.items():
        before = recorded.get(key, defaults.get(key))
        if value != RESOLVED and before != value:
            changes.append(f"{key}: {_shown(before)} -> {_shown(value)}")
    return changes


def stale_runs(cfg: PipelineConfig) -> list[str]:
    """One message per configured run whose saved model was trained with other settings, saying
    what changed and how to retrain it when Snakemake has no record to rerun it by."""
    messages = []
    for name in sorted(cfg.runs):
        model = paths.run_model(cfg, name)
        if changes := changed_settings(model, cfg.runs[name]):
            messages.append(
                f"{model} was trained with settings the config now changes ({'; '.join(changes)}). Snakemake "
                f"retrains it only if .snakemake/metadata recorded the old ones; a results folder copied or moved "
                f"from elsewhere has no record, and then its model, evaluation and report stay stale: rerun with "
                f"--forcerun {model}")
    return messages


def _flat(models: list[str] | None, sae: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    flat = {} if models is None else {"models": list(models)}
    return flat | {f"sae.{k}": v for k, v in sae.items()} | {f"train.{k}": v for k, v in train.items()}


def _defaults(section: type) -> dict[str, Any]:
    return {f.name: f.default for f, _, _ in settings(section)}


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, str)) or value is None else str(value)
