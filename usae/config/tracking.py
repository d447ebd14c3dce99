"""Settings of experiment tracking (config section ``tracking``): where training rows and
evaluation metrics are also sent, besides ``train_log.parquet`` and ``eval/metrics.json``."""

from __future__ import annotations

from dataclasses import dataclass

from usae.config.base import from_dict
from usae.config.checks import Section
from usae.config.settings import setting
from usae.registry import TRACKERS

RUN_PLACEHOLDER = "{run}"
"""What ``tracking.name`` may contain: the run's name (its key under ``runs``, or the ``--out`` folder's name)."""


@dataclass(frozen=True, kw_only=True)
class TrackingConfig(Section):
    """An optional tracker for every run of the config (``pip install 'usae[tracking]'``)."""

    section_name = "tracking"

    backend: str = setting(
        "none", "`tensorboard` (event files in `results/runs/<run>/tensorboard/`) or `wandb` (Weights & Biases); "
        "needs the package (`pip install 'usae[tracking]'`), checked at start. Tracking changes no result, so changing `tracking` reruns "
        "nothing; to send a finished run: `snakemake --forcerun train_usae` (from its final checkpoint: no step "
        "again, every logged row is sent).",
        choices=TRACKERS)
    project: str = setting("usae", "W&B project.")
    entity: str | None = setting(None, "W&B entity (user or team); `null` = your default entity.")
    name: str = setting(RUN_PLACEHOLDER, "Run name shown by W&B; `{run}` is replaced by the run's name.")
    tags: tuple[str, ...] = setting((), "W&B tags of every run.", unique=True, item="tag")
    mode: str = setting("online", "W&B mode: `online`, `offline` (files under `results/runs/<run>/wandb/`, sent "
                                  "later with `wandb sync`) or `disabled`.", choices=("online", "offline", "disabled"))

    def run_name(self, run: str) -> str:
        """The name shown for run ``run``: :attr:`name` with ``{run}`` filled."""
        return self.name.replace(RUN_PLACEHOLDER, run)


def workflow_tracking(config: dict) -> TrackingConfig:
    """The ``tracking`` section of the workflow's whole config (``snakemake.config``).

    The rules read it from there, not from ``params``: a tracker changes no result, so turning it
    on or off must not rerun training and everything after it.
    """
    return from_dict(TrackingConfig, config.get("tracking") or {}, section="tracking")
