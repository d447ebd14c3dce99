"""The comparison page's tables: which metrics of a run it shows, grouped in families, and how
each is written (one number format per row, since the runs are the columns).

A metric is a flat key of :func:`usae.report.compare.run_metrics` (``r2_self.<model>``,
``universal``, ...); a family lists its rows as such keys, ``{model}`` standing for every model
of the runs compared. A baseline's value of a metric can ride in a run's column as a floor
(:func:`floor_key`), written after the run's own value: ``333 (random dictionary 288)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from usae.evaluation.universal import CHANCE_ALPHA, FACTOR_AUROC, UNIVERSAL_ENTROPY
from usae.report.numbers import NumberFormat, column_format

PER_MODEL = "{model}"
BLANK = ""
"""A cell whose column has no such metric (a model the run does not have)."""
FLOOR = " @ "
"""Joins a metric and a baseline in a floor key (:func:`floor_key`)."""


@dataclass(frozen=True)
class Family:
    """A group of metrics shown as one table (rows: metrics, columns: runs and baselines).

    Attributes:
        key: Anchor of the table on the page.
        title: Heading.
        definition: What the metrics are, under the heading.
        rows: ``(metric key, label)``; ``{model}`` in both is replaced by each model.
        percent: Fractions written as percentages; else one format per row from its values.
        digits: Decimals of the row formats.
        figures: Keys of the small-multiples figures shown under the table.
        floors: Each run's cell also gives its baselines' values in brackets (floor keys,
            :func:`floor_key`), and the baselines get no column of their own in this table.
    """

    key: str
    title: str
    definition: str
    rows: tuple[tuple[str, str], ...]
    percent: bool = False
    digits: int = 3
    figures: tuple[str, ...] = ()
    floors: bool = False


def _per_model(prefix: str) -> tuple[tuple[str, str], ...]:
    return ((f"{prefix}.{PER_MODEL}", PER_MODEL),)


FAMILIES = (
    Family("r2-self", "R2 of each model from its own codes", "Per-dimension R2 (variance explained) of each model "
           "reconstructed from its own codes, on the validation tokens.", _per_model("r2_self"), figures=("r2",)),
    Family("r2-cross", "Cross-model R2", "Minimum and mean over the entries with source != target of the "
           "per-dimension R2 matrix (target j reconstructed from source i's codes); undefined for one model.",
           (("r2_cross_min", "min"), ("r2_cross_mean", "mean"))),
    Family("dead", "Dead concepts (never > 0)", "Share of the concepts never active (Z_k > 0) for the model on any "
           "validation token.", _per_model("dead"), percent=True),
    Family("dead-tau", "Dead concepts (never > tau)", "Share of the concepts that never fire (Z_k > tau) for the "
           "model on any validation token.", _per_model("dead_above_tau"), percent=True),
    Family("l0", "L0", "Mean number of active concepts per validation token.", _per_model("l0"), digits=1),
    Family("universality", "Universal concepts", f"Concepts with firing entropy >= {UNIVERSAL_ENTROPY} (they fire "
           f"alike in every model; undefined for one model); of those, the ones that co-fire (fire in every model on "
           f"the same token) at least evaluate.min_cofires times, at least once (firing alike is not firing together: "
           f"each model may fire a concept on tokens of its own), and of those the ones that co-fire more often than "
           f"independent firing at each token position explains (a Poisson test at family-wise error "
           f"evaluate.chance_alpha, {CHANCE_ALPHA:.0%} by default, over the concepts; concepts that fire often in "
           f"every model, or at the same positions of every image, co-fire often by chance alone); the universal "
           f"ones with at least the mean concept's energy (rare weak latents fire alike everywhere and swell the first "
           f"count) and the universal concepts' share of all concepts' energy; the universal ones whose best planted "
           f"factor has a patch-level AUROC >= "
           f"{FACTOR_AUROC} (runs on generated images); concepts that fire in every model. In brackets, the "
           f"same figure of the run's random dictionary (the USAE untrained, evaluated alike: its floor).",
           (("universal", f"firing entropy >= {UNIVERSAL_ENTROPY}"),
            ("universal_cofiring", "... and co-fires >= min_cofires"),
            ("universal_beyond_chance", "... more often than chance"),
            ("universal_energetic", "... and energy >= mean"),
            ("universal_energy_share", "their energy share"),
            ("universal_factor", f"... and factor AUROC >= {FACTOR_AUROC}"),
            ("concepts_firing_in_all_models", "firing in every model")), figures=("entropy",), floors=True),
    Family("pearson", "Co-fires and energy", "Pearson r of log co-fires and log energy over the concepts with "
           "co-fires, and over those with at least evaluate.min_cofires co-fires.",
           (("pearson", "Pearson r"), ("pearson_min_cofires", "Pearson r, min_cofires"))),
    Family("final-loss", "Final training loss", "Loss per target model at the last log row (the mean over its "
           "train.log_every steps).", _per_model("final_loss"), digits=4),
    Family("training", "Training", "Optimiser steps; seconds of the logged steps (sum over the log rows of their "
           "tokens / tokens_per_s: the steps alone, without start-up); wall-clock seconds of the train_usae job "
           "(its Snakemake benchmark, when present); median tokens per second.",
           (("steps", "steps"), ("train_seconds", "seconds (steps)"), ("train_wall_seconds", "seconds (job)"),
            ("tokens_per_s", "tokens / s")), digits=1, figures=("loss", "dead")),
)

STABILITY_KEYS = ("models", "train.scheme", "train.lr", "train.warmup", "train.grad_clip", "train.batch_tokens",
                  "train.epochs", "train.max_steps", "sae.n_latents", "sae.k", "sae.aux_k", "sae.aux_coef",
                  "sae.cross_coef", "standardize.")
"""Settings shown beside the stability verdicts (a key ending in ``.`` stands for each such key)."""


def stability_settings(settings: dict[str, dict[str, Any]]) -> list[str]:
    """The keys of :data:`STABILITY_KEYS` present in any run's settings, in that order."""
    present = list(dict.fromkeys(k for values in settings.values() for k in values))
    return [k for wanted in STABILITY_KEYS for k in present if k == wanted or (wanted.endswith(".") and
                                                                             k.startswith(wanted))]


