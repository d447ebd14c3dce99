"""Start of a training run: one batch stream for the whole run, and the data's mean from a strided sample.

Before step 0 only what step 0 needs is read: the decoder bias is the mean of blocks
spread evenly over the store, read directly (no shuffle buffer), and whatever needs a real
batch (timing the decoding methods) looks at the run's own first batch, which step 0 then
trains on. The loader's ramp (:mod:`usae.activations.loader`) makes that first batch wait
for a few blocks only, whatever ``train.buffer_tokens`` is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from usae.activations.loader import TokenLoader

logger = logging.getLogger(__name__)

MEAN_SAMPLE_TOKENS = 65_536  # tokens of the decoder-bias sample: a few blocks, read in well under a second


class RunStream:
    """The run's one batch stream; start-up code may :meth:`peek` at the next batch without taking it."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        self._batches = batches
        self._head: dict[str, torch.Tensor] | None = None

    def peek(self) -> dict[str, torch.Tensor]:
        """The batch the next ``next()`` returns."""
        if self._head is None:
            self._head = next(self._batches)
        return self._head

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        return next(self._batches)

    def close(self) -> None:
        """Stop the loader's background threads."""
        self._head = None
        self._batches.close()


def sample_blocks(loader: TokenLoader, n_tokens: int = MEAN_SAMPLE_TOKENS) -> np.ndarray:
    """Blocks holding a valid row, evenly strided over the store, enough for about ``n_tokens`` tokens."""
    candidates = np.flatnonzero(loader.block_valid > 0)
    n = min(len(candidates), max(1, math.ceil(n_tokens / (loader.block_rows * loader.tokens_per_row))))
    return np.unique(candidates[np.linspace(0, len(candidates) - 1, n).round().astype(np.int64)])


@torch.no_grad()
def initial_means(loader: TokenLoader, device: torch.device,
                  n_tokens: int = MEAN_SAMPLE_TOKENS) -> dict[str, torch.Tensor]:
    """Mean token of every source over the valid tokens of :func:`sample_blocks` (float64 sums).

    Raises:
        ValueError: NaN or inf in a sampled block (named by store and row).
    """
    blocks = sample_blocks(loader, n_tokens)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for block in blocks:
        tokens = loader.read_tokens([int(block)])
        for name, values in tokens.items():
            total = values.sum(axis=0, dtype=np.float64)  # numpy: 7x faster than torch's float16 -> float64 sum
            sums[name] = sums[name] + total if name in sums else total
        count += len(next(iter(tokens.values())))
    logger.info("decoder bias: mean of %d tokens from %d blocks strided over the store", count, len(blocks))
    return {name: torch.from_numpy(total / count).float().to(device) for name, total in sums.items()}
