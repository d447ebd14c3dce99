"""Shuffled, aligned token batches from several models' activations (saev-style buffered shuffle).

Training a Universal SAE needs, every step, token vectors of EVERY model at the SAME
(image, token) positions. :class:`TokenLoader` serves them from :class:`TokenSource`\\ s
of equal layout (rows x tokens per row; each model its own width and dtype).

Design:

* **Blocks.** Rows are grouped in blocks of ``block_rows`` = the largest storage chunk
  length of the sources. Data is read only as whole blocks (rows ``k * block_rows`` to
  ``min((k + 1) * block_rows, n_rows)``), so reads are sequential and chunk-aligned;
  blocks without a usable row are not read.
* **Buffers.** Epoch ``e`` visits the blocks in the order
  ``np.random.default_rng([seed, e]).permutation(n_blocks)``, cut into consecutive
  buffers of ``G = max(1, buffer_tokens // (block_rows * tokens_per_row))`` blocks.
  Epoch 0 starts with a ramp: its first buffer holds just enough blocks for two batches
  (``first_buffer_blocks``), each next one twice as many, up to ``G``; so the first batch
  waits for a few blocks, not for a whole buffer, whatever ``buffer_tokens`` is. A
  buffer's tokens of rows valid in every source, flattened to ``(n_tokens, d_i)`` per
  source, are shuffled by ONE permutation from ``np.random.default_rng([seed, e, b])``
  shared by all sources: position ``p`` of every model's batch is the same image token.
  Shuffling is per token, so a batch mixes many images; its quality grows with the buffer.
* **Batches.** A buffer gives ``n_tokens // batch_tokens`` batches of consecutive slices
  of the shuffled tokens, each slice's tokens in buffer order (reading them in order is
  faster; a batch is a set to the loss); the remainder is dropped (it changes from epoch
  to epoch). Batches cross buffers and epochs as one infinite stream of global steps.
* **Determinism and resuming.** The batch of global step ``s`` is a pure function of
  ``(seed, s)`` and the sources: the steps of every buffer follow from the valid masks
  alone (a per-epoch step table, computed lazily), so ``batches(start_step=s)`` goes
  straight to the right buffer and yields exactly what an uninterrupted stream would.
* **Reading beside training** (:mod:`usae.activations.prefetch`): two buffers exist at
  once, the one batches are gathered from and the next, read block by block by
  ``read_threads`` threads at a pace spread over the current buffer's batches (no burst
  of reading when a buffer ends, hence no slow steps); uncompressed store chunks are
  memory-mapped, not copied (the maps kept while the loader lives, their checksums checked at
  every read), and not scanned for NaN/inf where the store says its writer
  checked them (its checksums prove the bytes unchanged since); each batch is gathered
  alone, ``prefetch`` batches ahead of the consumer, by ``read_threads + 1`` threads at once.

Batches are ``{name: torch.Tensor (batch_tokens, d_i)}`` (dtype as stored; pinned if
``pin_memory``) that share memory with nothing the loader writes while they are referenced:
they may be kept.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from usae.activations.chunk_files import MappedFiles
from usae.activations.device_buffer import stream_device_batches
from usae.activations.prefetch import stream_batches
from usae.activations.sources import TokenSource, check_finite
from usae.config.train import TrainConfig

logger = logging.getLogger(__name__)

_PLAN_CACHE = 8
RAMP_BATCHES = 2  # batches the first buffer of epoch 0 holds: what the first batch waits for
MAX_MAPS = 16_384


@dataclass(frozen=True)
class Plan:
    """One epoch: block order, buffer ``b`` = ``order[bounds[b]:bounds[b + 1]]``, and its number of batches."""

    order: np.ndarray
    bounds: np.ndarray
    steps: np.ndarray


class TokenLoader:
    """Infinite, resumable stream of shuffled token batches aligned across sources.

    Args:
        sources: model name -> source; all with the same rows and tokens per row.
        batch_tokens: tokens per batch.
        buffer_tokens: tokens per shuffle buffer (rounded down to whole blocks, at least one).
        seed: non-negative seed of the block orders and token permutations.
        prefetch: batches gathered ahead of the consumer (at least 1).
        read_threads: block reads in flight at once; also the gather threads beside the prefetch thread
            (default: ``train.read_threads``'s).
        pin_memory: gather batches into page-locked memory (needs CUDA) for fast async copies.

    Raises:
        ValueError: no source, sources of different layouts, bad sizes, no row valid in
            every source, or ``batch_tokens`` larger than one buffer.
    """

    def __init__(self, sources: dict[str, TokenSource], batch_tokens: int, buffer_tokens: int, seed: int,
                 prefetch: int = 2, read_threads: int = TrainConfig.read_threads, pin_memory: bool = False) -> None:
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
        self._check_sizes(int(buffer_tokens))
        # Map chunk files only while two buffers' maps, with those kept between reads (``chunk_files.KEPT_MAPS``),
        # stay far below Linux's default 65,530 maps.
        chunks = sum(-(-self.rows_per_buffer // s.chunk_rows) + 1 for s in sources.values())
        self.map_chunks = 2 * chunks <= MAX_MAPS
        self.maps = MappedFiles()  # the chunk files' maps, kept while the loader lives
        self._lock = threading.RLock()
        self._plans: OrderedDict[int, Plan] = OrderedDict()
        self._epoch_steps: dict[int, int] = {}
        if self.steps_per_epoch == 0:
            raise ValueError(f"no buffer of epoch 0 holds batch_tokens={self.batch_tokens} valid tokens "
                             f"({int(self.valid.sum())} of {self.n_rows} rows valid); raise buffer_tokens")
        logger.info("TokenLoader: %d sources, %d rows x %d tokens (%d valid rows), blocks of %d rows, "
                    "%d blocks per buffer (%.1f MB; epoch 0 ramps up from %d), %d steps in epoch 0", len(sources),
                    self.n_rows, self.tokens_per_row, int(self.valid.sum()), self.block_rows, self.blocks_per_buffer,
                    self.bytes_per_buffer / 1e6, self.first_buffer_blocks, self.steps_per_epoch)

    def _check_sizes(self, buffer_tokens: int) -> None:
        """Blocks per buffer (full and first of epoch 0); refuse a batch larger than a full buffer."""
        block_tokens = self.block_rows * self.tokens_per_row
        self.blocks_per_buffer = min(max(1, buffer_tokens // block_tokens), self.n_blocks)
        ramp = math.ceil(RAMP_BATCHES * self.batch_tokens / block_tokens)
        self.first_buffer_blocks = min(max(1, ramp), self.blocks_per_buffer)
        self.rows_per_buffer = min(self.blocks_per_buffer * self.block_rows, self.n_rows)
        capacity = self.rows_per_buffer * self.tokens_per_row
        if self.batch_tokens > capacity:
            least = -(-self.batch_tokens // block_tokens) * block_tokens
            fix = ("lower batch_tokens: the sources hold only that many tokens" if capacity == self.n_rows *
                   self.tokens_per_row else f"raise buffer_tokens to at least {least} (more shuffles better)")
            raise ValueError(f"batch_tokens={self.batch_tokens} exceeds the {capacity} tokens of one buffer "
                             f"({self.blocks_per_buffer} blocks of {self.block_rows} rows x {self.tokens_per_row} "
                             f"tokens); {fix}")

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
                self._epoch_steps[epoch] = int(self.plan(epoch).steps.sum())
            return self._epoch_steps[epoch]

    def locate(self, step: int) -> tuple[int, int, int]:
        """``(epoch, buffer, batch within buffer)`` of global step ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, first = 0, self.steps_in_epoch(0)
        if step >= first and self.blocks_per_buffer == self.n_blocks:  # after epoch 0, one buffer: alike
            epoch, step = divmod(step - first, self.steps_in_epoch(1))
            epoch += 1
        else:
            while step >= (n := self.steps_in_epoch(epoch)):
                step, epoch = step - n, epoch + 1
        ends = np.cumsum(self.plan(epoch).steps)
        buffer = int(np.searchsorted(ends, step, side="right"))
        return epoch, buffer, int(step - (ends[buffer - 1] if buffer else 0))

    def batches(self, start_step: int = 0, device: torch.device | str | None = None
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Infinite stream of batches ``{name: (batch_tokens, d_i)}`` from global step ``start_step``.

        ``device``: gather the batches there, from shuffle buffers held on it
        (:mod:`usae.activations.device_buffer`: the same batches, on ``device``); None:
        gather on the host (:mod:`usae.activations.prefetch`).

        Closing or dropping the stream stops its background threads; an error in them
        (a damaged store, NaN/inf) is raised by the stream as is.
        """
        epoch, buffer, skip = self.locate(int(start_step))
        if device is not None:
            return stream_device_batches(self, epoch, buffer, skip, torch.device(device))
        return stream_batches(self, epoch, buffer, skip)

    def buffer_sizes(self, epoch: int) -> list[int]:
        """Blocks of each buffer of ``epoch``: a doubling ramp from ``first_buffer_blocks`` in epoch 0."""
        full = self.blocks_per_buffer
        size, left, sizes = (self.first_buffer_blocks if epoch == 0 else full), self.n_blocks, []
        while left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
            size = min(2 * size, full)
        return sizes

    def plan(self, epoch: int) -> Plan:
        """Block order, buffer bounds and batches per buffer of ``epoch`` (a few epochs are cached)."""
        with self._lock:
            plan = self._plans.get(epoch)
            if plan is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
                bounds = np.concatenate([[0], np.cumsum(self.buffer_sizes(epoch))])
                tokens = np.add.reduceat(self.block_valid[order], bounds[:-1]) * self.tokens_per_row
                plan = self._plans[epoch] = Plan(order=order, bounds=bounds, steps=tokens // self.batch_tokens)
                while len(self._plans) > _PLAN_CACHE:
                    self._plans.popitem(last=False)
            self._plans.move_to_end(epoch)
            return plan

    def buffer_blocks(self, epoch: int, buffer: int) -> list[int]:
        """Blocks of buffer ``buffer`` of ``epoch`` that hold a valid row, in reading order."""
        plan = self.plan(epoch)
        return [int(k) for k in plan.order[plan.bounds[buffer]:plan.bounds[buffer + 1]] if self.block_valid[k] > 0]

    def block_span(self, block: int) -> tuple[int, int]:
        """Rows ``(start, stop)`` of block ``block``."""
        return block * self.block_rows, min((block + 1) * self.block_rows, self.n_rows)

    def read_tokens(self, blocks: Sequence[int]) -> dict[str, np.ndarray]:
        """The tokens of the valid rows of ``blocks``, read directly (no shuffle, no thread), checked finite.

        Returns:
            model name -> ``(n_tokens, d_i)`` array as stored, the same positions in every model.
        """
        spans = [self.block_span(int(k)) for k in blocks]
        keep = np.concatenate([self.valid[start:stop] for start, stop in spans]) if spans else np.zeros(0, bool)
        out = {}
        for name, source in self.sources.items():
            parts = []
            for start, stop in spans:
                block = np.empty((stop - start, self.tokens_per_row, source.d_model), source.dtype)
                source.read_into(start, stop, block)
                check_finite(source, block, start)
                parts.append(block)
            rows = np.concatenate(parts) if parts else np.zeros((0, self.tokens_per_row, source.d_model), source.dtype)
            out[name] = rows[keep].reshape(-1, source.d_model)
        return out
