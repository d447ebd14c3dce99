"""Write-then-rename, so a file either holds a finished result or does not exist."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``, on error it is removed.

    Works for files and directories (an existing directory at ``path`` is replaced only
    once the new one is complete). One writer per path is assumed (Snakemake gives each
    output one job), so temporary siblings of other processes can only be leftovers of
    killed attempts: they are removed first, as they may be large stores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    for stale in (p for p in path.parent.iterdir() if p.name.startswith(prefix)):
        logger.info("removing %s, left by an interrupted attempt", stale)
        remove_path(stale)
    tmp = path.with_name(f"{prefix}{os.getpid()}")
    try:
        with _disk_full_names(path):
            yield tmp
        if path.is_dir() and tmp.is_dir():
            remove_path(path)
        os.replace(tmp, path)
    finally:
        remove_path(tmp)


# torch.save reports a full disk from its C++ writer without errno or path.
# Its failed writes carry one of these; a full disk is by far their most common cause.
_FULL_DISK_SIGNS = ("unexpected pos", "iostream error", "No space left on device")


@contextlib.contextmanager
def _disk_full_names(path: Path) -> Iterator[None]:
    """Re-raise a full disk while writing ``path`` as ``OSError(ENOSPC)`` that names ``path``.

    Writers report it in their own words (``[Errno 28]`` with no path, or torch's
    ``inline_container.cc: unexpected pos``); the user needs to know which disk filled.
    """
    try:
        yield
    except (OSError, RuntimeError) as err:
        full = getattr(err, "errno", None) == errno.ENOSPC or (
            isinstance(err, RuntimeError) and any(sign in str(err) for sign in _FULL_DISK_SIGNS))
        if not full:
            raise
        raise OSError(errno.ENOSPC, f"no space left on device: {path} (free space on its disk, then rerun; "
                      f"finished results were not changed; the writer said: {str(err)[:160]})") from err


def remove_path(path: Path) -> None:
    """Delete a file, a symlink or a whole folder; nothing if ``path`` does not exist."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
