"""Rows of the comparison's per-model tables: one per backbone when the runs see a backbone at different
layers, each a model key of its own (a depth study: ``mobilenet_d1`` in run d1, ``mobilenet_d2`` in d2,
...), so that a table of R2 or dead fractions per model is dense instead of a diagonal of blanks.

The page has only the run folders, so two models are one backbone when the specs their extraction
recorded (``model/config.json``, provenance ``backbones``) are equal but for the layer and what
follows from it (:data:`LAYER_FIELDS`): what :func:`usae.config.same_backbone` tells of two
configured specs, read back from the runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from usae.report.compare_tables import per_model_metrics

LAYER_FIELDS = ("key", "layer", "layout", "node", "tensor")
"""Fields of a recorded spec that change with the layer: the rest name the backbone."""
SEPARATORS = "_-."


@dataclass(frozen=True)
class BackboneRows:
    """Per-model rows relabelled by backbone.

    Attributes:
        labels: Model key -> its row (its backbone's label), in order of first appearance.
        note: Which model key of each run each row's cells are.
    """

    labels: dict[str, str]
    note: str

    def relabel(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """A column's metrics with each per-model key (``r2_self.<model>``) on its backbone's row."""
        renamed = {f"{prefix}.{model}": f"{prefix}.{label}" for prefix in per_model_metrics()
                   for model, label in self.labels.items()}
        return {renamed.get(key, key): value for key, value in metrics.items()}

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(self.labels.values()))


def _identity(model: str, spec: dict[str, Any] | None) -> str:
    """What names a model's backbone: its recorded spec without :data:`LAYER_FIELDS`; without a record
    (a run on activation arrays) the model key itself, a backbone of its own."""
    if spec is None:
        return json.dumps(["model", model])
    return json.dumps({k: v for k, v in spec.items() if k not in LAYER_FIELDS}, sort_keys=True, default=str)


def backbone_label(keys: list[str]) -> str:
    """A row label for the model keys of one backbone: their common prefix in whole words, stripped of
    separators (``mobilenet_d1``, ``mobilenet_d2`` -> ``mobilenet``); the first key when they share none."""
    prefix = os.path.commonprefix(keys)
    if prefix[-1:].isalnum() and any(len(k) > len(prefix) and k[len(prefix)].isalnum() for k in keys):
        cut = max(prefix.rfind(c) for c in SEPARATORS)  # the prefix ends inside a word: drop that part
        prefix = prefix[:cut] if cut > 0 else prefix
    return prefix.strip(SEPARATORS) or keys[0]


def backbone_rows(specs: dict[str, dict[str, dict[str, Any] | None]]) -> BackboneRows | None:
    """One row per backbone for runs whose models are its layers, or None to keep one row per model.

    Args:
        specs: run -> model key -> its recorded spec (None when not recorded), runs and models in order.

    Returns:
        None when no two model keys are one backbone, when a run holds two models of one backbone
        (its cells could not share a row), or when a key names different backbones in different
        runs; else the labels (:func:`backbone_label`, the first keys where labels would repeat) and
        the note saying which key of each run each merged row is.
    """
    identity: dict[str, str] = {}
    for models in specs.values():
        for model, spec in models.items():
            if identity.setdefault(model, _identity(model, spec)) != _identity(model, spec):
                return None
    groups: dict[str, list[str]] = {}
    for model, ident in identity.items():
        groups.setdefault(ident, []).append(model)
    one_each = all(len({identity[m] for m in models}) == len(models) for models in specs.values())
    if not one_each or all(len(keys) == 1 for keys in groups.values()):
        return None
    labels = [backbone_label(keys) for keys in groups.values()]
    if len(set(labels)) < len(labels):
        labels = [keys[0] for keys in groups.values()]
    label_of = {model: label for label, keys in zip(labels, groups.values()) for model in keys}
    merged = [(label, keys) for label, keys in zip(labels, groups.values()) if len(keys) > 1]
    parts = [f"{label} is " + ", ".join(f"{model} in {_runs_of(model, specs)}" for model in keys)
             for label, keys in merged]
    note = (f"One row per backbone, whose layers the runs hold as model keys of their own: {'; '.join(parts)}. "
            f"A run's baseline and test-set columns read its keys.")
    return BackboneRows(label_of, note)


def _runs_of(model: str, specs: dict[str, dict[str, Any]]) -> str:
    return ", ".join(run for run, models in specs.items() if model in models)
