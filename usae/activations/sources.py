"""Token sources: one model's token array, read in row ranges, for training a Universal SAE.

A :class:`TokenSource` wraps an array shaped ``(rows, tokens_per_row, d_model)`` (or
``(rows, d_model)``, read as one token per row) with what a loader needs to read it well:
the storage chunk length along rows, which rows are valid, and the producer's attributes.

Two constructors make aligned sets of sources:

* :func:`open_aligned` opens usae aligned stores (``docs/stores.md``) and checks that they
  describe the same images in the same order (manifest hash, ``rows`` arrays, grid, length),
  so row ``n``, token ``t`` is the same image region in every model.
* :func:`open_arrays` opens activations made elsewhere: Zarr arrays or ``.npy`` files. Only
  their shapes can be checked; values (NaN, inf) are not scanned, since that means reading
  every array in full. Callers that do not trust the data should check batches as they come.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.core.buffer.cpu import NDBuffer

from usae.activations.chunk_files import ChunkFiles, MappedFiles
from usae.activations.store import open_store
from usae.data.manifest import SPLITS

logger = logging.getLogger(__name__)

NPY_CHUNK_BYTES = 4 * 2**20  # rows per pseudo-chunk of a .npy file: about 4 MB


class RowArray(Protocol):
    """What a token source needs from its array: a shape, a dtype and row slicing."""

    shape: tuple[int, ...]
    dtype: Any

    def __getitem__(self, key: Any) -> Any: ...


class TokenSource:
    """One model's token array, read in whole row ranges.

    Attributes:
        name: the model's name (the key of its batches).
        n_rows: number of rows (images, or single tokens for 2-D arrays).
        tokens_per_row: tokens of one row (1 for 2-D arrays).
        d_model: width of a token vector.
        dtype: numpy dtype of the stored values, kept as is by :meth:`read`.
        chunk_rows: storage chunk length along rows; reads aligned to it touch whole chunks.
        valid: boolean mask of usable rows, or None when every row is usable.
        attrs: producer attributes (store attributes for aligned stores; may be empty).
        rows: manifest index of each row for aligned stores, else None.
        path: where the data lives, for messages (None for in-memory arrays).
        checked_finite: the values were checked finite when written and every read verifies
            their checksums, so :func:`check_finite` need not scan them again (aligned stores
            ``prepare`` wrote: see :func:`open_aligned`).
    """

    def __init__(self, name: str, array: RowArray, *, chunk_rows: int, valid: np.ndarray | None = None,
                 attrs: dict[str, Any] | None = None, rows: np.ndarray | None = None,
                 path: Path | None = None, checked_finite: bool = False) -> None:
        shape = tuple(int(s) for s in array.shape)
        where = f"{name} ({path})" if path is not None else name
        if len(shape) not in (2, 3):
            raise ValueError(f"{where}: token array of shape {shape}; expected (rows, tokens, dim) or (rows, dim)")
        if np.dtype(array.dtype).kind != "f":
            raise ValueError(f"{where}: token array of dtype {array.dtype}; expected floating point")
        self.name = name
        self.path = path
        self.n_rows = shape[0]
        self.tokens_per_row = 1 if len(shape) == 2 else shape[1]
        self.d_model = shape[-1]
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = max(1, min(int(chunk_rows), self.n_rows))
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != (self.n_rows,):
                raise ValueError(f"{where}: valid mask of shape {valid.shape} for {self.n_rows} rows")
        self.valid = valid
        self.attrs = dict(attrs or {})
        self.rows = rows
        self.checked_finite = bool(checked_finite)
        self._array = array
        self._flat = len(shape) == 2
        self._chunk_files = ChunkFiles.of(array) if isinstance(array, zarr.Array) else None

    @property
    def flat(self) -> bool:
        """Rows are single tokens (a (rows, d) array): which image a token came from is unknown."""
        return self._flat

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_rows, tokens_per_row, d_model)``."""
        return self.n_rows, self.tokens_per_row, self.d_model

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new in-memory array ``(stop - start, tokens_per_row, d_model)``."""
        out = np.empty((max(0, stop - start), self.tokens_per_row, self.d_model), self.dtype)
        self.read_into(start, stop, out)
        return out

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``start:stop`` written into ``out`` (``(stop - start, tokens_per_row, d_model)``, the stored dtype).

        Uncompressed usae stores are read file by file straight into ``out``
        (:mod:`usae.activations.chunk_files`), other Zarr arrays decode into it; others are copied once.
        """
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"{self.name}: rows {start}:{stop} outside 0:{self.n_rows}")
        expected = (stop - start, self.tokens_per_row, self.d_model)
        if out.shape != expected or out.dtype != self.dtype:
            raise ValueError(f"{self.name}: read_into needs an array of shape {expected} and dtype {self.dtype}, "
                             f"got {out.shape} {out.dtype}")
        if self._chunk_files is not None and out.flags.c_contiguous:
            self._chunk_files.read_into(start, stop, out)
        elif isinstance(self._array, zarr.Array):
            target = out.view()
            target.shape = (stop - start,) + tuple(self._array.shape[1:])  # raises rather than copies
            self._array.get_basic_selection(slice(start, stop), out=NDBuffer.from_numpy_array(target))
        else:
            out[...] = np.asarray(self._array[start:stop]).reshape(expected)

    def read_pieces(self, start: int, stop: int, map_chunks: bool = True,
                    maps: MappedFiles | None = None) -> list[np.ndarray]:
        """Rows ``start:stop`` as consecutive read-only arrays ``(rows, tokens_per_row, d_model)``, copying
        nothing the data allows: the memory-mapped chunk files of an uncompressed usae store (when
        ``map_chunks``; kept in ``maps`` where given), a view of a numpy array or memory map; else one
        array read."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"{self.name}: rows {start}:{stop} outside 0:{self.n_rows}")
        shape = (self.tokens_per_row, self.d_model)
        if self._chunk_files is not None and map_chunks and hasattr(mmap, "MAP_SHARED"):
            return [piece.reshape((len(piece),) + shape) for piece in self._chunk_files.map_rows(start, stop, maps)]
        if isinstance(self._array, np.ndarray) and self._array[start:stop].flags.c_contiguous:
            return [self._array[start:stop].reshape((stop - start,) + shape)]
        return [self.read(start, stop)]

    def __repr__(self) -> str:
        return (f"TokenSource({self.name!r}, shape={self.shape}, dtype={self.dtype}, chunk_rows={self.chunk_rows}, "
                f"valid={'all' if self.valid is None else int(self.valid.sum())})")


# Per float size: the integer views, and the least non-finite value (exponent all ones) of each: a positive
# inf/NaN is the largest signed integer there can be, a negative one the largest unsigned.
_NON_FINITE = {2: (np.int16, 0x7C00, np.uint16, 0xFC00), 4: (np.int32, 0x7F800000, np.uint32, 0xFF800000),
               8: (np.int64, 0x7FF0000000000000, np.uint64, 0xFFF0000000000000)}


def check_finite(source: TokenSource, block: np.ndarray, start: int) -> None:
    """Refuse NaN/inf in rows ``start:start + len(block)`` of ``source``, naming the store, row and image.

    One bad value would make every later training step non-finite. The test is two integer
    maxima over the bits (read-only passes, several times faster than ``np.isfinite`` on float16).
    A source whose values were checked when written and whose reads verify checksums
    (``source.checked_finite``) is not scanned again: the checksum proves the bytes are the
    ones checked, and skipping this pass is most of what makes the loader keep up with a
    plain read of the files (``benchmarks/bench_loader.py``).
    """
    if source.checked_finite:
        return
    kind = _NON_FINITE.get(block.dtype.itemsize)
    if kind is not None and block.size and block.flags.c_contiguous:
        signed, positive, unsigned, negative = kind
        if block.view(signed).max() < positive and block.view(unsigned).max() < negative:
            return
    finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    first = start + int(bad[0])
    image = f", manifest index {int(source.rows[first])}" if source.rows is not None else ""
    where = f"{source.name} ({source.path})" if source.path is not None else source.name
    raise ValueError(f"{where}: NaN or inf in {len(bad)} row(s) of rows {start}:{start + len(block)} "
                     f"(first: row {first}{image}); the store is corrupt or its activations overflowed. "
                     "Recompute it (rerun its extraction and preparation) before training")


def open_aligned(paths: dict[str, Path], split: str = "train") -> dict[str, TokenSource]:
    """Open usae aligned stores of several models, checked to describe the same images.

    Args:
        paths: model name -> aligned store (``results/<dataset>/aligned/<model>/<layer>.zarr``).
        split: ``train`` or ``val``.

    Returns:
        model name -> source over ``<split>/tokens``, with the split's ``valid`` mask,
        ``rows`` and the store's attributes; ``checked_finite`` where the store says its
        writer checked every value (``finite_checked``, as ``prepare`` does) and its tokens
        are checksummed.

    Raises:
        FileNotFoundError: a store does not exist.
        ValueError: unknown split, an incomplete or foreign store, or stores that differ in
            manifest hash, grid, length or ``rows`` (the message names both stores).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if not paths:
        raise ValueError("no aligned store given")
    sources: dict[str, TokenSource] = {}
    for name, path in paths.items():
        path = Path(path)
        group = open_store(path)
        attrs = group.attrs.asdict()
        missing = [key for key in ("manifest_hash", "grid") if key not in attrs]
        if missing or split not in group:
            what = f"attributes {missing}" if missing else f"split {split!r}"
            raise ValueError(f"{name} ({path}) is not an aligned store: no {what}; was it written by `prepare`?")
        sub = group[split]
        tokens = sub["tokens"]
        checked = attrs.get("finite_checked") is True and group.store.checksummed(tokens.path)
        sources[name] = TokenSource(name, tokens, chunk_rows=_zarr_chunk_rows(tokens), valid=sub["valid"][:],
                                    attrs=attrs, rows=np.asarray(sub["rows"][:]), path=path,
                                    checked_finite=checked)
    _check_same_images(sources, split)
    logger.info("opened %d aligned %s stores: %s", len(sources), split,
                ", ".join(repr(s) for s in sources.values()))
    return sources


