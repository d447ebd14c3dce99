"""Chunk integrity of activation stores: a missing or corrupt chunk fails the read, naming it.

Zarr reads an absent chunk as the fill value, so a deleted chunk file would be trained on
as zeros; and a flipped bit in a chunk usually leaves finite values. usae stores therefore
write every chunk (``write_empty_chunks``) with a ``crc32c`` checksum as the last codec, and
are read through :class:`CheckedStore`, which refuses absent chunks and checks checksums
itself, so the error names the store, the array, the chunk and the stage that rebuilds it
(Zarr's own checksum error names none of them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path
from typing import Any

import crc32c as _crc32c
import numpy as np
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore, WrapperStore

from usae.paths import store_marker

CHECKSUM_CODEC = "crc32c"


class DamagedStoreError(ValueError):
    """A chunk of an activation store is missing or fails its checksum.

    Attributes:
        store: the store's path.
        array: the array's path inside the store (``train/tokens``).
        chunk: the chunk's grid index.
        what: the chunk, its array and rows, and what is wrong with it (no store, no hint).
        hint: what to run to rebuild the store.
    """

    def __init__(self, store: str, array: str, chunk: tuple[int, ...], what: str, hint: str = "") -> None:
        self.store, self.array, self.chunk, self.what = store, array, chunk, what
        self.hint = hint or rebuild_hint(store, {})
        super().__init__(f"activation store {store} is damaged: {what}; {self.hint}")


def rebuild_hint(store: str | Path, attrs: dict[str, Any]) -> str:
    """What to run to rebuild a damaged store, from the stage and model its attributes record.

    A damaged store still looks finished to Snakemake (its files are newer than the inputs),
    so it must be forced: ``--forcerun`` with the file the rule names for it (:func:`usae.paths.store_marker`)
    reruns its job and every job after it.
    """
    stage, model = attrs.get("stage"), (attrs.get("model") or {}).get("key", "<model>")
    model = next(iter(attrs.get("models") or {}), model)  # an extraction part: any of the models it serves
    forcerun = f"`snakemake --cores 8 --forcerun {store_marker(store)}`"
    if stage == "extract":
        command = f"`usae extract -c config.yaml --model {model} --part {attrs.get('part', '<k>')}`"
        return f"rerun its stage, extract, with {forcerun} (or {command}, then `usae prepare`)"
    if stage == "prepare":
        command = f"`usae prepare -c config.yaml --model {model}`"
        return f"rerun its stage, prepare, with {forcerun} (or {command})"
    return "rebuild it with the stage that wrote it"


def chunk_key(key: str) -> tuple[str, tuple[int, ...]] | None:
    """``(array path, chunk index)`` of a Zarr v3 chunk key (``train/tokens/c/3/0/0``), else None."""
    parts = key.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "c" and all(p.isdigit() for p in parts[i + 1:]):
            return "/".join(parts[:i]), tuple(int(p) for p in parts[i + 1:])
    return None


def codec_names(meta: dict[str, Any]) -> list[str]:
    """Names of the codecs of Zarr v3 array metadata, in encoding order (a codec may be a bare name)."""
    return [c if isinstance(c, str) else c.get("name") for c in meta.get("codecs") or []]


def crc32c(data: bytes | np.ndarray) -> int:
    """The CRC-32C (Castagnoli) of a C-contiguous buffer, read in place: the value Zarr's ``crc32c`` codec stores.

    Computed by the ``crc32c`` package, which releases the GIL on large buffers, where
    ``google_crc32c`` (Zarr's own) holds it: a loader's read threads checksum chunks beside the
    batch gather and the training step instead of stalling them. It is also about twice as
    fast (10.7 vs 5.7 GB/s on the 2-core Xeon of ``benchmarks/README.md``).
    """
    return _crc32c.crc32c(data)


def checksum_ok(data: bytes | np.ndarray) -> bool:
    """Whether a chunk's bytes end with the little-endian CRC-32C of the bytes before (Zarr's ``crc32c``)."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data.view(np.uint8).reshape(-1)
    if len(raw) < 4:
        return False
    return crc32c(raw[:-4]) == int.from_bytes(raw[-4:].tobytes(), "little")


