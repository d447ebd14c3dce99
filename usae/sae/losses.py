"""Reconstruction and auxiliary losses, and the training losses built from them (``sae.loss``).

``mse``, ``l1``, ``paper_dense_aux`` and ``auxk`` are pure functions of tensors, each
returning a 0-d tensor. The entries of :data:`usae.registry.LOSSES` (``mse_loss``,
``l1_loss``, ``paper_loss``) are the loss of one target model during training, all called
the same way,

    terms = loss(x, x_hat, activity)

with ``x``, ``x_hat`` the (n, d) target and its reconstruction, and ``activity`` the source's
dense activity (:class:`DenseActivity`) when the entry's ``dense`` is true, else None. They
return named 0-d terms, summed in order into the step's loss; ``"reconstruction"`` is the
error logged per target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_AUX_WEIGHT = 0.1
"""Weight of the reference code's dense auxiliary term in the ``paper`` loss."""


def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error, mean over tokens and dimensions: mean((x - x_hat)^2).

    Args:
        x: (n, d) targets. x_hat: (n, d) reconstructions.

    Returns:
        0-d tensor.
    """
    return F.mse_loss(x_hat.float(), x.float())  # one fused pass each way (3x fewer than sub/pow/mean)


def l1(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error: mean(|x - x_hat|) (the paper's appendix A.1 loss).

    Args:
        x: (n, d) targets. x_hat: (n, d) reconstructions.

    Returns:
        0-d tensor.
    """
    return (x.float() - x_hat.float()).abs().mean()


RECONSTRUCTION = {"mse": mse, "l1": l1, "paper": l1}
"""The reconstruction error each built-in loss logs per target (its ``"reconstruction"`` term)."""


def paper_dense_aux(x: Tensor, x_hat: Tensor, pre: Tensor, codes_dense: Tensor, weight: Tensor) -> Tensor:
    """The reference code's auxiliary term (``top_k_auxiliary_loss_L1``, weight 0.1 there).

    With r = ReLU(pre) - Z the activity TopK dropped, keep its largest m/2 entries per
    token (r_half) and ask them to explain the residual:
    mean(|(x - x_hat) - r_half @ D|). Dense (n, m) work: an option, not the default.

    Args:
        x, x_hat: (n, d). pre: (n, m) pre-activations. codes_dense: (n, m) TopK codes.
        weight: (m, d) decoder of the target model.

    Returns:
        0-d tensor.
    """
    rest = F.relu(pre) - codes_dense
    values, indices = rest.topk(rest.shape[1] // 2, dim=1, sorted=False)
    rest_half = torch.zeros_like(rest).scatter_(1, indices, values)
    return ((x.float() - x_hat.float()) - rest_half @ weight).abs().mean()


def auxk(residual: Tensor, residual_hat: Tensor) -> Tensor:
    """AuxK loss (Gao et al. 2024, Sec. A.2): normalised MSE of the residual's reconstruction.

    mean((e - e_hat)^2) / mean(e^2), e = x - x_hat (no gradient), e_hat decoded from the
    top-k_aux dead latents without bias. 1 means "explains nothing".

    Args:
        residual: (n, d) e. residual_hat: (n, d) e_hat.

    Returns:
        0-d tensor.
    """
    e = residual.detach().float().reshape(-1)
    mean_square = torch.dot(e, e) / e.numel()  # one pass, no (n, d) temporary as e.pow(2) makes
    return F.mse_loss(residual_hat.float().reshape(-1), e) / mean_square.clamp_min(1e-12)


# -- training losses (sae.loss) ----------------------------------------------------------------
class DenseActivity(NamedTuple):
    """What a dense loss term reads besides x and x_hat (for one source and one target model)."""

    pre: Tensor
    """(n, m) pre-activations of the source model."""
    codes: Tensor
    """(n, m) the source's codes, dense."""
    weight: Tensor
    """(m, d) the target's decoder (detached when the scheme does not update it)."""


class Loss(Protocol):
    """What a ``LOSSES`` entry is: a callable with :attr:`dense`."""

    dense: bool
    """True when it reads :class:`DenseActivity` ((n, m) work: the step builds it only then)."""

    def __call__(self, x: Tensor, x_hat: Tensor, activity: DenseActivity | None) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class ReconstructionLoss:
    """A loss that is a reconstruction error alone: ``{"reconstruction": error(x, x_hat)}``."""

    error: Callable[[Tensor, Tensor], Tensor]
    dense: bool = False

    def __call__(self, x: Tensor, x_hat: Tensor, activity: DenseActivity | None = None) -> dict[str, Tensor]:
        return {"reconstruction": self.error(x, x_hat)}


@dataclass(frozen=True)
class PaperLoss:
    """The reference code's loss: l1(x, x_hat) + PAPER_AUX_WEIGHT x paper_dense_aux (two terms)."""

    dense: bool = True

    def __call__(self, x: Tensor, x_hat: Tensor, activity: DenseActivity | None) -> dict[str, Tensor]:
        if activity is None:
            raise ValueError("the paper loss needs the source's dense activity")
        aux = paper_dense_aux(x, x_hat, activity.pre, activity.codes, activity.weight)
        return {"reconstruction": l1(x, x_hat), "dense_aux": PAPER_AUX_WEIGHT * aux}


mse_loss = ReconstructionLoss(mse)
l1_loss = ReconstructionLoss(l1)
paper_loss = PaperLoss()
