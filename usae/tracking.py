"""Experiment tracking: a run's training rows and evaluation metrics, also sent to TensorBoard or
Weights & Biases (``tracking.backend``); ``train_log.parquet`` and ``metrics.json`` stay the record.

Backends are the entries of :data:`usae.registry.TRACKERS`, each importing its package only when
a run starts (the config check imports this module: it imports no torch). A tracker run's id comes from the training fingerprint (the checkpoints' key), so a
resumed job continues the same W&B run, and evaluation adds its metrics to it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from usae.config import TrackingConfig
from usae.registry import TRACKERS
from usae.training.log_lines import shown_values

logger = logging.getLogger(__name__)

ID_LENGTH = 16  # hex digits of the fingerprint: 64 bits, well within W&B's id length


@dataclass(frozen=True)
class TrackedRun:
    """What a backend is told about the run it records.

    Attributes:
        run_id: stable id, from the training fingerprint (:func:`run_id`).
        name: name shown (``tracking.name`` filled).
        folder: the run's folder; a backend writes its files under it.
        settings: the run's settings, shown as the tracker run's config.
        first_step: the first step about to be logged when the run resumes (older records from
            it on are replaced), or None for a run logged from its start.
    """

    run_id: str
    name: str
    folder: Path
    settings: dict[str, Any]
    first_step: int | None = None


def run_id(fingerprint: str) -> str:
    """The tracker run id of a training run: the start of its fingerprint."""
    return fingerprint[:ID_LENGTH]


class Tracker:
    """A backend: built for one run, sent values, closed. This base sends nothing."""

    package: ClassVar[str | None] = None
    """The package the backend imports (checked with the config: :meth:`missing_package`)."""

    def __init__(self, cfg: TrackingConfig, run: TrackedRun) -> None:
        pass

    @classmethod
    def missing_package(cls) -> str | None:
        """The package the backend needs when it is not installed (checked with the config), else None."""
        if cls.package is None or importlib.util.find_spec(cls.package) is not None:
            return None
        return cls.package

    def log(self, values: dict[str, float], step: int) -> None:
        """Record ``values`` at training step ``step``."""

    def summary(self, values: dict[str, float], step: int) -> None:
        """Record final figures (evaluation) of the model trained for ``step`` steps."""

    def close(self) -> None:
        """Flush and end the tracker run."""


class NoTracker(Tracker):
    """``none``: nothing is sent."""


class TensorBoardTracker(Tracker):
    """``tensorboard``: event files in ``<run folder>/tensorboard/``. A resumed run purges the
    events from its first replayed step on, so the history holds every row once."""

    package = "tensorboard"

    def __init__(self, cfg: TrackingConfig, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.folder / "tensorboard"), purge_step=run.first_step)
        self.writer.add_text("settings", f"```\n{json.dumps(run.settings, indent=2)}\n```", run.first_step or 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.log(values, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """``wandb``: a Weights & Biases run, files under ``<run folder>/wandb/``, resumed by id."""

    package = "wandb"

    def __init__(self, cfg: TrackingConfig, run: TrackedRun) -> None:
        import wandb

        run.folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=run.name, tags=list(cfg.tags),
                              mode=cfg.mode, id=run.run_id, resume="allow", dir=str(run.folder),
                              config=run.settings)

    def log(self, values: dict[str, float], step: int) -> None:
        # W&B drops (with a warning) a step below one it has: a resumed run's rows it has already.
        if step >= self.run.step:
            self.run.log(values, step=step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


def open_tracker(cfg: TrackingConfig | None, run: TrackedRun) -> Tracker:
    """The backend of ``cfg.backend`` started for ``run`` (``none`` without a config)."""
    cfg = cfg or TrackingConfig()
    if cfg.backend != "none":
        logger.info("tracking: %s run %s (%s)", cfg.backend, run.run_id, run.name)
    return TRACKERS.get(cfg.backend, setting="tracking.backend")(cfg, run)


def start_training(cfg: TrackingConfig | None, *, fingerprint: str, folder: Path, settings: dict[str, Any],
                   names: list[str], rows: list[dict[str, Any]]) -> Tracker:
    """The tracker of a training run in ``folder`` (named after it), with the rows logged so far
    sent first: a resumed run's checkpointed rows, which a backend that has them skips or replaces,
    and one that has not (tracking turned on later) gets whole."""
    first = rows[0]["step"] if rows else None
    name = (cfg or TrackingConfig()).run_name(folder.name)
    tracker = open_tracker(cfg, TrackedRun(run_id(fingerprint), name, folder, settings, first))
    for row in rows:
        send_row(tracker, row, names)
    return tracker


def send_row(tracker: Tracker, row: dict[str, Any], names: list[str]) -> None:
    """One training-log row, as its log line shows it, under ``train/``."""
    tracker.log({f"train/{k}": v for k, v in shown_values(row, names).items()}, row["step"])


def track_evaluation(cfg: TrackingConfig | None, model_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Send evaluation ``metrics`` to the tracker run of the model's training (the run in the
    model folder's parent, the id from the fingerprint the model records); nothing for ``none``."""
    if cfg is None or cfg.backend == "none":
        return
    from usae.sae.integrity import CONFIG  # here: the usae.sae package imports torch, the config check must not

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / CONFIG).read_text()).get("meta", {})
    if not meta.get("fingerprint"):
        logger.warning("tracking: %s records no training fingerprint (saved before tracking ids); its "
                       "evaluation is not sent", model_dir)
        return
    folder = model_dir.resolve().parent
    tracker = open_tracker(cfg, TrackedRun(run_id(meta["fingerprint"]), cfg.run_name(folder.name), folder, {}))
    try:
        tracker.summary(evaluation_values(metrics), int(meta.get("steps", 0)))
    finally:
        tracker.close()


def evaluation_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json``, flat under ``eval/``: a per-model list or matrix by model
    name (``eval/r2_per_dim/<from>/<to>``), a mapping by key; texts, nulls and settings left out."""
    names = metrics.get("models", [])
    values: dict[str, float] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (int, float)):
            values[key] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}/{k}", v)
        elif isinstance(value, list) and len(value) == len(names):
            for name, v in zip(names, value):
                walk(f"{key}/{name}", v)

    for key, value in metrics.items():
        if key not in ("models", "config", "definitions"):
            walk(f"eval/{key}", value)
    return values
