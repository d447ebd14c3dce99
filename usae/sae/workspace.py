"""Buffers a training step reuses from one step to the next: the encoder's (n, m) pre-activations.

At m = 6144 and 6,272 tokens the pre-activations are 154 MB a step. Allocated afresh, a block
that size comes straight from the operating system (far above malloc's mmap threshold), and
its first write page-faults on every page: about 50 ms a step on one CPU core, 15% of the
encoder GEMM that fills it. A buffer kept from the previous step is written without faults.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Workspace:
    """Named buffers, each reused while the shape, dtype and device asked for stay the same.

    A buffer handed out is overwritten by the next request under the same name: what reads it
    must be done by then (the training step reads one source's pre-activations only in its own
    forward pass; the backward pass never does).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """The buffer ``name`` (uninitialised), new when none of this shape, dtype and device is kept."""
        kept = self._buffers.get(name)
        if kept is None or kept.shape != shape or kept.dtype != dtype or kept.device != device:
            self._buffers.pop(name, None)  # free the old one before allocating its successor
            kept = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return kept

    def addmm(self, name: str, bias: Tensor, acts: Tensor, weight: Tensor) -> Tensor:
        """bias + acts @ weight into the buffer ``name``, as ``torch.addmm`` would compute it here.

        Under autocast the product runs in the autocast dtype, with the inputs cast as autocast
        casts them (it would not cast for an ``out=`` call). Call without autograd: an ``out=``
        product has no gradient.
        """
        device = acts.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else weight.dtype
        out = self.buffer(name, (acts.shape[0], weight.shape[1]), dtype, device)
        with torch.autocast(device.type, enabled=False):
            return torch.addmm(bias.to(dtype), acts.to(dtype), weight.to(dtype), out=out)

    def clear(self) -> None:
        """Drop every buffer (their memory is freed once nothing else holds them)."""
        self._buffers.clear()
