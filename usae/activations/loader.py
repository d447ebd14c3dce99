"""Shuffled, aligned token batches from several models' activations (saev-style buffered shuffle).

Training a Universal SAE needs, every step, token vectors of EVERY model at the SAME
(image, token) positions. :class:`TokenLoader` serves them from :class:`TokenSource`\\ s
of equal layout (rows x tokens per row; each model its own width and dtype).

Design:

* **Blocks.** Rows are grouped in blocks of ``block_rows`` = the largest storage chunk
  length of the sources. Data is read only as whole blocks (``read(k * block_rows,
  min((k + 1) * block_rows, n_rows))``), so reads are sequential and chunk-aligned;
  blocks without a usable row are not read. ``read_threads`` reads are in flight at once.
* **Buffers.** Epoch ``e`` visits the blocks in the order
  ``np.random.default_rng([seed, e]).permutation(n_blocks)``. Buffer ``b`` of the epoch
  holds the next ``G = max(1, buffer_tokens // (block_rows * tokens_per_row))`` blocks of
  that order. Its tokens of rows that are valid in every source, flattened to
  ``(n_tokens, d_i)`` per source, are shuffled by ONE permutation from
  ``np.random.default_rng([seed, e, b])`` shared by all sources: position ``p`` of every
  model's batch is the same image token. Shuffling is per token, so a batch mixes many
  images; its quality grows with ``buffer_tokens``.
* **Batches.** A buffer gives ``n_tokens // batch_tokens`` batches of consecutive slices
  of the shuffled tokens; the remainder is dropped (it changes from epoch to epoch).
  Batches cross buffers and epochs as one infinite stream of global steps.
* **Determinism and resuming.** The batch of global step ``s`` is a pure function of
  ``(seed, s)`` and the sources: the steps of every buffer follow from the valid masks
  alone (a per-epoch step table, computed lazily), so ``batches(start_step=s)`` goes
  straight to the right buffer and yields exactly what an uninterrupted stream would.
* **Prefetch.** A daemon thread assembles the next ``prefetch`` buffers while the
  consumer takes batches of the current one; at most about ``1 + prefetch`` buffers exist
  at once. An exception in the thread is re-raised by the consumer as is; closing or
  dropping the generator sets a stop event that ends the thread.

Batches are ``{name: torch.Tensor (batch_tokens, d_i)}`` views of one buffer
(``torch.from_numpy``, dtype as stored; pinned if ``pin_memory``): copy them (e.g. to the
GPU) rather than keeping them, or the whole buffer stays alive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from usae.activations.sources import TokenSource

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_PLAN_CACHE = 8


@dataclass(frozen=True)
class _Plan:
    """One epoch: block order and the number of batches of each buffer."""

    order: np.ndarray
    steps: np.ndarray


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class TokenLoader:
    """Infinite, resumable stream of shuffled token batches aligned across sources.

    Args:
        sources: model name -> source; all with the same rows and tokens per row.
        batch_tokens: tokens per batch.
        buffer_tokens: tokens per shuffle buffer (rounded down to whole blocks, at least one).
        seed: non-negative seed of the block orders and token permutations.
        prefetch: buffers assembled ahead by the background thread (at least 1).
        read_threads: block reads in flight at once.
        pin_memory: pin buffers in page-locked memory (needs CUDA) for fast async copies.

    Raises:
        ValueError: no source, sources of different layouts, bad sizes, no row valid in
            every source, or ``batch_tokens`` larger than one buffer.
    """

    def __init__(self, sources: dict[str, TokenSource], batch_tokens: int, buffer_tokens: int, seed: int,
                 prefetch: int = 1, read_threads: int = 4, pin_memory: bool = False) -> None:
        if not sources:
            raise ValueError("TokenLoader needs at least one source")
        for label, value, low in [("batch_tokens", batch_tokens, 1), ("buffer_tokens", buffer_tokens, 1),
                                  ("seed", seed, 0), ("prefetch", prefetch, 1), ("read_threads", read_threads, 1)]:
            if int(value) != value or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        layouts = {name: (s.n_rows, s.tokens_per_row) for name, s in sources.items()}
        if len(set(layouts.values())) > 1:
            raise ValueError(f"sources differ in (rows, tokens per row): {layouts}")
        self.sources = dict(sources)
        self.batch_tokens, self.seed = int(batch_tokens), int(seed)
        self.prefetch, self.read_threads, self.pin_memory = int(prefetch), int(read_threads), bool(pin_memory)
        first = next(iter(sources.values()))
        self.n_rows, self.tokens_per_row = first.n_rows, first.tokens_per_row
        if self.n_rows == 0:
            raise ValueError(f"sources have no rows: {list(sources)}")
        self.valid = np.ones(self.n_rows, dtype=bool)
        for source in sources.values():
            if source.valid is not None:
                self.valid &= source.valid
        if not self.valid.any():
            raise ValueError(f"no row is valid in every source ({', '.join(sources)}); nothing to train on")
        self.block_rows = min(max(s.chunk_rows for s in sources.values()), self.n_rows)
        self.n_blocks = -(-self.n_rows // self.block_rows)
        starts = np.arange(0, self.n_rows, self.block_rows)
        self.block_valid = np.add.reduceat(self.valid.astype(np.int64), starts)
        block_tokens = self.block_rows * self.tokens_per_row
        self.blocks_per_buffer = min(max(1, int(buffer_tokens) // block_tokens), self.n_blocks)
        self.rows_per_buffer = min(self.blocks_per_buffer * self.block_rows, self.n_rows)
        capacity = self.rows_per_buffer * self.tokens_per_row
        if self.batch_tokens > capacity:
            least = -(-self.batch_tokens // block_tokens) * block_tokens
            fix = ("lower batch_tokens: the sources hold only that many tokens" if capacity == self.n_rows *
                   self.tokens_per_row else f"raise buffer_tokens to at least {least} (more shuffles better)")
            raise ValueError(f"batch_tokens={self.batch_tokens} exceeds the {capacity} tokens of one buffer "
                             f"({self.blocks_per_buffer} blocks of {self.block_rows} rows x {self.tokens_per_row} "
                             f"tokens); {fix}")
        self._lock = threading.RLock()
        self._plans: OrderedDict[int, _Plan] = OrderedDict()
        self._epoch_steps: dict[int, int] = {}
        if self.steps_per_epoch == 0:
            raise ValueError(f"no buffer of epoch 0 holds batch_tokens={self.batch_tokens} valid tokens "
                             f"({int(self.valid.sum())} of {self.n_rows} rows valid); raise buffer_tokens")
        logger.info("TokenLoader: %d sources, %d rows x %d tokens (%d valid rows), blocks of %d rows, "
                    "%d blocks per buffer (%.1f MB), %d steps in epoch 0", len(sources), self.n_rows,
                    self.tokens_per_row, int(self.valid.sum()), self.block_rows, self.blocks_per_buffer,
                    self.bytes_per_buffer / 1e6, self.steps_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        """Batches in epoch 0; other epochs may differ slightly (dropped remainders vary)."""
        return self.steps_in_epoch(0)

    @property
    def tokens_per_epoch(self) -> int:
        """(row, token) positions valid in every source, visited once per epoch (remainders dropped)."""
        return int(self.valid.sum()) * self.tokens_per_row

    @property
    def bytes_per_buffer(self) -> int:
        """Bytes read for one full buffer, over all sources."""
        row_bytes = sum(s.tokens_per_row * s.d_model * s.dtype.itemsize for s in self.sources.values())
        return self.rows_per_buffer * row_bytes

    def steps_in_epoch(self, epoch: int) -> int:
        """Batches in epoch ``epoch`` (computed from the valid masks, without reading data)."""
        with self._lock:
            if epoch not in self._epoch_steps:
                self._epoch_steps[epoch] = int(self._plan(epoch).steps.sum())
            return self._epoch_steps[epoch]

    def locate(self, step: int) -> tuple[int, int, int]:
        """``(epoch, buffer, batch within buffer)`` of global step ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch = 0
        if self.blocks_per_buffer == self.n_blocks:  # one buffer per epoch: every epoch alike
            epoch, step = divmod(step, self.steps_per_epoch)
        else:
            while step >= (n := self.steps_in_epoch(epoch)):
                step, epoch = step - n, epoch + 1
        ends = np.cumsum(self._plan(epoch).steps)
        buffer = int(np.searchsorted(ends, step, side="right"))
        return epoch, buffer, int(step - (ends[buffer - 1] if buffer else 0))

    def batches(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Infinite stream of batches ``{name: (batch_tokens, d_i)}`` from global step ``start_step``."""
        epoch, buffer, skip = self.locate(int(start_step))
        return self._stream(epoch, buffer, skip)

    def _plan(self, epoch: int) -> _Plan:
        with self._lock:
            plan = self._plans.get(epoch)
            if plan is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
                starts = np.arange(0, self.n_blocks, self.blocks_per_buffer)
                tokens = np.add.reduceat(self.block_valid[order], starts) * self.tokens_per_row
                plan = self._plans[epoch] = _Plan(order=order, steps=tokens // self.batch_tokens)
                while len(self._plans) > _PLAN_CACHE:
                    self._plans.popitem(last=False)
            self._plans.move_to_end(epoch)
            return plan

    def _stream(self, epoch: int, buffer: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        slots = threading.Semaphore(self.prefetch + 1)  # the consumer's buffer + those made ahead
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(epoch, buffer, skip, ready, slots, stop),
                                  name="TokenLoader-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = _get(ready, thread)
                if isinstance(item, _Failure):
                    raise item.error
                tensors, n_steps = item
                size = self.batch_tokens
                for s in range(n_steps):
                    yield {name: t[s * size:(s + 1) * size] for name, t in tensors.items()}
                del tensors, item
                slots.release()
        finally:
            stop.set()

    def _produce(self, epoch: int, buffer: int, skip: int, ready: queue.Queue, slots: threading.Semaphore,
                 stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="TokenLoader-read")
        try:
            while not stop.is_set():
                plan = self._plan(epoch)
                for b in range(buffer, len(plan.steps)):
                    n_steps = int(plan.steps[b])
                    if n_steps == 0:
                        continue
                    if not _wait(lambda: slots.acquire(timeout=_POLL_S), stop):
                        return
                    tensors = self._assemble(pool, epoch, b, plan, skip, n_steps)
                    if not _wait(lambda: _try_put(ready, (tensors, n_steps - skip)), stop):
                        return
                    del tensors
                    skip = 0
                epoch, buffer = epoch + 1, 0
        except BaseException as err:  # handed to the consumer, which re-raises it
            logger.debug("TokenLoader prefetch thread failed: %r", err)
            _wait(lambda: _try_put(ready, _Failure(err)), stop)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _assemble(self, pool: ThreadPoolExecutor, epoch: int, b: int, plan: _Plan, skip: int,
                  n_steps: int) -> dict[str, torch.Tensor]:
        """Read the blocks of buffer ``b``, keep valid rows, shuffle tokens; drop ``skip`` first batches."""
        size, per_row = self.block_rows, self.tokens_per_row
        blocks = [int(k) for k in plan.order[b * self.blocks_per_buffer:(b + 1) * self.blocks_per_buffer]
                  if self.block_valid[k] > 0]
        spans = [(k * size, min((k + 1) * size, self.n_rows)) for k in blocks]
        offsets = np.concatenate([[0], np.cumsum([stop - start for start, stop in spans])])
        n_rows = int(offsets[-1])
        raw = {name: np.empty((n_rows, per_row, s.d_model), dtype=s.dtype) for name, s in self.sources.items()}
        futures = [pool.submit(_read_into, source, raw[name], int(offset), start, stop)
                   for name, source in self.sources.items() for offset, (start, stop) in zip(offsets, spans)]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()
        row_valid = np.concatenate([self.valid[start:stop] for start, stop in spans])
        token_index = (np.flatnonzero(row_valid)[:, None] * per_row + np.arange(per_row)).ravel()
        perm = np.random.default_rng([self.seed, epoch, b]).permutation(len(token_index))
        take = token_index[perm[skip * self.batch_tokens:n_steps * self.batch_tokens]]
        tensors = {}
        for name, array in raw.items():
            tensor = torch.from_numpy(array.reshape(-1, array.shape[-1])[take])
            tensors[name] = tensor.pin_memory() if self.pin_memory else tensor
        return tensors


def _read_into(source: TokenSource, out: np.ndarray, offset: int, start: int, stop: int) -> None:
    block = source.read(start, stop)
    if block.shape != (stop - start,) + out.shape[1:]:
        raise ValueError(f"{source.name}: read({start}, {stop}) gave shape {block.shape}, "
                         f"expected {(stop - start,) + out.shape[1:]}")
    _check_finite(source, block, start)
    out[offset:offset + stop - start] = block


def _check_finite(source: TokenSource, block: np.ndarray, start: int) -> None:
    """Refuse NaN/inf as it is read: one bad value would make every later step non-finite."""
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


def _try_put(ready: queue.Queue, item: object) -> bool:
    try:
        ready.put(item, timeout=_POLL_S)
        return True
    except queue.Full:
        return False


def _wait(attempt, stop: threading.Event) -> bool:
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
