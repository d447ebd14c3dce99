"""The comparison page of several runs (``results/compare/index.html``): the settings that differ
between them, every metric as a table with the runs as columns, a small-multiples figure per
metric family, and whether each run's training was stable (:mod:`usae.report.stability`).

Each run folder is read as training and evaluation leave it (``model/config.json``,
``train_log.parquet``, ``eval/metrics.json``, ``eval/concepts.parquet`` and, when the
evaluation made them, the baselines of ``eval/baselines.json`` as extra columns). Runs over
different models compare side by side: a model a run lacks is a blank cell.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from usae import __version__, paths
from usae.atomic import atomic_path
from usae.evaluation.universal import COUNTS, cofire_test, universal_counts
from usae.report.compare_figures import PanelRun, comparison_figures
from usae.report.compare_rows import backbone_rows
from usae.report.compare_tables import floor_key, floor_metrics, metric_tables, setting_text, stability_settings
from usae.report.explorer import STATIC
from usae.report.stability import CRITERION, training_stability
from usae.report.templating import environment

if TYPE_CHECKING:
    from usae.config import PipelineConfig

logger = logging.getLogger(__name__)

REQUIRED = ("model/config.json", "eval/metrics.json")
MODEL_KEYS = ("backbone", "layer", "pretrained", "standardize")
"""Settings of one model, ``<key>.<model>``: a run without that model lacks them."""
BASELINES = "baselines.json"


@dataclass(frozen=True)
class RunRecord:
    """One finished run as read from its folder; ``concepts`` and ``log`` are None when absent."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    concepts: pd.DataFrame | None
    log: pd.DataFrame | None

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.metrics.get("models") or self.config["models"]]


