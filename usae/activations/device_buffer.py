"""Shuffle buffers held on the training device: each batch is one ``index_select`` there.

:func:`stream_device_batches` serves exactly the batches of :mod:`usae.activations.prefetch`
(same buffers, same permutation, same order within a batch), but where those are gathered
on the host and copied to the GPU batch by batch, here every buffer is copied to the
device once, block by block, and each batch is gathered there:

* **Who does what.** The ``read_threads`` read threads read each storage chunk straight
  into a pinned staging array (checksum and finiteness checked there, as on the host),
  then queue its copy into the buffer's place on the device, on a stream of their own;
  each thread has two staging arrays, so one chunk is read while the other is copied.
  The consumer's thread, which also launches the training steps, only slices a
  precomputed index and calls ``index_select`` once per model a step: no gather thread,
  no per-batch Python work that would take the interpreter lock from it (on H200 hosts
  that lock cost the step launches up to 2x their time: ``benchmarks/README.md``).
* **Two buffers per model** live on the device at once, the one batches come from and the
  next, read at the same pace as on the host (:func:`usae.activations.prefetch.reads_due`).
  A buffer is overwritten only after the steps that read it: its reuse waits, on the copy
  stream, for an event the consumer records after its last batch.
* **Memory.** ``2 × buffer × Σ widths × itemsize`` of device memory
  (:func:`device_buffer_bytes`), checked against the free memory before anything is read.

On a CPU device the same code runs synchronously (no staging, streams or events), which is
how its batches are tested against the host loader's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from usae.activations.prefetch import THREAD_PREFIX, _buffers, _BufferRead, reads_due, torch_dtype
from usae.activations.sources import TokenSource, check_finite

if TYPE_CHECKING:
    from usae.activations.loader import TokenLoader


def device_buffer_bytes(loader: TokenLoader) -> int:
    """Device memory of the two buffers: ``2 × rows_per_buffer × tokens_per_row × Σ d × itemsize``."""
    token_bytes = sum(s.d_model * np.dtype(s.dtype).itemsize for s in loader.sources.values())
    return 2 * loader.rows_per_buffer * loader.tokens_per_row * token_bytes


def check_device_memory(loader: TokenLoader, device: torch.device) -> None:
    """Raise a ``MemoryError`` naming the settings when the two buffers would not fit the free GPU memory."""
    if device.type != "cuda":
        return
    need = device_buffer_bytes(loader)
    free, _ = torch.cuda.mem_get_info(device)
    if need > 0.5 * free:
        raise MemoryError(f"train.gather = 'device' needs {need / 2**30:.2f} GiB of {device} for two shuffle "
                          f"buffers, more than half its free {free / 2**30:.2f} GiB; lower train.buffer_tokens or "
                          f"use train.gather: host")


class _Slots:
    """Two device buffers per source, handed out in turn; a slot is reused after the steps that read it."""

    def __init__(self, loader: TokenLoader, device: torch.device) -> None:
        tokens = loader.rows_per_buffer * loader.tokens_per_row
        self.device = device
        self.slots = [{name: torch.empty((tokens, s.d_model), dtype=torch_dtype(s.dtype), device=device)
                       for name, s in loader.sources.items()} for _ in range(2)]
        self.released: list[torch.cuda.Event | None] = [None, None]
        self.copies = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.turn = 0

    def take(self) -> int:
        """The next slot's number; on CUDA, copies queued after this wait for the steps that read it last."""
        turn, event = self.turn, self.released[self.turn]
        if event is not None and self.copies is not None:
            self.copies.wait_event(event)
        self.turn = 1 - turn
        return turn

    def release(self, turn: int) -> None:
        """Mark the reads of slot ``turn`` as queued: on CUDA, an event after them on the consumer's stream."""
        event = None
        if self.copies is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        self.released[turn] = event


class _Staging(threading.local):
    """Each read thread's two host arrays (pinned for CUDA), used in turn: a block is read into one while the
    other's copy to the device runs. An array is reused once its copy has finished."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self.arrays: list[torch.Tensor | None] = [None, None]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def next(self, n_bytes: int) -> tuple[int, torch.Tensor]:
        """The next array's number and its first ``n_bytes`` (uint8), free to be written."""
        turn, self.turn = self.turn, 1 - self.turn
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()
            self.copied[turn] = None
        if self.arrays[turn] is None or self.arrays[turn].numel() < n_bytes:
            self.arrays[turn] = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=self.pinned)
        return turn, self.arrays[turn][:n_bytes]

    def copy(self, turn: int, rows: torch.Tensor, target: torch.Tensor, copies: torch.cuda.Stream | None) -> None:
        """Copy ``rows`` (a view of array ``turn``) into ``target``: on CUDA asynchronously, on ``copies``."""
        if copies is None:
            target.copy_(rows)
            return
        with torch.cuda.stream(copies):
            target.copy_(rows, non_blocking=True)
            self.copied[turn] = torch.cuda.Event()
            self.copied[turn].record(copies)


