"""Were the aligned stores, saved runs, evaluations and MACO images made with the settings the config
now gives? Checked without torch by the workflow's driver, before any job.

Snakemake reruns a job whose params changed only where its metadata (``.snakemake/metadata``,
in the working directory) recorded the params the output was made with. A results folder that
was copied, moved or made on another machine has no such record: after a config change
Snakemake says "Nothing to be done" and keeps the old outputs. So the outputs record their
settings, and the driver compares them with the config and names every difference:

* a saved model: ``config.json`` (``sae``, ``meta.train``, ``models``);
* an aligned store: ``zarr.json`` attributes ``config`` (``prepare``), ``extract`` (its parts'
  ``extract`` settings), ``model`` (family, name, weights, input, as resolved) and ``spec`` (the
  model's settings as the config gave them);
* an evaluation: ``metrics.json`` key ``config`` (``evaluate``);
* a run's MACO images: ``maco.json`` key ``settings`` (``maco``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from usae import paths
from usae.config import (BackboneSpec, EvaluateConfig, ExtractConfig, MacoConfig, PipelineConfig, PrepareConfig,
                         RunConfig, SAEConfig, TrainConfig, part_settings, result_settings, spec_settings,
                         to_dict)
from usae.config.settings import file_default, settings
from usae.sae.integrity import CONFIG as MODEL_CONFIG
from usae.weights.fetch import library_weights, locate_weights

RESOLVED = "auto"
"""A setting given as ``auto`` is resolved at training time (``sae.dead_tokens``, ``sae.decode``,
``train.device``); the model records the value it resolved to, which is not a change."""


SPECTRUM = ("maco.image_size", "maco.spectrum_images", "maco.seed")
"""The ``maco`` settings the shared spectrum (rule ``maco_spectrum``) is made with: a change redoes it too."""

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
    attrs = _store_attributes(store)
    return [] if attrs is None else _changed_prepare(attrs, prepare)


def _store_attributes(store: str | Path) -> dict[str, Any] | None:
    """The attributes an aligned store's ``zarr.json`` records, None if it or they cannot be read."""
    try:
        attrs = json.loads(Path(paths.store_marker(store)).read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def _changed_prepare(attrs: dict[str, Any], prepare: PrepareConfig) -> list[str]:
    return _section_changes(attrs.get("config"), "prepare", prepare)


def _changed_extract(attrs: dict[str, Any], extract: ExtractConfig) -> list[str]:
    """The ``extract`` settings the store's parts were made with (attribute ``extract``) that differ now."""
    return _section_changes(attrs.get("extract"), "extract", extract, part_settings(extract))


def changed_evaluation(eval_dir: str | Path, evaluate: EvaluateConfig) -> list[str]:
    """``"evaluate.tau: 0.1 -> 0.2"`` for each ``evaluate`` setting the evaluation at ``eval_dir`` was made
    with (its ``metrics.json``, key ``config``) that ``evaluate`` now gives otherwise; [] without a record."""
    return _section_changes(_json_key(Path(eval_dir) / paths.EVAL_METRICS, "config"), "evaluate", evaluate)


def changed_maco(maco_dir: str | Path, maco: MacoConfig) -> list[str]:
    """``"maco.steps: 64 -> 96"`` for each ``maco`` setting the images at ``maco_dir`` were made with (its
    ``maco.json``, key ``settings``) that ``maco`` now gives otherwise; [] without a record."""
    return _section_changes(_json_key(Path(maco_dir) / paths.MACO_REPORT, "settings"), "maco", maco)


def _json_key(path: Path, key: str) -> Any:
    """``key`` of the JSON object in ``path``; None if it or the file cannot be read."""
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _section_changes(recorded: Any, name: str, section: Any, wanted_settings: dict[str, Any] | None = None
                     ) -> list[str]:
    """The changes of config section ``name`` (now ``section``; of it, ``wanted_settings`` where given,
    else its :func:`result_settings`) from the settings an output ``recorded`` (a dict, its keys unprefixed);
    [] without a record."""
    if not isinstance(recorded, dict):
        return []
    if wanted_settings is None:
        wanted_settings = result_settings(section)
    wanted = {f"{name}.{k}": v for k, v in wanted_settings.items()}
    return _changes({f"{name}.{k}": v for k, v in recorded.items()}, wanted,
                    {f"{name}.{k}": v for k, v in _defaults(type(section)).items()})


DESCRIBED = ("library", "name", "pretrained", "kwargs", "image_size", "mean", "std", "weights", "weights_sha256")
"""The model settings compared through a store's model record (``describe``: resolved ``mean``/``std``,
weights by origin and digest); the others through the store's ``spec`` (:func:`usae.config.spec_settings`)."""


def changed_model(record: Any, spec: BackboneSpec, recorded_spec: Any = None) -> list[str]:
    """``"models.dino.image_size: 224 -> 126"`` for each setting of ``spec`` that a store's model
    ``record`` (:meth:`usae.backbones.base.Backbone.describe`) and its ``recorded_spec`` (the settings
    it was made with, :func:`usae.config.spec_settings`) show was otherwise, in the config's key order;
    [] without a record.

    Through ``record``, the settings of :data:`DESCRIBED`: ``mean`` and ``std`` unless ``null`` (the
    model's own, resolved when extracting); ``weights`` by its origin, except a local file, whose
    absolute path may differ on another machine while its contents do not, and ``weights_sha256``
    when given. Through ``recorded_spec``, every other setting but ``layer`` (the store's path names
    it): ``weights_format``, ``hf_config``, the onnx-only settings, and any added later (a record
    that predates a setting was made with its default). Stores made before usae recorded their
    ``spec`` are compared through ``record`` alone.
    """
    try:
        preprocessing, weights = record["preprocessing"], record["weights"]
        recorded = {"library": record["library"], "name": record["name"], "pretrained": record["pretrained"],
                    "kwargs": record.get("kwargs", {}), "image_size": preprocessing["image_size"],
                    "mean": preprocessing.get("mean"), "std": preprocessing.get("std"),
                    "weights": weights["origin"], "weights_sha256": weights["sha256"]}
    except (KeyError, TypeError):
        return []
    described = {"library": spec.library, "name": spec.name, "pretrained": spec.pretrained,
                 "image_size": spec.image_size,
                 "mean": RESOLVED if spec.mean is None else list(spec.mean),
                 "std": RESOLVED if spec.std is None else list(spec.std),
                 "weights": _weights_origin(spec), "weights_sha256": spec.weights_sha256 or RESOLVED}
    settings_now = json.loads(json.dumps(spec_settings(spec)))  # as read back from JSON: tuples are lists
    wanted = {key: described.get(key, value) for key, value in settings_now.items() if key != "layer"}
    defaults = _defaults(BackboneSpec)
    if isinstance(recorded_spec, dict):
        recorded |= {k: v for k, v in recorded_spec.items() if k not in DESCRIBED}
    else:  # not recorded: compare what the record shows
        wanted = {k: v for k, v in wanted.items() if k in DESCRIBED}
    prefix = spec.config_path()
    return _changes({f"{prefix}.{k}": v for k, v in recorded.items()}, {f"{prefix}.{k}": v for k, v in wanted.items()},
                    {f"{prefix}.{k}": v for k, v in defaults.items() if k not in DESCRIBED})


def _weights_origin(spec: BackboneSpec) -> str:
    """What a store records as the weights' origin for ``spec`` (:class:`usae.weights.fetch.LocalWeights`), read
    from the settings alone; :data:`RESOLVED` for a local file (compared by its digest, if given)."""
    if spec.weights is None:
        return library_weights(spec).origin
    try:
        origin = locate_weights(spec)[0]
    except ValueError:  # a malformed `weights`: the extraction job names it
        return RESOLVED
    return RESOLVED if origin.startswith("file:") else origin


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
    """One message per configured model whose aligned store was made with other settings: its model's or
    ``extract``'s (redone from the extraction parts on) or ``prepare``'s (redone from the store on)."""
    messages = []
    for name, spec in cfg.models.items():
        store = paths.aligned(cfg, name, spec.layer_tag)
        if (attrs := _store_attributes(store)) is None:
            continue
        extraction = changed_model(attrs.get("model"), spec, attrs.get("spec")) + _changed_extract(attrs, cfg.extract)
        if not (changes := extraction + _changed_prepare(attrs, cfg.prepare)):
            continue
        redo = [paths.store_marker(part) for part in paths.extract_parts(cfg, name)] if extraction \
            else [paths.store_marker(store)]
        messages.append(f"{store} was made with settings the config now changes ({'; '.join(changes)}). "
                        f"{_NO_RECORD} rerun with --forcerun {' '.join(redo)}")
    return messages


def stale_results(cfg: PipelineConfig) -> list[str]:
    """One message per evaluation (on the validation tokens or a test set) and per run's MACO images made
    with other ``evaluate`` or ``maco`` settings, saying how to redo them. A run whose model is stale
    (:func:`stale_runs`) is left out, as are the MACO images of a stale evaluation: redoing the model or the
    evaluation redoes what follows it."""
    messages, maco_runs = [], set(paths.maco_runs(cfg))
    for run in sorted(cfg.runs):
        if changed_settings(paths.run_model(cfg, run), cfg.runs[run]):
            continue
        evaluations = [paths.run_eval(cfg, run), *paths.test_set_evals(cfg, run).values()]
        evaluated = {folder: changed_evaluation(folder, cfg.evaluate) for folder in evaluations}
        for folder, changes in evaluated.items():
            if changes:
                messages.append(f"{folder} was evaluated with settings the config now changes "
                                f"({'; '.join(changes)}). {_NO_RECORD} rerun with --forcerun {folder}")
        maco = paths.run_maco(cfg, run)
        if run in maco_runs and not evaluated[evaluations[0]] and (changes := changed_maco(maco, cfg.maco)):
            redo = [maco] + ([paths.maco_spectrum(cfg)] if any(c.split(":")[0] in SPECTRUM for c in changes) else [])
            messages.append(f"{maco} was made with settings the config now changes ({'; '.join(changes)}). "
                            f"{_NO_RECORD} rerun with --forcerun {' '.join(redo)}")
    return messages


def stale_outputs(cfg: PipelineConfig) -> list[str]:
    """Every message of :func:`stale_stores`, :func:`stale_runs` and :func:`stale_results`, in pipeline order."""
    return stale_stores(cfg) + stale_runs(cfg) + stale_results(cfg)


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
    return json.dumps(value) if isinstance(value, (list, dict, str)) or value is None else str(value)
