"""Zarr v3 activation stores: creation, chunk-aligned writing, atomic publish, checked opening.

The layout is specified in ``docs/stores.md``; :data:`PROTOCOL` names its version.
A store becomes visible under its final path only once complete (written under a
temporary name, then renamed), so an interrupted job never leaves a store that looks done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from usae import STAGE_VERSIONS, __version__
from usae.activations.integrity import CheckedStore, rebuild_hint
from usae.atomic import atomic_path, remove_path

logger = logging.getLogger(__name__)

PROTOCOL = "usae-store/2"

# Every chunk is written, even one equal to the fill value (all-invalid images are zeros):
# an absent chunk then always means damage, which reading refuses (see ``integrity``).
WRITE_CONFIG = {"write_empty_chunks": True}


def compressors(name: str) -> tuple[Any, ...]:
    """Zarr bytes codecs for a config name (``none``, ``zstd`` or ``blosc-lz4``), then a CRC-32C checksum.

    The checksum comes last, over the stored bytes, so a flipped bit is caught before
    decompression and whatever the compressor.
    """
    table = {
        "none": (),
        "zstd": (ZstdCodec(level=1),),
        "blosc-lz4": (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle, typesize=2),),
    }
    if name not in table:
        raise ValueError(f"unknown compressor {name!r}; choose one of {sorted(table)}")
    return (*table[name], Crc32cCodec())


def create_array(group: zarr.Group, name: str, shape: tuple[int, ...], *, dtype: str,
                 chunk_rows: int, compressor: str = "none") -> zarr.Array:
    """A new, checksummed array chunked along its first axis only (whole rows per chunk)."""
    chunks = (max(1, min(chunk_rows, shape[0])),) + tuple(max(1, s) for s in shape[1:])
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=compressors(compressor),
                              fill_value=0, config=WRITE_CONFIG)


def write_array(group: zarr.Group, name: str, data: np.ndarray) -> zarr.Array:
    """A small, checksummed array (``rows``, ``valid``) written whole, replacing one of that name."""
    return group.create_array(name, data=data, compressors=compressors("none"), config=WRITE_CONFIG,
                              overwrite=True)


def reopen_array(group: zarr.Group, name: str) -> zarr.Array:
    """An array of a store being written, reopened to write more (every chunk written, as at creation)."""
    return group[name].with_config(WRITE_CONFIG)


@contextlib.contextmanager
def atomic_store(path: str | Path) -> Iterator[zarr.Group]:
    """Write a store under a temporary name and publish it at ``path`` only on success.

    An existing store at ``path`` is replaced only after the new one is complete.
    On an exception the temporary store is removed and nothing at ``path`` changes.
    Temporary stores left by killed attempts are deleted first (see ``atomic_path``).
    """
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        yield group
        group.attrs.update({"complete": True})


PROGRESS_FILE = "usae_progress.json"


def partial_path(path: str | Path) -> Path:
    """Where a resumable store is written until complete: a hidden sibling of ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


class ResumableStore:
    """A store written in row order that survives a kill: committed rows are kept for a rerun.

    It lives at :func:`partial_path` until :meth:`publish` renames it to its final path.
    :meth:`commit` records (atomically, in a small JSON file) how many leading rows are
    written, plus any small state the writer wants back. A rerun with the same
    ``resume_key`` reopens it and reads :attr:`progress`; another key (settings, data or
    code changed) or an unreadable progress file starts it afresh.
    """

    def __init__(self, path: str | Path, resume_key: str) -> None:
        self.path = Path(path)
        self.partial = partial_path(path)
        self.key = resume_key
        self.progress = self._read_progress()
        if self.progress is None:
            remove_path(self.partial)
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self.group = zarr.open_group(self.partial, mode="w", zarr_format=3)
        else:
            self.group = zarr.open_group(self.partial, mode="r+")

    @property
    def rows_done(self) -> int:
        """Leading rows committed by an earlier, interrupted attempt (0 for a fresh store)."""
        return int(self.progress["rows_done"]) if self.progress else 0

    def commit(self, rows_done: int, **state: Any) -> None:
        """Record that rows ``0:rows_done`` are written (call only after their chunks are)."""
        with atomic_path(self.partial / PROGRESS_FILE) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "rows_done": int(rows_done), **state}))

    def publish(self) -> Path:
        """Mark the store complete and move it to its final path (replacing an older store)."""
        self.group.attrs.update({"complete": True})
        (self.partial / PROGRESS_FILE).unlink(missing_ok=True)
        if self.path.exists():
            remove_path(self.path)
        os.replace(self.partial, self.path)
        return self.path

    def _read_progress(self) -> dict[str, Any] | None:
        file = self.partial / PROGRESS_FILE
        if not file.exists():
            return None
        try:
            progress = json.loads(file.read_text())
            zarr.open_group(self.partial, mode="r")
        except Exception as err:  # a progress file or store cut short by the kill
            logger.warning("discarding unreadable partial store %s: %s", self.partial, err)
            return None
        if progress.get("key") != self.key:
            logger.info("discarding partial store %s: it was written with other settings, data or code",
                        self.partial)
            return None
        return progress


