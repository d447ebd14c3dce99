"""The report's "Other data" section: a run's metrics on each test set beside its training data's.

A test set (config ``test_sets``) is evaluated without retraining, on every one of its images,
standardised with the training data's statistics; the training data's column is its validation split
(with its random dictionary's floors; a test set has no baselines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from usae.report.compare import floored_metrics, load_evaluation, load_runs, metric_tables, run_metrics

FAMILIES = ("r2-self", "r2-cross", "dead", "dead-tau", "universality")
"""Tables of :data:`usae.report.compare_tables.FAMILIES` that the section shows (evaluation metrics only)."""
ENTROPY_BINS = 10
TRAINING_COLUMN = "training data (validation)"


def other_data_section(run_dir: str | Path, test_sets: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """The section's tables for the run in ``run_dir`` and its evaluations on ``test_sets``; None without any.

    Returns:
        ``columns`` (the training data's, then each test set's), ``images`` (images evaluated
        per column), ``tables`` (as :func:`usae.report.compare_tables.metric_tables`, families
        :data:`FAMILIES`), ``r2`` (per column the per-dimension R2 matrix, rows: source model),
        ``models``, ``entropy_edges`` and ``entropy`` (per column the counts of firing concepts
        in :data:`ENTROPY_BINS` bins of firing entropy over 0..1; None for one model).

    Raises:
        FileNotFoundError: the run or one of its test-set evaluations is missing.
    """
    if not test_sets:
        return None
    run_dir = Path(run_dir)
    run = load_runs({run_dir.name: run_dir})[run_dir.name]
    records = {TRAINING_COLUMN: run, **{name: load_evaluation(run, name) for name in test_sets}}
    columns = {name: run_metrics(record) for name, record in records.items()}
    columns[TRAINING_COLUMN] = floored_metrics(run)
    edges = np.linspace(0.0, 1.0, ENTROPY_BINS + 1)
    return {
        "columns": list(records), "models": run.models, "entropy_edges": edges.tolist(),
        "images": {name: record.metrics.get("n_images") for name, record in records.items()},
        "tables": [t for t in metric_tables(columns, run.models) if t["key"] in FAMILIES],
        "r2": {name: record.metrics.get("r2_per_dim") for name, record in records.items()},
        "entropy": {name: _entropy_counts(record.concepts, edges, len(run.models)) for name, record in records.items()},
    }


def _entropy_counts(concepts: Any, edges: np.ndarray, n_models: int) -> list[int] | None:
    if n_models < 2 or concepts is None or "firing_entropy" not in concepts.columns:
        return None
    fe = concepts["firing_entropy"].to_numpy(dtype=float)
    return np.histogram(np.clip(fe[np.isfinite(fe)], 0.0, 1.0), bins=edges)[0].astype(int).tolist()
