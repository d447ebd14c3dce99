"""Direct reads of uncompressed, checksummed store chunks: the fast paths of ``TokenSource``.

A usae store written without a compressor (``compressor: none``, the default) keeps each
chunk as one file: its values, little-endian in C order, then the CRC-32C of those bytes
(``docs/stores.md``). Such a chunk needs no decoding: its file is read straight into the
caller's array and the checksum computed there, in place (:meth:`ChunkFiles.read_into`),
or it is memory-mapped and used where it lies, in the page cache (:meth:`ChunkFiles.map_rows`,
what the training loader shuffles from, keeping the maps from epoch to epoch in its
:class:`MappedFiles`). Zarr's read of the same chunk goes through its asynchronous machinery,
a bytes object and a copy into the output, two to three times the CPU time
(``benchmarks/bench_loader.py``), which a training step shares its cores with. Any other
layout (compressed, sharded, other key encodings or byte orders) is left to Zarr. Damage is
reported as :class:`CheckedStore` reports it.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr

from usae.activations.integrity import CHECKSUM_CODEC, CheckedStore, checksum_ok, codec_names, crc32c


KEPT_MAPS = 16_384  # with the loader's own (``loader.MAX_MAPS``), far below Linux's default 65,530 maps


class MappedFiles:
    """Read-only memory maps of files, kept between reads while each file is unchanged (least recently used
    dropped first).

    Mapping a file is cheap, touching its pages through a new mapping is not: each page
    faults once per mapping, half the time of mapping and checksumming a chunk from the
    page cache (``benchmarks/README.md``). The loader reads every chunk once an epoch, so a
    kept mapping saves that every epoch after the first. Callers still verify the bytes at
    every read (the map is ``MAP_SHARED``: a write in place shows in it). A file is
    mapped anew when its identity (device, inode, size, mtime, ctime) changed: replaced,
    truncated or rewritten. At most ``max_maps`` maps and ``max_bytes`` bytes (default:
    half the machine's memory, more than the page cache could keep anyway) are kept.
    Each :class:`~usae.activations.loader.TokenLoader` has its own: its maps, and the
    files they hold open (deleted ones too), are released with it.
    """

    def __init__(self, max_maps: int = KEPT_MAPS, max_bytes: int | None = None) -> None:
        self.max_maps = max_maps
        self.max_bytes = _half_memory() if max_bytes is None else max_bytes
        self._maps: OrderedDict[str, tuple[tuple[int, ...], np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def paths(self) -> list[str]:
        """The files whose maps are kept, least recently used first."""
        with self._lock:
            return list(self._maps)

    def bytes(self, path: str | Path) -> np.ndarray:
        """The bytes of the file ``path``, a read-only ``uint8`` array over its memory map.

        Raises:
            FileNotFoundError: no file at ``path``.
        """
        key, fd = str(path), os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with self._lock:
                kept = self._maps.get(key)
                if kept is not None and kept[0] == identity:
                    self._maps.move_to_end(key)
                    return kept[1]
            mapped = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) if st.st_size else b""
        finally:
            os.close(fd)
        data = np.frombuffer(mapped, np.uint8)
        self._keep(key, identity, data)
        return data

    def _keep(self, key: str, identity: tuple[int, ...], data: np.ndarray) -> None:
        with self._lock:
            if key in self._maps:
                self._bytes -= len(self._maps.pop(key)[1])
            if len(data) <= self.max_bytes and self.max_maps > 0:
                self._maps[key], self._bytes = (identity, data), self._bytes + len(data)
            while len(self._maps) > self.max_maps or self._bytes > self.max_bytes:
                self._bytes -= len(self._maps.popitem(last=False)[1][1])


def _half_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: a fixed 4 GiB
        return 4 << 30


class ChunkFiles:
    """The chunk files of one uncompressed, checksummed array chunked along its first axis only."""

    def __init__(self, store: CheckedStore, array_path: str, shape: tuple[int, ...], chunk_rows: int,
                 dtype: np.dtype) -> None:
        self.store, self.array_path = store, array_path
        self.shape, self.chunk_rows, self.dtype = shape, chunk_rows, np.dtype(dtype)

    @classmethod
    def of(cls, array: zarr.Array) -> ChunkFiles | None:
        """The chunk files of ``array`` when it is read through a :class:`CheckedStore` and laid out as
        above, else None (Zarr reads it)."""
        store = array.store
        if not isinstance(store, CheckedStore) or sys.byteorder != "little":
            return None
        meta_path = Path(store.path) / array.path / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        first = (meta.get("codecs") or [None])[0]
        endian = (first.get("configuration") or {}).get("endian", "little") if isinstance(first, dict) else "little"
        chunks = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
        shape = tuple(meta.get("shape", ()))
        plain = codec_names(meta) == ["bytes", CHECKSUM_CODEC] and endian == "little"
        keys = meta.get("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}}
        if not (plain and keys and chunks and len(shape) >= 1 and tuple(chunks[1:]) == shape[1:]
                and not meta.get("storage_transformers")):
            return None
        return cls(store, array.path, shape, int(chunks[0]), np.dtype(meta["data_type"]))

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``start:stop`` into the C-contiguous ``out`` (``(stop - start, *shape[1:])``, stored dtype).

        Raises:
            DamagedStoreError: a chunk file is missing, or short, long or altered (checksum).
        """
        rows = self.chunk_rows
        for chunk in range(start // rows, -(-stop // rows)):
            lo = chunk * rows
            first, last = max(lo, start), min(lo + rows, stop)
            if first == lo and last == lo + rows:  # a whole chunk wanted: straight into ``out``
                self._read_chunk(chunk, out[first - start:last - start])
            else:  # edge chunks are stored whole (padded): read, then keep the rows asked for
                whole = np.empty((rows,) + self.shape[1:], self.dtype)
                self._read_chunk(chunk, whole)
                out[first - start:last - start] = whole[first - lo:last - lo]

    def map_rows(self, start: int, stop: int, maps: MappedFiles | None = None) -> list[np.ndarray]:
        """Rows ``start:stop`` as read-only arrays over the memory-mapped chunk files, one per chunk, in order.

        No copy is made: the arrays are the page cache's pages (each chunk's checksum
        verified at every call, here). A map lives as long as an array of it or ``maps``
        keeps it (None: the maps are new and kept by nothing else).

        Raises:
            DamagedStoreError: as :meth:`read_into`.
        """
        rows, pieces, maps = self.chunk_rows, [], MappedFiles(0, 0) if maps is None else maps
        for chunk in range(start // rows, -(-stop // rows)):
            key, path = self._where(chunk)
            try:
                data = maps.bytes(path)
            except FileNotFoundError:
                raise self.store.missing(key) from None
            if len(data) != self._chunk_bytes + 4 or not checksum_ok(data):
                raise self.store.altered(key)
            whole = data[:-4].view(self.dtype).reshape((rows,) + self.shape[1:])
            lo = chunk * rows
            pieces.append(whole[max(lo, start) - lo:min(lo + rows, stop) - lo])
        return pieces

    @property
    def _chunk_bytes(self) -> int:
        return self.chunk_rows * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def _where(self, chunk: int) -> tuple[str, Path]:
        key = "/".join([*self.array_path.split("/"), "c", str(chunk)] + ["0"] * (len(self.shape) - 1)).lstrip("/")
        return key, Path(self.store.path) / key

    def _read_chunk(self, chunk: int, target: np.ndarray) -> None:
        key, path = self._where(chunk)
        data = target.reshape(-1).view(np.uint8)
        try:
            file = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise self.store.missing(key) from None
        with file:
            n_read = 0
            while n_read < len(data) and (n := file.readinto(memoryview(data[n_read:]))):
                n_read += n
            tail = file.read(5)
        if n_read != len(data) or len(tail) != 4 or crc32c(data) != int.from_bytes(tail, "little"):
            raise self.store.altered(key)
