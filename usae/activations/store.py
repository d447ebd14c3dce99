"""Zarr v3 activation stores: creation, chunk-aligned writing, atomic publish, checked opening.

The layout is specified in ``docs/stores.md``; :data:`PROTOCOL` names its version.
A store becomes visible under its final path only once complete (written under a
temporary name, then renamed), so an interrupted job never leaves a store that looks done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from usae import STAGE_VERSIONS, __version__
from usae.atomic import atomic_path

logger = logging.getLogger(__name__)

PROTOCOL = "usae-store/1"


def compressors(name: str) -> tuple[Any, ...] | None:
    """Zarr codecs for a config name: ``none``, ``zstd`` or ``blosc-lz4``."""
    table = {
        "none": None,
        "zstd": (ZstdCodec(level=1),),
        "blosc-lz4": (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle, typesize=2),),
    }
    if name not in table:
        raise ValueError(f"unknown compressor {name!r}; choose one of {sorted(table)}")
    return table[name]


def create_array(group: zarr.Group, name: str, shape: tuple[int, ...], *, dtype: str,
                 chunk_rows: int, compressor: str = "none") -> zarr.Array:
    """A new array chunked along its first axis only (whole rows per chunk)."""
    chunks = (max(1, min(chunk_rows, shape[0])),) + tuple(max(1, s) for s in shape[1:])
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                              compressors=compressors(compressor), fill_value=0)


@contextlib.contextmanager
def atomic_store(path: str | Path) -> Iterator[zarr.Group]:
    """Write a store under a temporary name and publish it at ``path`` only on success.

    An existing store at ``path`` is replaced only after the new one is complete.
    On an exception the temporary store is removed and nothing at ``path`` changes.
    """
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        yield group
        group.attrs.update({"complete": True})


def base_attrs(**extra: Any) -> dict[str, Any]:
    """Attributes every store carries: protocol, code and stage versions, completeness (set at publish)."""
    stage = extra.get("stage")
    return {"protocol": PROTOCOL, "usae_version": __version__, "stage_version": STAGE_VERSIONS.get(stage),
            "complete": False, **extra}


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only, refusing missing, foreign or incomplete ones.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a usae store, another protocol, or not marked complete.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"activation store {path} does not exist")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:  # zarr raises several types for a broken hierarchy
        raise ValueError(f"{path} is not a readable Zarr group: {err}") from None
    attrs = group.attrs.asdict()
    if attrs.get("protocol") != PROTOCOL:
        raise ValueError(f"{path}: store protocol {attrs.get('protocol')!r}, expected {PROTOCOL!r}")
    if not attrs.get("complete"):
        raise ValueError(f"{path}: store is incomplete (an interrupted job?); rerun its stage")
    return group


class ChunkWriter:
    """Buffers row blocks and writes them to ``array`` in whole, chunk-aligned pieces.

    Zarr rewrites a whole chunk for every partial write; aligning writes to chunks
    makes each chunk file be written exactly once.
    """

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.rows = array.chunks[0]
        self.position = 0
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
