"""Training checkpoints: written atomically every N steps, the newest two kept, found on restart.

A checkpoint records a fingerprint of everything that determines the run (settings and
data); a restart resumes only from a checkpoint with the same fingerprint.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from usae.atomic import atomic_path

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{9})\.pt$")
KEEP = 2


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as checkpoint ``step`` and delete all but the newest ``KEEP``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:09d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(_checkpoints(directory))[:-KEEP]:
        old[1].unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of this exact run, or None to start from scratch."""
    for step, path in sorted(_checkpoints(directory), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated file from a kill during torch.save
            logger.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        if state.get("fingerprint") != expected_fingerprint:
            logger.warning("ignoring checkpoint %s: it belongs to other settings or data", path)
            continue
        logger.info("resuming from %s (step %d)", path, step)
        return state
    return None


def remove_stale(directory: Path, expected_fingerprint: str) -> None:
    """Delete checkpoints of other settings, so they never shadow this run's own."""
    for _, path in _checkpoints(directory):
        try:
            stale = torch.load(path, map_location="cpu", weights_only=False).get("fingerprint") != expected_fingerprint
        except Exception:  # unreadable: useless either way
            stale = True
        if stale:
            logger.info("removing checkpoint %s of earlier settings", path)
            path.unlink(missing_ok=True)


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.exists():
        return []
    return [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
