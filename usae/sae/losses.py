"""Reconstruction and auxiliary losses: pure functions of tensors, each returning a 0-d tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error, mean over tokens and dimensions: mean((x - x_hat)^2).

    Args:
        x: (n, d) targets. x_hat: (n, d) reconstructions.

    Returns:
        0-d tensor.
    """
    return (x.float() - x_hat.float()).pow(2).mean()


def l1(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error: mean(|x - x_hat|) (the paper's appendix A.1 loss).

    Args:
        x: (n, d) targets. x_hat: (n, d) reconstructions.

    Returns:
        0-d tensor.
    """
    return (x.float() - x_hat.float()).abs().mean()


RECONSTRUCTION = {"mse": mse, "l1": l1, "paper": l1}


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
    e = residual.detach().float()
    return (e - residual_hat.float()).pow(2).mean() / e.pow(2).mean().clamp_min(1e-12)
