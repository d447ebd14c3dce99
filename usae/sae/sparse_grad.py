"""Encoder pre-activations read at a few latents, with a backward that costs only those latents.

The encoder's dense GEMM pre = (a - b) W + c (n, m) is needed in the forward to pick the TopK,
but only K of the m entries of a row carry a gradient. Differentiating the dense product would
build an (n, m) zero-filled gradient and a full (d, n) @ (n, m) weight-gradient GEMM; here the
dense pre is computed without autograd and these functions give the entries that are read a
gradient of their own:

- :func:`read_pre`: pre at (n, S) latent indices (the TopK slots) and at a set of columns
  (AuxK's dead latents), in one backward: O(n S d) for the slots, as products with an (n, m)
  sparse matrix of n S non-zeros (CSR, on the tensors' device), and one dense (d, n) @ (n, c)
  GEMM for the columns, which AuxK reads a large share of; the weight gradient is built once
  for both.
- :func:`decode_rows`: the sparse decode Z D + b, whose decoder gradient is the same kind of
  sparse product.

The encoder's and the decoders' weight gradients multiply by the transpose of one (n, m)
pattern, the codes' indices: :class:`LatentOrder` groups the entries by latent once for all of
them. All give the gradients the dense product gives (up to float summation order).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _csr(indices: Tensor, values: Tensor, n_cols: int) -> Tensor:
    """(n, n_cols) CSR matrix with values[i, s] at column indices[i, s] of row i (S a row)."""
    n, s = indices.shape
    crow = torch.arange(0, n * s + 1, s, device=indices.device, dtype=torch.int64)
    return _make_csr(crow, indices.reshape(-1), values.reshape(-1), (n, n_cols))


class LatentOrder:
    """Entries of (n, S) latent indices grouped by latent: the layout of the transposed (m, n)
    sparse matrices the weight gradients multiply by. Built on first use (a sort of the n S
    indices), then shared by every product over the same indices (the source's encoder and
    decoder, every model's with shared-index codes)."""

    def __init__(self, indices: Tensor, n_latents: int) -> None:
        self.indices = indices
        self.n_latents = n_latents
        self._layout: tuple[Tensor, Tensor, Tensor] | None = None

    def transposed(self, values: Tensor) -> Tensor:
        """The (m, n) CSR matrix with values[i, s] at (indices[i, s], i): the transpose of
        :func:`_csr`'s."""
        if self._layout is None:
            self._layout = self._group()
        order, crow, rows = self._layout
        return _make_csr(crow, rows, values.reshape(-1)[order], (self.n_latents, self.indices.shape[0]))

    def _group(self) -> tuple[Tensor, Tensor, Tensor]:
        flat = self.indices.reshape(-1)
        # Sorted as the narrowest integers that hold every latent: torch radix-sorts integer
        # keys, in passes over their bytes (200k entries on one CPU core: int16 2 ms, int32 5,
        # int64 8, float32 15).
        key = torch.int16 if self.n_latents <= torch.iinfo(torch.int16).max else torch.int32
        order = torch.sort(flat.to(key), stable=True).indices
        counts = torch.bincount(flat, minlength=self.n_latents)
        crow = torch.zeros(self.n_latents + 1, device=flat.device, dtype=torch.int64)
        torch.cumsum(counts, 0, out=crow[1:])
        rows = torch.div(order, self.indices.shape[1], rounding_mode="floor")
        return order, crow, rows


def _sparse_mm(sparse: Tensor, dense: Tensor) -> Tensor:
    """sparse @ dense, written into an uninitialised result: addmm with beta 0 ignores its input
    (NaN included), where ``@`` first zero-fills the result (a pass over it for nothing)."""
    out = dense.new_empty(sparse.shape[0], dense.shape[1])
    return torch.addmm(out, sparse, dense, beta=0)


def _make_csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # Built here from sorted, in-range indices, so torch's invariant checks would only cost time;
    # its "CSR support is in beta" warning says nothing to a user of usae.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class EncoderInputs(NamedTuple):
    """What an encoder's pre-activations are a function of: pre = (acts - shift) @ weight + bias."""

    acts: Tensor
    """(n, d) activations."""
    weight: Tensor
    """(d, m) encoder weight."""
    bias: Tensor
    """(m,) encoder bias."""
    shift: Tensor
    """(d,) pre-bias subtracted from the activations (the decoder's bias)."""

    def folded_bias(self) -> Tensor:
        """bias - shift @ weight (m,): pre = acts @ weight + this, one GEMM on the activations as
        they are (no centred (n, d) copy, no (n, m) @ (m, d) gradient for the shift)."""
        return self.bias - self.shift @ self.weight


class _ReadPre(torch.autograd.Function):
    """(pre.gather(1, indices), pre.index_select(1, columns)) as functions of the
    :class:`EncoderInputs`; either read may be empty."""

    @staticmethod
    def forward(ctx, acts: Tensor, weight: Tensor, bias: Tensor, shift: Tensor, pre: Tensor, indices: Tensor,
                columns: Tensor, order: LatentOrder | None) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(acts, weight, shift, indices, columns)
        ctx.order = order
        ctx.set_materialize_grads(False)
        return pre.gather(1, indices), pre.index_select(1, columns)

    @staticmethod
    def backward(ctx, grad_at: Tensor | None, grad_cols: Tensor | None) -> tuple[Tensor | None, ...]:
        acts, weight, shift, indices, columns = ctx.saved_tensors
        # Sparse products run in the weight's dtype: a bf16 autocast gradient is widened, and
        # CSR products in bf16 are not available on every device.
        grad_at = grad_at.to(weight.dtype) if grad_at is not None and indices.numel() else None
        grad_cols = grad_cols.to(weight.dtype) if grad_cols is not None and columns.numel() else None
        needs = ctx.needs_input_grad
        sums = None  # the gradient of each latent's sum over the tokens: the bias's
        if needs[2] or needs[3]:
            sums = weight.new_zeros(weight.shape[1])
            if grad_at is not None:
                sums.index_add_(0, indices.reshape(-1), grad_at.reshape(-1))
            if grad_cols is not None:
                sums.index_add_(0, columns, grad_cols.sum(0))
        grad_acts = _acts_grad(weight, indices, grad_at, columns, grad_cols).to(acts.dtype) if needs[0] else None
        grad_weight = None
        if needs[1]:
            centred = acts.to(weight.dtype) - shift.to(weight.dtype)
            grad_weight = _weight_grad(centred, weight, ctx.order, grad_at, columns, grad_cols)
        grad_shift = -(weight @ sums).to(shift.dtype) if needs[3] else None
        return grad_acts, grad_weight, sums if needs[2] else None, grad_shift, None, None, None, None


def _acts_grad(weight: Tensor, indices: Tensor, grad_at: Tensor | None, columns: Tensor,
               grad_cols: Tensor | None) -> Tensor:
    """(n, d): sum_s g[i, s] W[:, idx[i, s]] (an (n, m) sparse @ (m, d) product), plus the columns'."""
    n = indices.shape[0]
    out = weight.new_zeros(n, weight.shape[0])
    if grad_at is not None:
        out += _csr(indices, grad_at, weight.shape[1]) @ weight.t()
    if grad_cols is not None:
        out += grad_cols @ weight.index_select(1, columns).t()
    return out


def _weight_grad(centred: Tensor, weight: Tensor, order: LatentOrder | None, grad_at: Tensor | None,
                 columns: Tensor, grad_cols: Tensor | None) -> Tensor:
    """(d, m): (a - b)^T G with G the read entries' gradient, the slots' by an (m, n) sparse @
    (n, d) product, the columns' by one (d, n) @ (n, c) GEMM added in place.

    The product comes out (m, d) row-major and is returned as its (d, m) transpose: the layout
    of the encoder weight (initialised as the decoder's transpose), which autograd then keeps
    as the gradient without a copy; a copy made here would be copied back.
    """
    if grad_at is not None:
        grad = _sparse_mm(order.transposed(grad_at), centred).t()
    else:
        grad = torch.zeros_like(weight)
    if grad_cols is not None:
        grad.index_add_(1, columns, centred.t() @ grad_cols)
    return grad


class _AddBiasRowsGrad(torch.autograd.Function):
    """``out`` += bias in place, where out = embedding_bag(indices, weight, values) was computed
    with ``weight`` detached; gives ``weight`` its gradient (row j: sum over the slots at j of
    value x grad) and ``bias`` its own. The gradient of ``out`` (so of the values) passes as is."""

    @staticmethod
    def forward(ctx, out: Tensor, weight: Tensor, bias: Tensor, values: Tensor, order: LatentOrder) -> Tensor:
        ctx.save_for_backward(values)
        ctx.order = order
        ctx.mark_dirty(out)
        return out.add_(bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (values,) = ctx.saved_tensors
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:  # (m, n) sparse @ (n, d)
            grad_weight = _sparse_mm(ctx.order.transposed(values), grad)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad, grad_weight, grad_bias, None, None


class _SelectRows(torch.autograd.Function):
    """weight.index_select(0, rows) for rows that do not repeat: the backward writes each row's
    gradient (index_copy_) where index_select's adds it (index_add_, 7x slower on CPU here)."""

    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = weight.shape
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rows,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_copy_(0, rows, grad), None


def select_rows(weight: Tensor, rows: Tensor) -> Tensor:
    """weight[rows] (c, d) with its gradient; ``rows`` must not repeat (AuxK's dead latents)."""
    return _SelectRows.apply(weight, rows)


def decode_rows(values: Tensor, indices: Tensor, weight: Tensor, bias: Tensor,
                order: LatentOrder | None = None) -> Tensor:
    """sum_s values[i, s] weight[indices[i, s]] + bias (n, d): ``F.embedding_bag`` in sum mode, plus bias.

    The gradient of ``weight`` (m, d) is one (m, n) sparse @ (n, d) product over the n S
    non-zeros (``order``: the indices' :class:`LatentOrder`, shared with other products over
    them), where embedding_bag's own backward sorts the indices as int64 (several times slower
    on CPU); the gradient of ``values`` is embedding_bag's. The bias is added in place, and the
    decode runs in the weight's dtype (bf16 autocast codes are widened).
    """
    out = F.embedding_bag(indices, weight.detach(), per_sample_weights=values.to(weight.dtype), mode="sum")
    if not ((weight.requires_grad or bias.requires_grad) and torch.is_grad_enabled()):
        return out.add_(bias)
    order = order if order is not None else LatentOrder(indices, weight.shape[0])
    return _AddBiasRowsGrad.apply(out, weight, bias, values.detach().to(weight.dtype), order)


def read_pre(inputs: EncoderInputs, pre: Tensor, indices: Tensor | None = None, columns: Tensor | None = None,
             order: LatentOrder | None = None) -> tuple[Tensor, Tensor]:
    """pre at ``indices`` (n, S) and at ``columns`` (c,): ((n, S), (n, c)), both with gradients
    into the :class:`EncoderInputs`.

    ``pre`` (n, m) must equal ``(acts - shift) @ weight + bias`` and carry no gradient itself;
    ``columns`` must not repeat (AuxK's dead latents); an absent read is returned empty;
    ``order``: the indices' :class:`LatentOrder` when other products share it.
    """
    n, m = pre.shape
    if indices is None:
        indices = torch.zeros(n, 0, dtype=torch.long, device=pre.device)
    if columns is None:
        columns = torch.zeros(0, dtype=torch.long, device=pre.device)
    if order is None and indices.numel():
        order = LatentOrder(indices, m)
    return _ReadPre.apply(*inputs, pre.detach(), indices, columns, order)
