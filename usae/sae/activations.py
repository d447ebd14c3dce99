"""Sparse activations (``sae.activation``): which latents of each token stay active.

Every entry of :data:`usae.registry.ACTIVATIONS` is called the same way,

    values, indices = activation(pre, k, threshold=threshold, training=training)

with ``pre`` the (n, m) pre-activations of one model, ``k`` the sparsity, ``threshold`` that
model's 0-d running-threshold buffer (updated in place by activations that keep one) and
``training`` the module's mode. It returns the (n, slots) values and latent indices of the
active latents; unused slots hold value 0.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from usae.sae.topk import topk_rows


class Activation(Protocol):
    """What an ``ACTIVATIONS`` entry is: a callable with :attr:`padded`."""

    padded: bool
    """True when codes carry more slots than k, some of them empty (sparse decoding then always wins)."""
    gathers: bool
    """True when each non-zero value is pre at its index (so the encoder's gradient can be taken
    at the active entries alone); an entry without it is trained through the dense pre-activations."""

    def __call__(self, pre: Tensor, k: int, *, threshold: Tensor, training: bool) -> tuple[Tensor, Tensor]: ...


class TopK:
    """TopK(ReLU(pre)) per token (Gao et al. 2024; the paper's Eq. 3): exactly k slots a token."""

    padded = False
    """Codes carry exactly k slots (BatchTopK's carry 2k, some empty)."""
    gathers = True
    """Each non-zero value is pre at its index, with gradient 1 there (what the encoder's sparse
    gradient, ``USAE.encode_sparse``, relies on)."""

    def __call__(self, pre: Tensor, k: int, *, threshold: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        values, indices = topk_rows(pre, k)
        return F.relu(values), indices  # ReLU and TopK commute: top-k of ReLU(pre) = ReLU(top-k of pre)


class BatchTopK:
    """BatchTopK (Bussmann et al. 2024): the k*n largest activations of the whole batch.

    Each token keeps at most 2k latents (its slots past the threshold are zeroed). In training
    the batch's k*n-th largest value is the cut, and ``threshold`` follows it as an EMA
    (0.99 / 0.01); at evaluation the running threshold is the cut.
    """

    padded = True
    """Codes carry min(2k, m) slots, the ones under the cut holding 0."""
    gathers = True
    """Kept values are pre at their index (the cut's comparison passes no gradient)."""

    def __call__(self, pre: Tensor, k: int, *, threshold: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        relu = F.relu(pre)
        if training:
            kth = relu.flatten().topk(k * relu.shape[0], sorted=False).values.min()
            with torch.no_grad():
                threshold.mul_(0.99).add_(0.01 * kth.detach())
            cut = kth
        else:
            cut = threshold
        values, indices = topk_rows(relu, min(2 * k, relu.shape[1]))
        return values * (values >= cut) * (values > 0), indices


topk = TopK()
batch_topk = BatchTopK()