def load_runs(run_dirs: dict[str, str | Path]) -> dict[str, RunRecord]:
    """Read every run folder, in the order given.

    Raises:
        ValueError: no run is given.
        FileNotFoundError: a run lacks its model or its evaluation; every missing file is listed.
    """
    if not run_dirs:
        raise ValueError("no run to compare: give at least one run folder")
    missing = [str(Path(d) / f) for d in run_dirs.values() for f in REQUIRED if not (Path(d) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot compare runs that are not trained and evaluated; missing: {', '.join(missing)}")
    return {name: _load(name, Path(d)) for name, d in run_dirs.items()}


def _load(name: str, run_dir: Path) -> RunRecord:
    def table(path: Path) -> pd.DataFrame | None:
        return pd.read_parquet(path) if path.is_file() else None

    return RunRecord(name, run_dir, json.loads((run_dir / REQUIRED[0]).read_text()),
                     json.loads((run_dir / REQUIRED[1]).read_text()), table(run_dir / "eval" / "concepts.parquet"),
                     table(run_dir / "train_log.parquet"))


def load_evaluation(run: RunRecord, test_set: str) -> RunRecord:
    """The run as evaluated on test set ``test_set`` (``eval_<test_set>/``): its metrics and concepts.

    Raises:
        FileNotFoundError: the run was not evaluated on that test set.
    """
    eval_dir = Path(paths.stage_path(paths.RUN_EVAL_ON, run.path.parent.parent, run=run.path.name,
                                     test_set=test_set))
    metrics_path, concepts = eval_dir / "metrics.json", eval_dir / "concepts.parquet"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"run {run.name} has no evaluation on test set {test_set!r}: {metrics_path} is missing")
    return RunRecord(f"{run.name} on {test_set}", run.path, run.config, json.loads(metrics_path.read_text()),
                     pd.read_parquet(concepts) if concepts.is_file() else None, None)


def run_settings(config: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's settings as flat keys, from its ``model/config.json`` (and ``eval/metrics.json``).

    ``models`` (in order); ``layers`` (their layers in that order, when the models have any); per model ``backbone.<m>``, ``layer.<m>``, ``pretrained.<m>`` and
    ``standardize.<m>`` (the kind); ``sae.*``; ``train.*`` (scheme and seed among them);
    ``steps``, ``grid`` and ``data`` (the first 12 hex digits of the manifest hash); and
    ``evaluate.*`` from the evaluation's settings.
    """
    meta = config.get("meta") or {}
    provenance = meta.get("provenance") or {}
    backbones, arrays = provenance.get("backbones") or {}, provenance.get("arrays") or {}
    out: dict[str, Any] = {"models": ", ".join(config["models"])}
    for m in config["models"]:
        backbone = backbones.get(m) or {}
        kind = ((meta.get("standardization") or {}).get(m) or {}).get("kind")
        values = (backbone.get("name", arrays.get(m)), backbone.get("layer"), backbone.get("pretrained"), kind)
        out |= {f"{key}.{m}": value for key, value in zip(MODEL_KEYS, values)}
    layers = [(backbones.get(m) or {}).get("layer") for m in config["models"]]
    if any(layer is not None for layer in layers):
        # Runs at several depths have a model key per layer, so no layer.<m> is shared and none would differ.
        out["layers"] = ", ".join(setting_text(layer) for layer in layers)
    out |= {f"sae.{k}": v for k, v in (config.get("sae") or {}).items()}
    out |= {f"train.{k}": v for k, v in (meta.get("train") or {}).items()}
    manifest = provenance.get("manifest_hash")
    out |= {"steps": meta.get("steps"), "grid": provenance.get("grid"), "data": manifest[:12] if manifest else None}
    out |= {f"evaluate.{k}": v for k, v in ((metrics or {}).get("config") or {}).items()}
    return out


def differing_settings(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settings whose values are not the same in every run: key -> {run: value} (runs that have it).

    A key some runs lack counts as a difference, except a model's own setting (``<key>.<model>``
    with ``key`` in :data:`MODEL_KEYS`): a run without that model lacks it, which the ``models``
    row already shows, so it counts only when the runs that have it differ. Keys keep the order
    of their first appearance, runs the order given.
    """
    keys = list(dict.fromkeys(k for values in settings.values() for k in values))
    out = {}
    for key in keys:
        per_model = key.split(".", 1)[0] in MODEL_KEYS
        seen = {json.dumps(values[key], sort_keys=True, default=str) if key in values else None
                for values in settings.values() if key in values or not per_model}
        if len(seen) > 1:
            out[key] = {run: values[key] for run, values in settings.items() if key in values}
    return out


def run_metrics(run: RunRecord) -> dict[str, Any]:
    """A run's metrics as flat keys (what :data:`usae.report.compare_tables.FAMILIES` shows).

    Per model ``r2_self.<m>``, ``dead.<m>``, ``dead_above_tau.<m>``, ``l0.<m>`` and
    ``final_loss.<m>``; ``r2_cross_min`` and ``r2_cross_mean`` over the off-diagonal of the
    per-dimension R2 matrix (None for one model); ``universal`` (concepts with firing entropy
    >= 0.9; None for one model), ``universal_cofiring`` (those co-firing at least the evaluation's
    ``min_cofires`` times, at least once), ``universal_beyond_chance`` (of those, the ones co-firing more
    often than chance), ``universal_energetic`` (those whose energy is at least the
    mean concept's), ``universal_energy_share`` (their share of all concepts' energy) and
    ``universal_factor`` (those with planted-factor AUROC >= 0.9; only when the concept table has
    ``factor_auroc``); the Pearson r's; ``steps``,
    ``train_seconds`` (the logged steps' time: sum of tokens / tokens_per_s over the log rows),
    ``tokens_per_s`` (median over the rows) and ``train_wall_seconds`` (the Snakemake benchmark
    of ``train_usae``, when the run folder sits in a results tree that has one).
    """
    m, models = run.metrics, run.models
    r2 = np.asarray(m.get("r2_per_dim", []), dtype=float)
    out: dict[str, Any] = {}
    if r2.shape == (len(models), len(models)):
        cross = r2[~np.eye(len(models), dtype=bool)]
        out |= {f"r2_self.{name}": float(r2[i, i]) for i, name in enumerate(models)}
        out |= {"r2_cross_min": float(cross.min()) if cross.size else None,
                "r2_cross_mean": float(cross.mean()) if cross.size else None}
    for key, source in (("dead", "dead_fraction"), ("dead_above_tau", "dead_above_tau_fraction"), ("l0", "l0")):
        out |= {f"{key}.{name}": v for name, v in (m.get(source) or {}).items()}
    out |= _universality(run)
    out |= {"pearson": m.get("pearson_log_cofires_log_energy"),
            "pearson_min_cofires": m.get("pearson_log_cofires_log_energy_min_cofires"),
            "concepts_firing_in_all_models": m.get("concepts_firing_in_all_models")}
    out |= _training(run)
    return out


def _universality(run: RunRecord) -> dict[str, Any]:
    if run.concepts is None:
        return {}
    return universal_counts(run.concepts, len(run.models), **cofire_test(run.metrics))


def _training(run: RunRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": (run.config.get("meta") or {}).get("steps")}
    log = run.log
    if log is not None and not log.empty and {"step", "tokens_per_s"} <= set(log.columns):
        batch = ((run.config.get("meta") or {}).get("train") or {}).get("batch_tokens")
        steps = np.diff(np.concatenate([[-1], log["step"].to_numpy(dtype=float)]))
        speed = log["tokens_per_s"].to_numpy(dtype=float)
        out["train_seconds"] = float(np.sum(steps * batch / speed)) if batch else None
        out["tokens_per_s"] = float(np.median(speed))
        out |= {f"final_loss.{name}": float(log[f"loss_{name}"].iloc[-1])
                for name in run.models if f"loss_{name}" in log.columns}
    wall = _benchmark_seconds(run.path)
    if wall is not None:
        out["train_wall_seconds"] = wall
    return out


def _benchmark_seconds(run_dir: Path) -> float | None:
    """Wall-clock seconds of the run's ``train_usae`` job, from the results tree's benchmark, if any."""
    if run_dir.parent.name != "runs":
        return None
    path = paths.stage_path(paths.BENCHMARK, run_dir.parent.parent, rule="train_usae", name=run_dir.name)
    try:
        return float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def read_baselines(eval_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The baselines of an evaluation (``eval/baselines.json``) as {baseline name: {metric key: value}}.

    Each row of its ``table`` other than the trained USAE's becomes one set of metrics in the
    keys of :func:`run_metrics` (``r2_self.<m>``, ``r2_cross_min``, ``r2_cross_mean``,
    ``dead_above_tau.<m>``, ``concepts_firing_in_all_models`` and the universal-concept counts
    of :data:`usae.evaluation.universal.COUNTS` the row has); a metric the baseline does not
    define (null) stays None. No file: no baselines.
    """
    path = Path(eval_dir) / BASELINES
    if not path.is_file():
        return {}
    out = {}
    for row in json.loads(path.read_text()).get("table", []):
        if row.get("method") in (None, "usae"):
            continue
        values = {f"r2_self.{m}": v for m, v in (row.get("r2_self") or {}).items()}
        values |= {f"dead_above_tau.{m}": v for m, v in (row.get("dead_above_tau_fraction") or {}).items()}
        values |= {key: row[key] for key in ("r2_cross_min", "r2_cross_mean", *COUNTS,
                                              "concepts_firing_in_all_models") if key in row}
        out[str(row["method"])] = values
    return out


def with_floors(metrics: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> tuple[dict[str, Any],
                                                                                         dict[str, dict[str, Any]]]:
    """A run's metrics with its baselines' values of the metrics shown with floors
    (:func:`usae.report.compare_tables.floor_metrics`) as floor keys, for a metric the run has; and the
    baselines without those metrics (they are read in the run's column, not in one of their own)."""
    floored = floor_metrics()
    out = dict(metrics)
    for base, values in baselines.items():
        out |= {floor_key(key, base): v for key, v in values.items() if key in floored and key in metrics}
    return out, {base: {k: v for k, v in values.items() if k not in floored} for base, values in baselines.items()}


def floored_metrics(run: RunRecord) -> dict[str, Any]:
    """The run's metrics (:func:`run_metrics`) with the floors of its evaluation's baselines (:func:`with_floors`)."""
    return with_floors(run_metrics(run), read_baselines(run.path / "eval"))[0]


def metric_columns(runs: dict[str, RunRecord], test_sets: list[str] | tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Column name -> metrics: each run (:func:`run_metrics`, with its baselines' floors, :func:`with_floors`),
    then each run's baselines as ``<run>: <name>``, then each run on each of ``test_sets`` as
    ``<run> on <test set>`` (its evaluation metrics only)."""
    columns, bases = {}, {}
    for name, run in runs.items():
        columns[name], bases[name] = with_floors(run_metrics(run), read_baselines(run.path / "eval"))
    for name in runs:
        columns |= {f"{name}: {base}": values for base, values in bases[name].items()}
    for name, run in runs.items():
        for test_set in test_sets:
            on = load_evaluation(run, test_set)
            columns[on.name] = {k: v for k, v in run_metrics(on).items() if k not in _training(on)}
    return columns


def build_comparison(run_dirs: dict[str, str | Path], out_dir: str | Path,
                     test_sets: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the comparison page of the runs ``run_dirs`` (name -> run folder) to ``out_dir``; return index.html.

    Each run's evaluation on each of ``test_sets`` (config ``test_sets``) is a column of the tables too.

    The folder is replaced atomically: ``index.html``, ``figures/`` and ``static/style.css``.

    Raises:
        ValueError: no run. FileNotFoundError: a run without model or evaluation (all named).
    """
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    models = list(dict.fromkeys(m for run in runs.values() for m in run.models))
    settings = {name: run_settings(run.config, run.metrics) for name, run in runs.items()}
    with atomic_path(out_dir) as tmp:
        (tmp / "static").mkdir(parents=True)
        shutil.copyfile(STATIC / "style.css", tmp / "static" / "style.css")
        figures = comparison_figures({name: _panel_run(run) for name, run in runs.items()}, tmp / "figures")
        columns = metric_columns(runs, test_sets)
        rows = backbone_rows({name: _recorded_specs(run) for name, run in runs.items()})
        if rows is not None:
            columns = {name: rows.relabel(values) for name, values in columns.items()}
        context = {"runs": [_run_header(run, out_dir) for run in runs.values()], "models": models,
                   "baselines": [name for name in columns if name not in runs],
                   "rows_note": rows.note if rows is not None else None,
                   "differing": {k: {r: setting_text(v) for r, v in by_run.items()}
                                 for k, by_run in differing_settings(settings).items()},
                   "stability": _stability_rows(runs, settings), "criterion": CRITERION,
                   "tables": metric_tables(columns, rows.rows if rows is not None else models), "figures": figures,
                   "usae_version": __version__}
        (tmp / "index.html").write_text(environment().get_template("compare.html").render(**context), encoding="utf-8")
    logger.info("comparison of %d runs (%s) written to %s", len(runs), ", ".join(runs), out_dir)
    return out_dir / "index.html"


def _recorded_specs(run: RunRecord) -> dict[str, dict[str, Any] | None]:
    """Model -> the spec its extraction recorded (``model/config.json``), None for a run on arrays."""
    backbones = ((run.config.get("meta") or {}).get("provenance") or {}).get("backbones") or {}
    return {m: backbones.get(m) for m in run.models}


def _panel_run(run: RunRecord) -> PanelRun:
    r2 = np.asarray(run.metrics["r2_per_dim"], dtype=float) if "r2_per_dim" in run.metrics else None
    entropy = None
    if len(run.models) > 1 and run.concepts is not None and "firing_entropy" in run.concepts.columns:
        values = run.concepts["firing_entropy"].to_numpy(dtype=float)
        entropy = values[np.isfinite(values)]
    return PanelRun(run.models, r2, entropy, run.log)


def _run_header(run: RunRecord, out_dir: Path) -> dict[str, Any]:
    report = run.path / "report" / "index.html"
    link = os.path.relpath(report.resolve(), out_dir.resolve()) if report.is_file() else None
    return {"name": run.name, "path": str(run.path), "models": run.models, "report": link}


def _stability_rows(runs: dict[str, RunRecord], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The stability table: each run's verdict and what it rests on, then the settings training stability depends on.

    Each row: ``label``, ``cells`` (run -> text), ``classes`` (run -> CSS class), ``setting`` (a
    setting row) and ``differs`` (a setting whose value is not the same in every run).
    """
    verdicts = {name: training_stability(run.log, run.models) for name, run in runs.items()}
    measures = {"training": {n: v.verdict for n, v in verdicts.items()},
                "final loss above its minimum": {n: "-" if v.rise is None else f"{v.rise:.1%}"
                                                 for n, v in verdicts.items()},
                "NaN/inf values in the log": {n: f"{v.non_finite:,}" for n, v in verdicts.items()},
                "most dead at the end": {n: _most_dead(v.dead_at_end) for n, v in verdicts.items()}}
    classes = {n: {True: "ok", False: "bad"}.get(v.stable, "") for n, v in verdicts.items()}
    rows = [{"label": label, "cells": cells, "classes": classes if label == "training" else {}, "setting": False,
             "differs": False} for label, cells in measures.items()]
    differing = differing_settings(settings)
    for key in stability_settings(settings):
        values = {n: setting_text(s[key]) for n, s in settings.items() if key in s}
        rows.append({"label": key, "cells": values, "classes": {}, "setting": True, "differs": key in differing})
    return rows


def _most_dead(dead: dict[str, float]) -> str:
    if not dead:
        return "-"
    model = max(dead, key=dead.__getitem__)
    return f"{dead[model]:.1%} ({model})"


def compare_config_runs(cfg: PipelineConfig, runs: list[str] | None = None, out: str | Path | None = None) -> Path:
    """``usae compare``: the comparison of the config's runs (``runs``, default all) into ``out``
    (default ``<results>/compare``).

    Raises:
        ValueError: a run not in the config (all named).
    """
    unknown = [r for r in runs or [] if r not in cfg.runs]
    if unknown:
        raise ValueError(f"--run {unknown} not in the config's runs {sorted(cfg.runs)}")
    chosen = list(dict.fromkeys(runs)) if runs else list(cfg.runs)
    return build_comparison({r: paths.run_dir(cfg, r) for r in chosen}, out or paths.compare_dir(cfg),
                            sorted(cfg.test_sets))
