"""Shuffle buffers held on the training device: each batch is one ``index_select`` there.

:func:`stream_device_batches` serves exactly the batches of :mod:`usae.activations.prefetch`
(same buffers, same permutation, same order within a batch), but where those are gathered
on the host and copied to the GPU batch by batch, here every buffer is copied to the
device once, block by block, and each batch is gathered there:

* **Who does what.** The ``read_threads`` read threads map and check each block as on the
  host (:func:`usae.activations.prefetch._read_checked`), copy its rows into a pinned
  staging array and from there into the buffer's place on the device, on a stream of
  their own. The consumer's thread, which also launches the training steps, only slices
  a precomputed index and calls ``index_select`` once per model a step: no gather thread,
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

from usae.activations.prefetch import _buffers, _BufferRead, _read_checked, reads_due, torch_dtype
from usae.activations.sources import TokenSource

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
    """Each read thread's pinned host array, grown to the largest piece it copies."""

    array: torch.Tensor | None = None

    def get(self, n_bytes: int) -> np.ndarray:
        if self.array is None or self.array.numel() < n_bytes:
            self.array = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=True)
        return self.array.numpy()[:n_bytes]


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
        return self.pool.submit(_read_to_device, source, start, stop, self.loader.map_chunks,
                                self.slot[name][first:first + (stop - start) * self.loader.tokens_per_row],
                                self.copies, self.staging)


def _read_to_device(source: TokenSource, start: int, stop: int, map_chunks: bool, target: torch.Tensor,
                    copies: torch.cuda.Stream | None, staging: _Staging) -> list[np.ndarray]:
    """Read and check rows ``start:stop`` and copy them into ``target`` (their tokens); returns no pieces."""
    at = 0
    for piece in _read_checked(source, start, stop, map_chunks):
        rows = piece.reshape(-1, source.d_model)
        if copies is None:
            np.copyto(target[at:at + len(rows)].numpy(), rows)
        else:  # a pinned copy of the page-cache pages, then an asynchronous copy from it
            stage = staging.get(rows.nbytes).view(rows.dtype).reshape(rows.shape)
            np.copyto(stage, rows)
            with torch.cuda.stream(copies):
                target[at:at + len(rows)].copy_(torch.from_numpy(stage), non_blocking=True)
            copies.synchronize()  # the staging array is reused by this thread's next piece
        at += len(rows)
    return []


def stream_device_batches(loader: TokenLoader, epoch: int, buffer: int, skip: int,
                          device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches from batch ``skip`` of ``buffer`` of ``epoch`` on, gathered on ``device`` (see the
    module docstring); batches are ``{name: (batch_tokens, d) tensor on device}``, dtype as stored."""
    check_device_memory(loader, device)
    pool = ThreadPoolExecutor(loader.read_threads, thread_name_prefix="TokenLoader-read")
    slots, staging, never = _Slots(loader, device), _Staging(), threading.Event()
    try:
        buffers = _buffers(loader, epoch, buffer)
        e, b, n_steps = next(buffers)
        current = _DeviceBufferRead(loader, pool, e, b, slots, staging)
        while True:
            current.finish(never)
            e, b, n_next = next(buffers)
            upcoming = _DeviceBufferRead(loader, pool, e, b, slots, staging)
            index = _batch_index(current, n_steps, device)
            for j in range(skip, n_steps):
                upcoming.submit(reads_due(len(upcoming.spans), j - skip, n_steps - skip))
                yield {name: tokens.index_select(0, index[j]) for name, tokens in current.slot.items()}
            slots.release(current.turn)
            current, n_steps, skip = upcoming, n_next, 0
    finally:  # reads in flight end first: a slot freed under a pending copy could be handed to another tensor
        pool.shutdown(wait=True, cancel_futures=True)


def _batch_index(read: _BufferRead, n_steps: int, device: torch.device) -> torch.Tensor:
    """``(n_steps, batch_tokens)`` buffer token indices of each batch, sorted within it, as the host loader's."""
    size = read.loader.batch_tokens
    index = np.sort(read.order()[:n_steps * size].reshape(n_steps, size), axis=1)
    return torch.from_numpy(index).to(device)
