"""Background reading and gathering for :class:`~usae.activations.loader.TokenLoader`: double buffered, paced.

Beside the consumer, one thread (``TokenLoader-prefetch``) gathers batches with the help of
``read_threads`` gather threads, and a pool of ``read_threads`` threads reads blocks:

* **Pieces, not copies.** A block of an uncompressed usae store is its chunk files,
  memory-mapped (the maps kept from epoch to epoch in ``loader.maps``) and checked at every
  read (checksum; NaN/inf unless the store's writer checked them, ``TokenSource.checked_finite``)
  where they lie in the page cache (``TokenSource.read_pieces``); other sources are read into
  one array a block. A buffer is the list of its blocks' pieces: nothing is copied into a buffer.
* **Paced reads.** While batches come from one buffer, the next one's block reads are
  submitted in step with the consumer's progress, to be done when ``PACE`` of the
  current buffer is consumed: the reading cost is spread evenly over the steps instead
  of slowing the few steps after a buffer switch. Only the stream's first buffer is read
  at once (the loader keeps it small, see its ramp).
* **Batch by batch.** Each batch is gathered (``np.take``, which releases the GIL,
  piece by piece in ascending order) into arrays reused once the consumer dropped them,
  when the queue of ``prefetch`` ready batches has room: gathering is spread evenly too,
  and a batch kept by the consumer keeps no buffer alive. A batch holds its tokens in
  buffer order (the set is the shuffled slice; the order within it is the reading order).
  Its rows are cut into ``read_threads + 1`` ranges gathered at once, one by this thread
  and the others by as many gather threads (not the read threads, so that a gather never
  waits behind a read): the gather is the loader's largest cost, and one core alone would
  keep it from matching a plain read of the files (``benchmarks/bench_loader.py``).

An error in any thread is re-raised by the consumer as is. Closing or dropping the stream
wakes the prefetch thread wherever it waits (no polling) and waits for it, which waits for
the reads and the gather in flight: once ``close()`` returns, no thread of the stream runs.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from usae.activations.chunk_files import MappedFiles
from usae.activations.sources import TokenSource, check_finite

if TYPE_CHECKING:
    from usae.activations.loader import TokenLoader

logger = logging.getLogger(__name__)

THREAD_PREFIX = "TokenLoader"  # every thread of a stream: -prefetch, -read_<i>, -gather_<i>
JOIN_S = 60.0  # a closed stream waits this long for its prefetch thread (a read stuck on a dead disk: no longer)
Pieces = dict[str, tuple[list[np.ndarray], np.ndarray]]
"""Per source, a buffer's pieces as ``(tokens, d)`` arrays in buffer order and the buffer token index of each
piece's first token (with the end last)."""
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
    """The block reads of one buffer, submitted on demand; each gives a source's rows as pieces."""

    def __init__(self, loader: TokenLoader, pool: ThreadPoolExecutor, epoch: int, buffer: int) -> None:
        self.epoch, self.buffer = epoch, buffer
        self.spans = [loader.block_span(k) for k in loader.buffer_blocks(epoch, buffer)]
        self.offsets = np.concatenate([[0], np.cumsum([stop - start for start, stop in self.spans])]).astype(int)
        self.loader, self.pool = loader, pool
        self.futures: list[Future] = []  # block-major, one per source

    def submit(self, n_blocks: int) -> None:
        """Have the first ``n_blocks`` blocks' reads submitted (each source a task)."""
        sources = self.loader.sources
        for i in range(len(self.futures) // len(sources), min(n_blocks, len(self.spans))):
            for name, source in sources.items():
                self.futures.append(self._read(i, name, source))

    def _read(self, block: int, name: str, source: TokenSource) -> Future:
        """Submit the read of the buffer's ``block``-th block of ``source`` (its future gives the pieces)."""
        start, stop = self.spans[block]
        return self.pool.submit(_read_checked, source, start, stop, self.loader.map_chunks, self.loader.maps)

    def finish(self, stopped: Future) -> bool:
        """Submit what is left and wait for every read (errors raised as each read ends); False if ``stopped``
        is done first."""
        self.submit(len(self.spans))
        pending = set(self.futures)
        while pending:
            done, _ = wait([*pending, stopped], return_when=FIRST_COMPLETED)
            if stopped in done:
                return False
            for future in done:
                future.result()
            pending -= done
        return True

    def pieces(self) -> Pieces:
        """The buffer's :data:`Pieces`. Call after :meth:`finish`."""
        per_row, names = self.loader.tokens_per_row, list(self.loader.sources)
        out = {}
        for s, name in enumerate(names):
            arrays = [piece for future in self.futures[s::len(names)] for piece in future.result()]
            rows = np.cumsum([0] + [len(a) for a in arrays])
            out[name] = ([a.reshape(len(a) * per_row, -1) for a in arrays], rows * per_row)
        return out

    def order(self) -> np.ndarray:
        """Buffer token indices of the buffer's valid tokens, in the buffer's shuffled order."""
        per_row, loader = self.loader.tokens_per_row, self.loader
        row_valid = np.concatenate([loader.valid[start:stop] for start, stop in self.spans])
        token_index = (np.flatnonzero(row_valid)[:, None] * per_row + np.arange(per_row)).ravel()
        perm = np.random.default_rng([loader.seed, self.epoch, self.buffer]).permutation(len(token_index))
        return token_index[perm]


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy one (read off an empty array: no read-only map is wrapped)."""
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _read_checked(source: TokenSource, start: int, stop: int, map_chunks: bool,
                  maps: MappedFiles) -> list[np.ndarray]:
    pieces = source.read_pieces(start, stop, map_chunks=map_chunks, maps=maps)
    for piece, offset in zip(pieces, np.cumsum([0] + [len(p) for p in pieces])):
        check_finite(source, piece, start + int(offset))
    return pieces


def _buffers(loader: TokenLoader, epoch: int, buffer: int) -> Iterator[tuple[int, int, int]]:
    """``(epoch, buffer, batches)`` of every buffer with a batch, from ``(epoch, buffer)`` on."""
    while True:
        steps = loader.plan(epoch).steps
        for b in range(buffer, len(steps)):
            if steps[b] > 0:
                yield epoch, b, int(steps[b])
        epoch, buffer = epoch + 1, 0


class _Ready:
    """The gathered batches between the prefetch thread and the consumer: a bounded queue whose waits end
    as soon as there is something to do (an item, room, the stream closed, the producer gone), never by
    polling. :attr:`stopped` is done once the stream is closed, for waits on futures."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, deque()
        self.ended = False
        self.stopped: Future = Future()
        self._cond = threading.Condition()

    @property
    def closed(self) -> bool:
        return self.stopped.done()

    def qsize(self) -> int:
        return len(self.items)

    def put(self, item: object, waiting: Callable[[], None] = lambda: None) -> bool:
        """Queue ``item`` once there is room, calling ``waiting()`` first and after each batch taken meanwhile;
        False (not queued) if the stream is closed first."""
        while True:
            waiting()
            with self._cond:
                if self.closed:
                    return False
                if len(self.items) < self.size:
                    self.items.append(item)
                    self._cond.notify_all()
                    return True
                self._cond.wait()

    def get(self) -> object:
        """The next item, once there is one.

        Raises:
            RuntimeError: the producer ended without queueing one.
        """
        with self._cond:
            self._cond.wait_for(lambda: self.items or self.ended)
            if not self.items:
                raise RuntimeError("TokenLoader prefetch thread ended without a result")
            item = self.items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """The consumer is gone: every wait of the producer ends."""
        with self._cond:
            if not self.stopped.done():
                self.stopped.set_result(None)
            self._cond.notify_all()

    def end(self) -> None:
        """The producer is gone: a waiting :meth:`get` ends."""
        with self._cond:
            self.ended = True
            self._cond.notify_all()


def stream_batches(loader: TokenLoader, epoch: int, buffer: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches from batch ``skip`` of ``buffer`` of ``epoch`` on (see the module docstring)."""
    ready = _Ready(loader.prefetch)
    thread = threading.Thread(target=_produce, args=(loader, epoch, buffer, skip, ready),
                              name=f"{THREAD_PREFIX}-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        ready.close()
        # Not from a loader's own thread (the garbage collector may finalise a dropped stream in any thread): the
        # prefetch thread waits for its read and gather threads, which would then wait for themselves.
        if not threading.current_thread().name.startswith(THREAD_PREFIX):
            thread.join(JOIN_S)
            if thread.is_alive():
                logger.warning("TokenLoader: the prefetch thread still runs %.0f s after its stream was closed "
                               "(a read that does not return?); left behind", JOIN_S)


def _produce(loader: TokenLoader, epoch: int, buffer: int, skip: int, ready: _Ready) -> None:
    pool = ThreadPoolExecutor(loader.read_threads, thread_name_prefix=f"{THREAD_PREFIX}-read")
    # arrays: the queue's batches, the one being gathered, the consumer's
    gatherers = _Gatherers(loader.read_threads, _BatchArrays(loader.prefetch + 4))
    try:
        buffers = _buffers(loader, epoch, buffer)
        e, b, n_steps = next(buffers)
        current = _BufferRead(loader, pool, e, b)
        while True:
            if not current.finish(ready.stopped):
                return
            e, b, n_next = next(buffers)
            upcoming = _BufferRead(loader, pool, e, b)
            if not _serve(loader, current, upcoming, skip, n_steps, ready, gatherers):
                return
            current, n_steps, skip = upcoming, n_next, 0
    except BaseException as err:  # handed to the consumer, which re-raises it
        logger.debug("TokenLoader prefetch thread failed: %r", err)
        ready.put(_Failure(err))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gatherers.close()
        ready.end()


def _serve(loader: TokenLoader, current: _BufferRead, upcoming: _BufferRead, skip: int, n_steps: int,
           ready: _Ready, gatherers: _Gatherers) -> bool:
    """Put batches ``skip:n_steps`` of ``current`` on ``ready``, submitting ``upcoming``'s reads as they fall due
    (each time the consumer takes a batch); False if the stream was closed."""
    order, size, pieces = current.order(), loader.batch_tokens, current.pieces()
    n_batches, put = n_steps - skip, 0

    def submit_due() -> None:
        upcoming.submit(reads_due(len(upcoming.spans), put - ready.qsize(), n_batches))

    for j in range(skip, n_steps):
        if ready.closed:
            return False
        batch = gatherers.gather(pieces, np.sort(order[j * size:(j + 1) * size]), loader.pin_memory)
        if not ready.put(batch, submit_due):
            return False
        put += 1
    return True


class _BatchArrays:
    """Arrays to gather batches into, each reused once nothing else refers to it.

    A fresh batch-sized allocation faults in every page, which costs as much as the copy
    itself. A batch tensor (``torch.from_numpy``) and every view of it keep a reference to
    its array, so an array whose only references are the pool's is free: reuse never
    overwrites a batch the consumer still holds. At most ``size`` arrays are pooled per source;
    beyond that, batches get fresh ones.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.pool: dict[tuple, list[np.ndarray]] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A free array of ``shape`` and ``dtype`` from the pool of source ``name``."""
        arrays = self.pool.setdefault((name, shape, np.dtype(dtype).str), [])
        for i in range(len(arrays)):
            if sys.getrefcount(arrays[i]) == 2:  # the list's reference and getrefcount's argument
                return arrays[i]
        array = np.empty(shape, dtype)
        if len(arrays) < self.size:
            arrays.append(array)
        return array


class _Gatherers:
    """Gathers each batch in ``helpers + 1`` row ranges at once, the last on the calling thread and the others
    on ``helpers`` gather threads of its own, into arrays of ``arrays``."""

    def __init__(self, helpers: int, arrays: _BatchArrays) -> None:
        self.pool = ThreadPoolExecutor(helpers, thread_name_prefix=f"{THREAD_PREFIX}-gather")
        self.n_ranges, self.arrays = helpers + 1, arrays

    def close(self) -> None:
        """End the gather threads (idle: a gather's caller waits for its ranges)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def gather(self, pieces: Pieces, index: np.ndarray, pin_memory: bool) -> dict[str, torch.Tensor]:
        """The tokens ``index`` (sorted buffer token indices) of every source, as ``{name: (len(index), d)}``."""
        batch = {}
        for name, (parts, _) in pieces.items():
            shape, dtype = (len(index), parts[0].shape[1]), parts[0].dtype
            if pin_memory:  # CUDA's caching host allocator reuses pinned blocks itself
                batch[name] = torch.empty(shape, dtype=torch_dtype(dtype), pin_memory=True)
            else:
                batch[name] = torch.from_numpy(self.arrays.get(name, shape, dtype))
        outs = {name: tensor.numpy() for name, tensor in batch.items()}
        bounds = np.linspace(0, len(index), self.n_ranges + 1).astype(np.int64)
        helped = [self.pool.submit(_take, pieces, index, outs, lo, hi) for lo, hi in zip(bounds[:-2], bounds[1:-1])]
        _take(pieces, index, outs, bounds[-2], bounds[-1])
        for future in helped:
            future.result()
        return batch


def _take(pieces: Pieces, index: np.ndarray, outs: dict[str, np.ndarray], lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of the batch ``index``: each source's tokens taken piece by piece into ``outs``."""
    rows = index[lo:hi]
    for name, (parts, starts) in pieces.items():
        out, cuts = outs[name][lo:hi], np.searchsorted(rows, starts)
        # Each row's index within its piece, in one pass: a buffer has a piece per chunk, so per-piece
        # arithmetic would cost a temporary per piece and batch (about a third of the Python time).
        local = rows - np.repeat(starts[:-1], np.diff(cuts))
        for part, a, b in zip(parts, cuts[:-1].tolist(), cuts[1:].tolist()):
            if b > a:  # indices are in range: no bounds pass
                np.take(part, local[a:b], axis=0, out=out[a:b], mode="clip")
