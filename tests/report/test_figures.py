"""Tests for usae.report.figures on small hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from usae.report.figures import Figure, make_figures  # noqa: E402

KEYS = {"training", "r2", "entropy", "cofire", "scatter", "cofire_matrix", "density", "energy_share"}
DEFINITION_MARKERS = {
    "training": "loss",
    "r2": "1 - SSE",
    "entropy": "FE_k",
    "cofire": "CFP_k",
    "scatter": "Pearson",
    "cofire_matrix": "on which model j fires the same concept",
    "density": "log10(fires / tokens)",
    "energy_share": "share_i(k) = energy_i(k) / sum_j energy_j(k)",
}


def _write_run(run_dir: Path, models: list[str], n_concepts: int = 50, fire: bool = True) -> Path:
    """Write a minimal hand-made run folder and return it."""
    rng = np.random.default_rng(0)
    m = len(models)
    (run_dir / "eval").mkdir(parents=True)
    steps = np.arange(10, 110, 10)
    log = {"step": steps, "lr": np.linspace(1e-3, 0, len(steps)), "l0": np.full(len(steps), 8.0),
           "tokens_per_s": np.full(len(steps), 1e4)}
    for i, name in enumerate(models):
        log[f"loss_{name}"] = 1.0 / (1 + steps / (20 + i))
        log[f"dead_{name}"] = np.linspace(0.0, 0.1 * (i + 1), len(steps))
        log[f"source_{name}"] = np.full(len(steps), 3)
    pd.DataFrame(log).to_parquet(run_dir / "train_log.parquet")

    fires = rng.integers(1, 200, size=(n_concepts, m)) if fire else np.zeros((n_concepts, m), dtype=int)
    cofires = (fires.min(axis=1) * rng.uniform(0, 1, n_concepts)).astype(int)
    total = fires.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = fires / total
        fe = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1) / np.log(max(m, 2))
    fe = np.where(total[:, 0] > 0, fe, np.nan) if m > 1 else np.full(n_concepts, np.nan)
    energy = rng.lognormal(-3, 1.5, size=(n_concepts, m)) * (fires > 0)
    table = {"concept": np.arange(n_concepts), "firing_entropy": fe, "cofires": cofires,
             "energy_total": energy.sum(axis=1)}
    for i, name in enumerate(models):
        table[f"fires_{name}"] = fires[:, i]
        table[f"energy_{name}"] = energy[:, i]
        with np.errstate(divide="ignore", invalid="ignore"):
            table[f"cfp_{name}"] = np.where(fires[:, i] > 0, cofires / fires[:, i], np.nan)
    pd.DataFrame(table).to_parquet(run_dir / "eval" / "concepts.parquet")

    r2 = (0.5 + 0.4 * np.eye(m) + 0.05 * rng.standard_normal((m, m))).tolist()
    if m > 1:
        r2[0][1] = -0.3  # a clipped cell
    metrics = {
        "models": models, "r2_global_mean": r2, "r2_per_dim": r2, "mse": r2,
        "l0": {n: 8.0 for n in models}, "dead": {n: 0 for n in models}, "dead_fraction": {n: 0.0 for n in models},
        "cofire_proportion_mean": {n: (0.3 if fire else None) for n in models},
        "pearson_log_cofires_log_energy": 0.5, "pearson_log_cofires_log_energy_min_cofires": None,
        "min_cofires": 1000, "tau": 0.1, "n_tokens": 1000,
        "cofire_matrix": (0.5 + 0.5 * np.eye(m)).tolist(),
        "definitions": {"firing_entropy": "FE_k = -(1/log M) sum_i p_i log p_i, p_i = fires_i / sum_j fires_j"},
    }
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def _check_pngs(figures: dict[str, Figure], out_dir: Path) -> None:
    assert set(figures) == KEYS
    for key, fig in figures.items():
        assert isinstance(fig, Figure)
        assert not fig.path.is_absolute()
        path = out_dir / fig.path
        assert path.is_file(), key
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size[0] > 100 and img.size[1] > 100
        assert fig.title
        assert DEFINITION_MARKERS[key] in fig.caption, (key, fig.caption)


def test_figures_written_with_captions(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", ["a", "b", "c"])
    figures = make_figures(run, tmp_path / "out")
    _check_pngs(figures, tmp_path / "out")
    assert "paper: bimodal" in figures["entropy"].caption
    assert "FE >= 0.99" in figures["entropy"].caption


def test_deterministic_bytes(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", ["a", "b"])
    first = make_figures(run, tmp_path / "out1")
    second = make_figures(run, tmp_path / "out2")
    for key in KEYS:
        a = (tmp_path / "out1" / first[key].path).read_bytes()
        b = (tmp_path / "out2" / second[key].path).read_bytes()
        assert a == b, key
        assert b"Software" not in a


def test_no_concept_fires(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", ["a", "b", "c"], fire=False)
    figures = make_figures(run, tmp_path / "out")
    _check_pngs(figures, tmp_path / "out")
    assert "no concept fires" in figures["entropy"].caption


def test_single_model(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", ["only"])
    figures = make_figures(run, tmp_path / "out")
    _check_pngs(figures, tmp_path / "out")


def test_missing_inputs(tmp_path: Path) -> None:
    run = tmp_path / "empty_run"
    run.mkdir()
    figures = make_figures(run, tmp_path / "out")
    assert set(figures) == KEYS
    for fig in figures.values():
        assert (tmp_path / "out" / fig.path).is_file()


def test_r2_colours_span_the_values(tmp_path: Path) -> None:
    """The R2 heatmaps' colour range is the values' span rounded out to 0.05, and the caption states it."""
    run = _write_run(tmp_path / "run", ["a", "b"])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["r2_per_dim"] = metrics["r2_global_mean"] = [[0.97, 0.77], [0.81, 0.93]]
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    figures = make_figures(run, tmp_path / "out")
    assert "Colour range 0.75 to 1.00" in figures["r2"].caption


def test_sharing_figures_say_what_is_missing(tmp_path: Path) -> None:
    """An evaluation from before the co-firing matrix: that panel asks for a rerun, the others still draw."""
    run = _write_run(tmp_path / "run", ["a", "b", "c"])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    del metrics["cofire_matrix"]
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    figures = make_figures(run, tmp_path / "out")
    assert "rerun evaluate" in figures["cofire_matrix"].caption
    assert "Concepts that never fire (not drawn): a 0, b 0, c 0" in figures["density"].caption
    assert "Drawn: the 25 concepts with the largest energy_total" in figures["energy_share"].caption