def setting_text(value: Any) -> str:
    """A setting as written in a config: ``-`` for null, ``true``/``false``, numbers as given, lists as JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def floor_key(key: str, baseline: str) -> str:
    """The key of ``baseline``'s value of metric ``key`` in a run's column (its floor)."""
    return f"{key}{FLOOR}{baseline}"


def floor_metrics() -> set[str]:
    """The metric keys of the families that show floors (:attr:`Family.floors`)."""
    return {key for family in FAMILIES if family.floors for key, _ in family.rows}


def per_model_metrics() -> list[str]:
    """The prefixes of the per-model metrics (``r2_self`` of ``r2_self.<model>``), in family order."""
    return [key.split(".", 1)[0] for family in FAMILIES for key, _ in family.rows if PER_MODEL in key]


def _rows(family: Family, models: list[str]) -> list[tuple[str, str]]:
    return [(key.replace(PER_MODEL, m), label.replace(PER_MODEL, m))
            for key, label in family.rows for m in (models if PER_MODEL in key else [PER_MODEL])]


def _floors(column: dict[str, Any], key: str) -> dict[str, Any]:
    """Baseline -> its value of ``key`` in ``column``; baselines that do not define it (null) are left out."""
    prefix = floor_key(key, "")
    return {k[len(prefix):]: v for k, v in column.items() if k.startswith(prefix) and v is not None}


def metric_tables(columns: dict[str, dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Every family as a table over ``columns`` (column name -> metrics).

    Rows no column has and columns with none of the family's metrics are left out, and so is
    a family left empty. Each row is written in one format (its values and floors decide it,
    or percentages); a column without the row's metric gets a blank cell, a metric that is null
    or not finite ``-``. In a family with floors, a cell is followed by each floor of its
    column, ``(random dictionary 288)``.

    Returns:
        Per family: ``key``, ``title``, ``definition``, ``figures``, ``per_model`` (its rows are
        per model), ``floors`` (its cells end with floors), ``columns`` and ``rows``
        (``{"key", "label", "cells"}``, one cell text per column).
    """
    tables = []
    for family in FAMILIES:
        rows = [(key, label) for key, label in _rows(family, models) if any(key in c for c in columns.values())]
        shown = [name for name, c in columns.items() if any(key in c for key, _ in rows)]
        if not rows:
            continue
        table_rows = []
        for key, label in rows:
            floors = {name: _floors(columns[name], key) if family.floors else {} for name in shown}
            values = [columns[name][key] for name in shown if key in columns[name]]
            values += [v for by_base in floors.values() for v in by_base.values()]
            write = NumberFormat("percent", 1) if family.percent else column_format(values, family.digits)
            table_rows.append({"key": key, "label": label, "cells": [
                write(columns[name][key]) + "".join(f" ({base.replace('_', ' ')} {write(v)})"
                                                    for base, v in floors[name].items())
                if key in columns[name] else BLANK for name in shown]})
        tables.append({"key": family.key, "title": family.title, "definition": family.definition,
                       "figures": family.figures, "per_model": any(PER_MODEL in key for key, _ in family.rows),
                       "floors": family.floors,
                       "columns": shown, "rows": table_rows})
    return tables