def _check_same_images(sources: dict[str, TokenSource], split: str) -> None:
    first, *others = sources.values()
    for other in others:
        pair = f"aligned stores {first.name} ({first.path}) and {other.name} ({other.path})"
        for key in ("manifest_hash", "grid"):
            if first.attrs[key] != other.attrs[key]:
                raise ValueError(f"{pair} differ in {key}: {first.attrs[key]!r} != {other.attrs[key]!r}; "
                                 "prepare them from the same manifest and config")
        if first.n_rows != other.n_rows:
            raise ValueError(f"{pair} differ in length of split {split!r}: {first.n_rows} != {other.n_rows} rows")
        if first.tokens_per_row != other.tokens_per_row:
            raise ValueError(f"{pair} differ in tokens per image: {first.tokens_per_row} != {other.tokens_per_row}")
        if first.rows.shape != other.rows.shape:
            raise ValueError(f"{pair} differ in {split}/rows shape: {first.rows.shape} != {other.rows.shape}")
        differ = np.flatnonzero(first.rows != other.rows)
        if len(differ):
            k = int(differ[0])
            raise ValueError(f"{pair} differ in {split}/rows at {len(differ)} positions (first: position {k}, "
                             f"manifest index {first.rows[k]} != {other.rows[k]})")


def open_arrays(paths: dict[str, Path]) -> dict[str, TokenSource]:
    """Open activations made outside this pipeline: Zarr arrays or ``.npy`` files.

    Each path is a Zarr array, a Zarr group holding exactly one array, or a ``.npy`` file
    (memory-mapped). Arrays are ``(rows, tokens, dim)`` or ``(rows, dim)`` (one token per
    row); all must agree on rows and tokens per row, and row ``n`` is assumed to be the
    same input in all of them. Values are not checked for NaN or inf (that would read
    every array in full).

    Raises:
        FileNotFoundError: one or more paths do not exist (all are listed).
        ValueError: an unreadable path, a group without exactly one array, a shape that is
            not 2-D or 3-D, a non-float dtype, or arrays that disagree on rows or tokens.
    """
    if not paths:
        raise ValueError("no activation array given")
    missing = [f"{name}: {path}" for name, path in paths.items() if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"activation arrays not found: {'; '.join(missing)}")
    sources = {name: _open_array(name, Path(path)) for name, path in paths.items()}
    layouts = {(s.n_rows, s.tokens_per_row) for s in sources.values()}
    if len(layouts) > 1:
        first = next(iter(sources.values()))
        culprits = [s for s in sources.values() if (s.n_rows, s.tokens_per_row) != (first.n_rows, first.tokens_per_row)]
        shapes = ", ".join(f"{s.name} {tuple(s._array.shape)} ({s.path})" for s in sources.values())
        raise ValueError(f"activation arrays disagree on rows or tokens per row: "
                         f"{', '.join(s.name for s in culprits)} differ from {first.name}; shapes: {shapes}")
    logger.info("opened %d activation arrays: %s", len(sources), ", ".join(repr(s) for s in sources.values()))
    return sources


