"""Exact row-wise top-k through block maxima: the TopK selection over wide pre-activations.

``torch.topk`` over an (n, m) matrix costs several ns an entry on CPU (a per-row heap over
(value, index) pairs): the largest non-GEMM op of a training step at m = 6144. Cut each row into
m / ``BLOCK`` blocks of ``BLOCK`` entries; a block whose maximum is not among the row's k
largest block maxima holds no entry that is needed, since each of those k blocks holds an
entry at least as large. So the k largest entries lie in the k blocks of largest maxima:
``BLOCK`` x k candidates, found by one vectorised max over the row and a top-k over the
m / ``BLOCK`` maxima (by the same method while those are still many). Same values as
``torch.topk``; where values tie, other indices of equal value may be picked, as
``torch.topk`` itself leaves open."""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 8
"""Entries a block: block maxima are one vectorised max of BLOCK (n, m / BLOCK) slices; 8 was
the fastest of 4, 8 and 16 at m = 6144 and K = 32 on CPU."""
MIN_BLOCKS_PER_K = 2
"""Rows with fewer than this many blocks per selected entry go to ``torch.topk`` directly: the
candidates would be a large share of the row. At m = 6144 and K = 32 the 768 block maxima are
cut into blocks again (96 maxima to ``torch.topk``): 85 ms where one level took 100 and
``torch.topk`` 145 (one CPU core; 42, 51 and 71 ms on two)."""


def topk_rows(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of ``x`` (n, m), in no particular order.

    Args:
        x: (n, m) values (NaN counts as the largest, as in ``torch.topk``).
        k: entries a row, 0 < k <= m.

    Returns:
        (values, indices), each (n, k): ``values == x.gather(1, indices)``, the same values as
        ``x.topk(k, dim=1, sorted=False)``, indices distinct within a row.

    Raises:
        ValueError: ``x`` is not a matrix, or k is outside 1..m.
    """
    if x.dim() != 2:
        raise ValueError(f"topk_rows needs an (n, m) matrix, got shape {tuple(x.shape)}")
    n, m = x.shape
    if not 0 < k <= m:
        raise ValueError(f"topk_rows: k = {k} must be in 1..{m} (the row width)")
    if m % BLOCK or m // BLOCK < MIN_BLOCKS_PER_K * k:
        return x.topk(k, dim=1, sorted=False)
    width = m // BLOCK
    # Block j holds entries j, j + width, j + 2 width, ...: its maximum is an elementwise max
    # of BLOCK contiguous slices, which vectorises where a max over 8 neighbours does not.
    maxima = x.reshape(n, BLOCK, width).amax(dim=1)
    _, blocks = topk_rows(maxima, k)
    offsets = torch.arange(0, m, width, device=x.device).view(1, BLOCK, 1)
    candidates = (blocks.unsqueeze(1) + offsets).reshape(n, BLOCK * k)
    values, slots = x.gather(1, candidates).topk(k, dim=1, sorted=False)
    return values, candidates.gather(1, slots)