def base_attrs(**extra: Any) -> dict[str, Any]:
    """Attributes every store carries: protocol, code and stage versions, completeness (set at publish)."""
    stage = extra.get("stage")
    return {"protocol": PROTOCOL, "usae_version": __version__, "stage_version": STAGE_VERSIONS.get(stage),
            "complete": False, **extra}


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only, refusing missing, foreign or incomplete ones.

    Every read from the returned group goes through :class:`CheckedStore`: a missing chunk
    or one failing its checksum raises ``DamagedStoreError`` naming the store, array and
    chunk, instead of reading as zeros or as altered values.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a usae store, another protocol (``usae-store/1`` had no checksums:
            rebuild it), or not marked complete.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"activation store {path} does not exist")
    store = CheckedStore.at(path)
    try:
        group = zarr.open_group(store, mode="r")
    except Exception as err:  # zarr raises several types for a broken hierarchy
        raise ValueError(f"{path} is not a readable Zarr group: {err}") from None
    attrs = group.attrs.asdict()
    store.context["attrs"] = attrs
    if attrs.get("protocol") != PROTOCOL:
        raise ValueError(f"{path}: store protocol {attrs.get('protocol')!r}, expected {PROTOCOL!r}; "
                         f"{rebuild_hint(path, attrs)}")
    if not attrs.get("complete"):
        raise ValueError(f"{path}: store is incomplete (an interrupted job?); rerun its stage")
    return group


class ChunkWriter:
    """Buffers row blocks and writes them to ``array`` in whole, chunk-aligned pieces.

    Zarr rewrites a whole chunk for every partial write; aligning writes to chunks
    makes each chunk file be written exactly once. ``position`` counts the rows written
    so far (``start`` for a resumed store).
    """

    def __init__(self, array: zarr.Array, start: int = 0) -> None:
        self.array = array
        self.rows = array.chunks[0]
        if start % self.rows:
            raise ValueError(f"a resumed write must start on a chunk boundary; {start} is not a multiple "
                             f"of {self.rows}")
        self.position = start
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` (rows along axis 0) after what was written so far."""
        if block.shape[1:] != self.array.shape[1:]:
            raise ValueError(f"block of shape {block.shape} does not fit array rows {self.array.shape[1:]}")
        self._pending.append(block)
        self._n_pending += len(block)
        if self._n_pending >= self.rows:
            self._flush(final=False)

    def close(self) -> None:
        """Write what is left and check that every row of the array was written."""
        self._flush(final=True)
        if self.position != self.array.shape[0]:
            raise RuntimeError(f"wrote {self.position} rows into an array of {self.array.shape[0]}")

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n_write = len(data) if final else (len(data) // self.rows) * self.rows
        if self.position + n_write > self.array.shape[0]:
            raise ValueError(f"writing past the end of an array of {self.array.shape[0]} rows")
        self.array[self.position:self.position + n_write] = data[:n_write]
        self.position += n_write
        rest = data[n_write:]
        self._pending = [rest] if len(rest) else []
        self._n_pending = len(rest)
