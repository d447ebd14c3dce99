"""Extraction parts as intermediates: deleted once their aligned store is written (``extract.keep: false``).

The aligned store holds everything training and evaluation read; the parts (each model's
native patch grid, plus its CLS/register tokens) are needed again only to prepare with
other settings, which Snakemake then extracts afresh. Deleting them halves the disk a run
keeps at the paper's widths.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from usae.activations.store import PROTOCOL
from usae.atomic import remove_path
from usae.paths import STORE_MARKER

logger = logging.getLogger(__name__)


def delete_extraction_parts(part_paths: list[str | Path]) -> list[Path]:
    """Delete whole extraction part stores; return those deleted (absent ones are skipped).

    Every path is checked before any is deleted, so a list with a wrong path deletes nothing.
    The emptied ``<layer>`` and ``<model>`` folders above the parts are removed too.

    Raises:
        ValueError: a path that exists but is not a usae extraction part (no Zarr store, another
            protocol, or a store of another stage such as an aligned store); the message names it.
    """
    present = [Path(p) for p in part_paths if Path(p).exists()]
    for path in present:
        _check_extraction_part(path)
    for path in present:
        remove_path(path)
        logger.info("deleted extraction part %s (extract.keep is false: its aligned store is written)", path)
        _remove_empty_parents(path, levels=2)
    return present


def _check_extraction_part(path: Path) -> None:
    marker = path / STORE_MARKER
    try:
        attrs = json.loads(marker.read_text()).get("attributes", {})
    except (OSError, ValueError):
        raise ValueError(f"refusing to delete {path}: not a Zarr store (no readable {STORE_MARKER})") from None
    if attrs.get("protocol") != PROTOCOL:
        raise ValueError(f"refusing to delete {path}: not a usae store (protocol {attrs.get('protocol')!r}, "
                         f"expected {PROTOCOL!r})")
    if attrs.get("stage") != "extract":
        raise ValueError(f"refusing to delete {path}: a store of stage {attrs.get('stage')!r}, not an extraction "
                         "part (stage 'extract')")


def _remove_empty_parents(path: Path, levels: int) -> None:
    """Remove up to ``levels`` folders above ``path`` while they are empty (another job may be filling one)."""
    for parent in list(path.parents)[:levels]:
        try:
            os.rmdir(parent)
        except OSError:  # not empty, or gone already
            return