class _DeviceBufferRead(_BufferRead):
    """A buffer's block reads, each also copied into its place in a device slot."""

    def __init__(self, loader: TokenLoader, pool: ThreadPoolExecutor, epoch: int, buffer: int,
                 slots: _Slots, staging: _Staging) -> None:
        super().__init__(loader, pool, epoch, buffer)
        self.turn = slots.take()
        self.slot, self.copies, self.staging = slots.slots[self.turn], slots.copies, staging

    def _read(self, block: int, name: str, source: TokenSource) -> Future:
        start, stop = self.spans[block]
        first = int(self.offsets[block]) * self.loader.tokens_per_row
        return self.pool.submit(_read_to_device, source, start, stop,
                                self.slot[name][first:first + (stop - start) * self.loader.tokens_per_row],
                                self.copies, self.staging)


def _read_to_device(source: TokenSource, start: int, stop: int, target: torch.Tensor,
                    copies: torch.cuda.Stream | None, staging: _Staging) -> list[np.ndarray]:
    """Read and check rows ``start:stop`` into a staging array, then copy them into ``target`` (their tokens).

    Returns no pieces. Each storage chunk is read straight into the staging array
    (``TokenSource.read_into``: a usae store's chunk file is read there and its checksum
    computed on what was read), one host pass where mapping the file, checking it and
    copying it out would make two. On CUDA the copy to the device is only queued: the
    consumer's stream waits for the copy stream before it uses the buffer.
    """
    shape, dtype = (source.tokens_per_row, source.d_model), torch_dtype(source.dtype)
    for lo, hi in _chunk_spans(start, stop, source.chunk_rows):
        turn, stage = staging.next((hi - lo) * source.tokens_per_row * source.d_model * source.dtype.itemsize)
        rows = stage.view(dtype).view(hi - lo, *shape)
        source.read_into(lo, hi, rows.numpy())
        check_finite(source, rows.numpy(), lo)
        at = (lo - start) * source.tokens_per_row
        staging.copy(turn, rows.view(-1, source.d_model), target[at:at + len(rows) * shape[0]], copies)
    return []


def _chunk_spans(start: int, stop: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    """Rows ``start:stop`` cut at the storage chunks' edges."""
    while start < stop:
        end = min(stop, (start // chunk_rows + 1) * chunk_rows)
        yield start, end
        start = end


def stream_device_batches(loader: TokenLoader, epoch: int, buffer: int, skip: int,
                          device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches from batch ``skip`` of ``buffer`` of ``epoch`` on, gathered on ``device`` (see the
    module docstring); batches are ``{name: (batch_tokens, d) tensor on device}``, dtype as stored."""
    check_device_memory(loader, device)
    pool = ThreadPoolExecutor(loader.read_threads, thread_name_prefix=f"{THREAD_PREFIX}-read")
    slots, staging, never = _Slots(loader, device), _Staging(pinned=device.type == "cuda"), Future()
    try:
        buffers = _buffers(loader, epoch, buffer)
        e, b, n_steps = next(buffers)
        current = _DeviceBufferRead(loader, pool, e, b, slots, staging)
        while True:
            current.finish(never)
            if slots.copies is not None:  # the buffer's copies are queued; the steps wait for them on the GPU
                torch.cuda.current_stream(device).wait_stream(slots.copies)
            e, b, n_next = next(buffers)
            upcoming = _DeviceBufferRead(loader, pool, e, b, slots, staging)
            index = _batch_index(current, n_steps, device)
            for j in range(skip, n_steps):
                upcoming.submit(reads_due(len(upcoming.spans), j - skip, n_steps - skip))
                yield {name: tokens.index_select(0, index[j]) for name, tokens in current.slot.items()}
            slots.release(current.turn)
            current, n_steps, skip = upcoming, n_next, 0
    finally:  # reads and copies in flight end first: a slot freed under one could be handed to another tensor
        pool.shutdown(wait=True, cancel_futures=True)
        if slots.copies is not None:
            slots.copies.synchronize()


def _batch_index(read: _BufferRead, n_steps: int, device: torch.device) -> torch.Tensor:
    """``(n_steps, batch_tokens)`` buffer token indices of each batch, sorted within it, as the host loader's."""
    size = read.loader.batch_tokens
    index = np.sort(read.order()[:n_steps * size].reshape(n_steps, size), axis=1)
    return torch.from_numpy(index).to(device)
