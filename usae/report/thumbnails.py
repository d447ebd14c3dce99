"""Square JPEG thumbnails of manifest images, for the concept cards and pages."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from PIL import Image

from usae.data.images import ImageReadError, load_rgb

logger = logging.getLogger(__name__)


def write_thumbnails(manifest_path: Path, rows: Iterable[int], thumbs_dir: Path,
                     thumb_size: int = 128) -> tuple[list[int], list[tuple[int, str]]]:
    """Write ``thumbs_dir/<row>.jpg`` (square resize) for each manifest row.

    Returns:
        Rows written, and ``(row, reason)`` for rows that are not in the manifest or unreadable.
    """
    manifest = pd.read_parquet(manifest_path, columns=["index", "path"]).set_index("index")["path"]
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    written, unreadable = [], []
    for row in sorted(set(int(r) for r in rows)):
        if row not in manifest.index:
            unreadable.append((row, "not in the manifest"))
            continue
        path = Path(manifest.loc[row])
        if not path.is_absolute() and not path.exists():
            path = Path(manifest_path).parent / path
        try:
            img = load_rgb(path).resize((thumb_size, thumb_size), Image.Resampling.BICUBIC)
        except ImageReadError as err:
            unreadable.append((row, str(err)))
            continue
        img.save(thumbs_dir / f"{row}.jpg", quality=85)
        written.append(row)
    for row, reason in unreadable:
        logger.warning("explorer: image row %d skipped: %s", row, reason)
    return written, unreadable