def _open_array(name: str, path: Path) -> TokenSource:
    if path.is_file():
        if path.suffix != ".npy":
            raise ValueError(f"{name} ({path}): expected a .npy file or a Zarr array")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
        return TokenSource(name, array, chunk_rows=max(1, NPY_CHUNK_BYTES // row_bytes), path=path)
    try:
        node = zarr.open(path, mode="r")
    except Exception as err:  # zarr raises several types for a path that is not Zarr
        raise ValueError(f"{name} ({path}) is not a readable Zarr array or group: {err}") from None
    if isinstance(node, zarr.Group):
        arrays = list(node.arrays())
        if len(arrays) != 1:
            hint = "; for usae aligned stores use open_aligned" if "train" in node else ""
            raise ValueError(f"{name} ({path}): a Zarr group must hold exactly one array, it holds "
                             f"{len(arrays)} ({sorted(a for a, _ in arrays)}){hint}")
        node = arrays[0][1]
    return TokenSource(name, node, chunk_rows=_zarr_chunk_rows(node), attrs=node.attrs.asdict(), path=path)


def _zarr_chunk_rows(array: zarr.Array) -> int:
    """Rows of one storage object: the shard when the array is sharded, else the chunk."""
    shards = getattr(array, "shards", None)
    return int((shards or array.chunks)[0])