class CheckedStore(WrapperStore[LocalStore]):
    """A read-only local store that raises :class:`DamagedStoreError` for missing or corrupt chunks.

    Chunk keys are told from metadata keys by their ``c/<i>/<j>...`` suffix. For an array
    whose codec chain ends with ``crc32c``, this store checks the checksum of every chunk it
    serves and hands Zarr the bytes without it, and shows Zarr that array's metadata without
    that codec: the checksum is computed once (not again by Zarr's codec) and a mismatch
    names its chunk. Such arrays are never read by byte range (Zarr reads ranges only from
    sharded arrays without bytes-to-bytes codecs), so every read holds its checksum.
    ``context`` (shared with the copies Zarr makes of the store) holds the store's
    attributes once known, for the rebuild hint.
    """

    def __init__(self, store: LocalStore, context: dict[str, Any] | None = None) -> None:
        super().__init__(store)
        self.context = {} if context is None else context
        self._layouts: dict[str, tuple[bool, tuple[int, ...], tuple[int, ...]]] = {}

    @classmethod
    def at(cls, path: str | Path) -> CheckedStore:
        """A checked, read-only store over the folder ``path``."""
        return cls(LocalStore(Path(path), read_only=True))

    @property
    def path(self) -> str:
        return str(self._store.root)

    def _with_store(self, store: LocalStore) -> CheckedStore:
        return type(self)(store, self.context)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None and key.rsplit("/", 1)[-1] == "zarr.json":
            return self._without_checksum(key, buf, prototype)
        where = chunk_key(key)
        if where is None:
            return buf
        checksummed, _, _ = await self._layout(where[0])
        if buf is None:
            raise self.missing(key)
        if not checksummed:
            return buf
        if byte_range is not None:
            raise ValueError(f"{self.path}: byte-range read of checksummed chunk {key}; only whole chunks hold "
                             "their checksum")
        data = buf.as_numpy_array()
        if not checksum_ok(data):
            raise self.altered(key)
        return prototype.buffer.from_array_like(data[:-4])  # a view: what Zarr's codec would pass on

    def missing(self, key: str) -> DamagedStoreError:
        """The error for chunk ``key`` (``train/tokens/c/3/0/0``) having no file."""
        return self._chunk_damage(key, f"is missing (no file {Path(self.path) / key})")

    def altered(self, key: str) -> DamagedStoreError:
        """The error for chunk ``key`` failing its checksum."""
        return self._chunk_damage(key, f"fails its {CHECKSUM_CODEC} checksum (file {Path(self.path) / key} was altered)")

    def checksummed(self, array: str) -> bool:
        """Whether every chunk of ``array`` (its path in the store) carries a checksum that each read verifies."""
        return self._layout_on_disk(array)[0]

    def _chunk_damage(self, key: str, reason: str) -> DamagedStoreError:
        array, chunk = chunk_key(key)
        _, shape, chunk_shape = self._layout_on_disk(array)
        return self.damage(array, chunk, shape, chunk_shape, reason)

    def _layout_on_disk(self, array: str) -> tuple[bool, tuple[int, ...], tuple[int, ...]]:
        """:meth:`_layout`, read directly where Zarr has not read the metadata yet (a read around Zarr)."""
        if array not in self._layouts:
            meta = Path(self.path) / array / "zarr.json"
            self._layouts[array] = _layout_of(json.loads(meta.read_text()) if meta.exists() else {})
        return self._layouts[array]

    async def _get_many(self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
                        ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:  # through get, so batched reads are checked too
            yield key, await self.get(key, prototype, byte_range)

    def damage(self, array: str, chunk: tuple[int, ...], shape: tuple[int, ...], chunk_shape: tuple[int, ...],
               reason: str) -> DamagedStoreError:
        """The error for a bad chunk, with the rows it covers when the array's layout is known."""
        detail = ""
        if shape and chunk_shape and chunk:
            lo = chunk[0] * chunk_shape[0]
            detail = f" (rows {lo}:{min(lo + chunk_shape[0], shape[0])})"
        what = f"chunk {chunk} of array '{array}'{detail} {reason}"
        return DamagedStoreError(self.path, array, chunk, what, rebuild_hint(self.path, self.context.get("attrs", {})))

    def _without_checksum(self, key: str, buf: Buffer, prototype: BufferPrototype) -> Buffer:
        """An array's metadata as Zarr is shown it: the trailing checksum codec removed (checked here)."""
        meta = json.loads(buf.to_bytes())
        array = key[:-len("zarr.json")].rstrip("/")
        self._layouts[array] = _layout_of(meta)
        if not self._layouts[array][0]:
            return buf
        meta["codecs"] = meta["codecs"][:-1]
        return prototype.buffer.from_bytes(json.dumps(meta).encode())

    async def _layout(self, array: str) -> tuple[bool, tuple[int, ...], tuple[int, ...]]:
        """Whether ``array`` ends its codec chain with a checksum, its shape and chunk shape (cached)."""
        if array not in self._layouts:
            raw = await self._store.get(f"{array}/zarr.json" if array else "zarr.json", default_buffer_prototype())
            self._layouts[array] = _layout_of(json.loads(raw.to_bytes()) if raw is not None else {})
        return self._layouts[array]


def _layout_of(meta: dict[str, Any]) -> tuple[bool, tuple[int, ...], tuple[int, ...]]:
    """``(ends with a checksum, shape, chunk shape)`` of array metadata (a group's: no checksum, no shapes)."""
    grid = (meta.get("chunk_grid") or {}).get("configuration", {})
    checksummed = meta.get("node_type") == "array" and codec_names(meta)[-1:] == [CHECKSUM_CODEC]
    return checksummed, tuple(meta.get("shape", ())), tuple(grid.get("chunk_shape", ()))
