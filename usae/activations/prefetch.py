"""Background reading and gathering for :class:`~usae.activations.loader.TokenLoader`: double buffered, paced.

Beside the consumer, one thread (``TokenLoader-prefetch``) gathers batches and a pool of
``read_threads`` threads reads blocks:

* **Two slots.** Each source has two preallocated buffer arrays, reused for the whole
  stream (no fresh memory to fault in per buffer): batches are gathered from one while
  the next buffer is read into the other.
* **Paced reads.** The next buffer's block reads are submitted in step with the
  consumer's progress through the current buffer, to be done when ``PACE`` of it is
  consumed: the reading cost is spread evenly over the steps instead of slowing the few
  steps after a buffer switch. Only the stream's first buffer is read at once.
* **Batch by batch.** Each batch is gathered (``np.take``, which releases the GIL) into
  new tensors when the queue of ``prefetch`` ready batches has room, so gathering is
  spread evenly too, and a batch kept by the consumer keeps no buffer alive.

Reads decode straight into the slot (``TokenSource.read_into``) and are checked for
NaN/inf there. An error in any thread is re-raised by the consumer as is; closing or
dropping the stream sets a stop event that ends the threads.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from usae.activations.sources import TokenSource, check_finite

if TYPE_CHECKING:
    from usae.activations.loader import TokenLoader

logger = logging.getLogger(__name__)

_POLL_S = 0.1
PACE = 0.75  # the next buffer is read by the time this share of the current one is consumed


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def reads_due(n_blocks: int, consumed: int, n_batches: int) -> int:
    """Blocks of the next buffer to have submitted once ``consumed`` of ``n_batches`` batches are taken.

    ``consumed`` is negative while the consumer still takes batches of the buffer before.

    One batch ahead of an even spread that ends at ``PACE`` of the current buffer, so a
    block is in flight while the consumer trains on the batch before it is needed.
    """
    if n_batches <= 0:
        return n_blocks
    return max(0, min(n_blocks, math.ceil(n_blocks * (consumed + 1) / (PACE * n_batches))))


class _BufferRead:
    """The block reads of one buffer into one slot, submitted on demand."""

    def __init__(self, loader: TokenLoader, pool: ThreadPoolExecutor, slot: dict[str, np.ndarray], epoch: int,
                 buffer: int) -> None:
        self.epoch, self.buffer = epoch, buffer
        self.spans = [loader.block_span(k) for k in loader.buffer_blocks(epoch, buffer)]
        self.offsets = np.concatenate([[0], np.cumsum([stop - start for start, stop in self.spans])]).astype(int)
        self.loader, self.pool, self.slot = loader, pool, slot
        self.futures: list[Future] = []

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def submit(self, n_blocks: int) -> None:
        """Have the first ``n_blocks`` blocks' reads submitted (each source a task)."""
        for i in range(len(self.futures) // len(self.slot), min(n_blocks, len(self.spans))):
            (start, stop), offset = self.spans[i], self.offsets[i]
            for name, source in self.loader.sources.items():
                out = self.slot[name][offset:offset + stop - start]
                self.futures.append(self.pool.submit(_read_checked, source, out, start, stop))

    def finish(self, stop: threading.Event) -> bool:
        """Submit what is left and wait for every read (errors raised); False if ``stop`` came first."""
        self.submit(len(self.spans))
        pending = self.futures
        while pending:
            if stop.is_set():
                return False
            done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
        return True

    def order(self) -> np.ndarray:
        """Slot token indices of the buffer's valid tokens, in the buffer's shuffled order."""
        per_row, loader = self.loader.tokens_per_row, self.loader
        row_valid = np.concatenate([loader.valid[start:stop] for start, stop in self.spans])
        token_index = (np.flatnonzero(row_valid)[:, None] * per_row + np.arange(per_row)).ravel()
        perm = np.random.default_rng([loader.seed, self.epoch, self.buffer]).permutation(len(token_index))
        return token_index[perm]


def _read_checked(source: TokenSource, out: np.ndarray, start: int, stop: int) -> None:
    source.read_into(start, stop, out)
    check_finite(source, out, start)


def _buffers(loader: TokenLoader, epoch: int, buffer: int) -> Iterator[tuple[int, int, int]]:
    """``(epoch, buffer, batches)`` of every buffer with a batch, from ``(epoch, buffer)`` on."""
    while True:
        steps = loader.plan(epoch).steps
        for b in range(buffer, len(steps)):
            if steps[b] > 0:
                yield epoch, b, int(steps[b])
        epoch, buffer = epoch + 1, 0


def _slots(loader: TokenLoader) -> list[dict[str, np.ndarray]]:
    shape = (loader.rows_per_buffer, loader.tokens_per_row)
    return [{name: np.empty(shape + (s.d_model,), s.dtype) for name, s in loader.sources.items()} for _ in range(2)]


def stream_batches(loader: TokenLoader, epoch: int, buffer: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches from batch ``skip`` of ``buffer`` of ``epoch`` on (see the module docstring)."""
    ready: queue.Queue = queue.Queue(maxsize=loader.prefetch)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(loader, epoch, buffer, skip, ready, stop),
                              name="TokenLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = _get(ready, thread)
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()


def _produce(loader: TokenLoader, epoch: int, buffer: int, skip: int, ready: queue.Queue,
             stop: threading.Event) -> None:
    pool = ThreadPoolExecutor(loader.read_threads, thread_name_prefix="TokenLoader-read")
    try:
        slots, buffers = _slots(loader), _buffers(loader, epoch, buffer)
        e, b, n_steps = next(buffers)
        current = _BufferRead(loader, pool, slots[0], e, b)
        for k in itertools.count(1):
            if not current.finish(stop):
                return
            e, b, n_next = next(buffers)
            upcoming = _BufferRead(loader, pool, slots[k % 2], e, b)
            if not _serve(loader, current, upcoming, skip, n_steps, ready, stop):
                return
            current, n_steps, skip = upcoming, n_next, 0
    except BaseException as err:  # handed to the consumer, which re-raises it
        logger.debug("TokenLoader prefetch thread failed: %r", err)
        _wait(lambda: _try_put(ready, _Failure(err)), stop)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _serve(loader: TokenLoader, current: _BufferRead, upcoming: _BufferRead, skip: int, n_steps: int,
           ready: queue.Queue, stop: threading.Event) -> bool:
    """Put batches ``skip:n_steps`` of ``current`` on ``ready``, submitting ``upcoming``'s reads as they fall due."""
    order, size, rows = current.order(), loader.batch_tokens, current.n_rows
    flat = {name: a[:rows].reshape(rows * loader.tokens_per_row, -1) for name, a in current.slot.items()}
    n_batches, put = n_steps - skip, 0
    for j in range(skip, n_steps):
        batch = _gather(flat, order[j * size:(j + 1) * size], loader.pin_memory)
        while True:
            upcoming.submit(reads_due(len(upcoming.spans), put - ready.qsize(), n_batches))
            if _try_put(ready, batch):
                break
            if stop.is_set():
                return False
        put += 1
    return True


def _gather(flat: dict[str, np.ndarray], index: np.ndarray, pin_memory: bool) -> dict[str, torch.Tensor]:
    batch = {}
    for name, array in flat.items():
        dtype = torch.from_numpy(array[:0]).dtype
        tensor = torch.empty((len(index), array.shape[1]), dtype=dtype, pin_memory=pin_memory)
        np.take(array, index, axis=0, out=tensor.numpy(), mode="clip")  # indices are in range: no bounds pass
        batch[name] = tensor
    return batch


def _try_put(ready: queue.Queue, item: object) -> bool:
    try:
        ready.put(item, timeout=_POLL_S)
        return True
    except queue.Full:
        return False


def _wait(attempt: Callable[[], bool], stop: threading.Event) -> bool:
    """Retry ``attempt`` (a bounded wait) until it succeeds (True) or ``stop`` is set (False)."""
    while not stop.is_set():
        if attempt():
            return True
    return False


def _get(ready: queue.Queue, thread: threading.Thread) -> object:
    while True:
        try:
            return ready.get(timeout=_POLL_S)
        except queue.Empty:
            if not thread.is_alive() and ready.empty():
                raise RuntimeError("TokenLoader prefetch thread ended without a result") from None
