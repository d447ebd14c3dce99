"""Optional experiment tracking (TensorBoard, Weights & Biases), imported only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


class NoTracker:
    """The default: the Parquet training log is the record."""

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, out_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError("train.tracking = 'tensorboard' needs the tensorboard package: "
                             "pip install tensorboard") from err
        self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, row: dict[str, Any], step: int) -> None:
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ValueError("train.tracking = 'wandb' needs the wandb package: pip install wandb") from err
        self.run = wandb.init(project="usae", dir=str(out_dir), config=settings, resume="allow")

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(row, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str, out_dir: Path, settings: dict[str, Any]) -> Tracker:
    """The tracker for ``train.tracking``: ``none``, ``tensorboard`` or ``wandb``."""
    if kind == "tensorboard":
        return TensorBoardTracker(out_dir)
    if kind == "wandb":
        return WandbTracker(out_dir, settings)
    return NoTracker()
