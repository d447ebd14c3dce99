"""Training progress as log lines: one per log row, and a summary when training ends.

The training loop logs these; they are what a job's log file shows of a run (progress
bars are drawn only on a terminal, :mod:`usae.progress`), so each line holds the whole
row: per-model figures grouped by kind (``loss``, and ``fvu``/``r2``/``dead...`` where
the row has them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SHARE_PREFIX = "dead"  # per-model figures that are shares of the latents, shown as percentages
HIDDEN = ("source",)  # per-model counts kept in the Parquet log, too detailed for a line


def per_model(row: dict[str, Any], names: list[str]) -> dict[str, dict[str, float]]:
    """The row's per-model figures grouped by kind: ``{"loss": {"m0": 0.1, ...}, "dead": ...}``,
    in the row's order; ``loss_m0`` is kind ``loss`` of model ``m0``."""
    by_length = sorted(names, key=len, reverse=True)  # "a_b16" before "b16": the longest name that ends the key
    groups: dict[str, dict[str, float]] = {}
    for key, value in row.items():
        name = next((n for n in by_length if key.endswith(f"_{n}")), None)
        if name is not None and key[: -len(name) - 1] not in HIDDEN:
            groups.setdefault(key[: -len(name) - 1], {})[name] = value
    return groups


def format_row(row: dict[str, Any], names: list[str], total: int) -> str:
    """``step 8/24 | loss m0 0.0123 m1 0.0456 | L0 4.0 | dead m0 0% m1 2.1% | 1234 tokens/s | lr 0.003``."""
    parts = [f"step {row['step'] + 1}/{total}"]
    for kind, values in per_model(row, names).items():
        shown = (f"{v:.1%}" if kind.startswith(SHARE_PREFIX) else f"{v:.4g}" for v in values.values())
        parts.append(" ".join([kind, *(f"{n} {v}" for n, v in zip(values, shown))]))
    parts += [f"L0 {row['l0']:.1f}", f"{row['tokens_per_s']:.0f} tokens/s", f"lr {row['lr']:.3g}"]
    return " | ".join(parts)


SCALARS = ("l0", "tokens_per_s", "lr")  # the row's figures over all models, in a line's order


def shown_values(row: dict[str, Any], names: list[str]) -> dict[str, float]:
    """The figures a log line shows, flat and unformatted, for trackers: ``{"loss/m0": 0.0123,
    ..., "dead/m1": 0.021, "l0": 4.0, "tokens_per_s": 1234.0, "lr": 0.003}``."""
    values = {f"{kind}/{name}": float(v) for kind, group in per_model(row, names).items() for name, v in group.items()}
    values.update({key: float(row[key]) for key in SCALARS})
    return values


def summarize(rows: list[dict[str, Any]], names: list[str]) -> tuple[dict[str, float], float]:
    """Final loss per model (the last row's) and the mean tokens/s (the first window, which
    includes start-up, left out when there is another)."""
    final = {n: rows[-1][f"loss_{n}"] for n in names} if rows else {}
    speeds = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows] or [0.0]
    return final, float(np.mean(speeds))


def format_summary(rows: list[dict[str, Any]], names: list[str], *, steps: int, total: int, ran: int,
                   seconds: float) -> str:
    """``train: 24 of 24 steps (24 run now) in 3.1 s, 1234 tokens/s; final loss m0 0.01 m1 0.02``."""
    final, speed = summarize(rows, names)
    losses = " ".join(f"{n} {v:.4g}" for n, v in final.items()) or "none (no log row yet)"
    return (f"train: {steps} of {total} steps ({ran} run now) in {seconds:.1f} s, {speed:.0f} tokens/s; "
            f"final loss {losses}")
