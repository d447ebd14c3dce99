"""Training checkpoints: written atomically every N steps, the newest two kept, found on restart.

A checkpoint records a fingerprint of everything that determines the run (settings and
data content, never paths); a restart resumes only from a checkpoint with the same
fingerprint. The fingerprint's first 12 hex digits are in the file name
(``step_000000200.3f9a0c1b2d4e.pt``), so choosing and pruning never loads a checkpoint.

Checkpoints of other settings are deleted only once this run has written its own first
checkpoint: a run that cannot start (bad data, a crash before step 1) deletes nothing, and
going back to the old settings still resumes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from usae.atomic import atomic_path

logger = logging.getLogger(__name__)

# A tag-less name is a checkpoint of an earlier format: never resumed, removed like a stale one.
_NAME = re.compile(r"^step_(\d{9})(?:\.([0-9a-f]{12}))?\.pt$")
TAG_LENGTH = 12
KEEP = 2


class Checkpoint(NamedTuple):
    step: int
    tag: str | None
    path: Path


def checkpoint_path(directory: Path, step: int, fingerprint: str) -> Path:
    return directory / f"step_{step:09d}.{fingerprint[:TAG_LENGTH]}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` (which holds its ``fingerprint``) as checkpoint ``step``; then delete
    every checkpoint of other settings and all but the newest ``KEEP`` of this run."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = state["fingerprint"][:TAG_LENGTH]
    path = checkpoint_path(directory, step, state["fingerprint"])
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    own = []
    for found in sorted(find_checkpoints(directory)):
        if found.tag == tag:
            own.append(found)
        else:
            logger.info("removing checkpoint %s of earlier settings", found.path)
            found.path.unlink(missing_ok=True)
    for old in own[:-KEEP]:
        old.path.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of this exact run, or None to start from scratch."""
    found = sorted(find_checkpoints(directory), reverse=True)
    own = [c for c in found if c.tag == expected_fingerprint[:TAG_LENGTH]]
    if len(own) < len(found):
        logger.info("%d checkpoint(s) in %s belong to other settings or data: kept until this run writes its "
                    "first checkpoint", len(found) - len(own), directory)
    for step, _, path in own:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a truncated file from a kill during torch.save
            logger.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        if state.get("fingerprint") != expected_fingerprint:  # the 12-digit tag matched by chance
            logger.warning("ignoring checkpoint %s: it belongs to other settings or data", path)
            continue
        logger.info("resuming from %s (step %d)", path, step)
        return state
    return None


def find_checkpoints(directory: Path) -> list[Checkpoint]:
    """Every checkpoint file in ``directory`` (none if it does not exist)."""
    if not directory.exists():
        return []
    return [Checkpoint(int(m.group(1)), m.group(2), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
