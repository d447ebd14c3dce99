"""One optimisation step of the Universal SAE: its losses (:func:`training_step`) and the whole
step the training loop runs (:func:`optimizer_step`), whatever the scheme.

For each source i: Z = E_i(A_i), decode Z with every decoder, loss = sum_j w_ij loss(A_j, Z D_j + b_j)
(``sae.loss``, a ``usae.registry.LOSSES`` entry; w_ii = 1, w_ij = ``sae.cross_coef``, 1 in the
paper), plus AuxK on the source. In the paper's scheme
(Thasarathan et al. 2025, Fig. 3) only E_i and D_i are updated: D_j for j != i would only ever
receive gradients that are thrown away, so they are detached and never computed. Which models
are sources, which decoders learn and how the sources' codes are made (each its own TopK, or
SPARC's one TopK over the sum of every model's pre-activations) is the scheme's answer
(``usae.training.schemes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from usae.config import SAEConfig, TrainConfig
from usae.registry import LOSSES
from usae.sae.losses import DenseActivity, Loss, auxk
from usae.sae.model import USAE, Codes
from usae.sae.sparse_grad import select_rows
from usae.training.dead import DeadLatents
from usae.training.schemes import Encode, Scheme


@dataclass
class StepOutput:
    """What one step computed, all on the device (no host sync)."""

    loss: Tensor
    """0-d total loss (reconstruction over targets, plus auxiliary terms)."""
    target_losses: Tensor
    """(M,) reconstruction loss per target model, averaged over the step's sources."""
    l0: Tensor
    """0-d mean number of active latents per token."""
    fired: dict[str, Tensor]
    """Per source model, (m,) bool: latents that fired at least once in the batch."""


def make_optimizer(model: USAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``train.optimizer``: ``adam`` or ``adamw``, over all parameters.

    Parameters without a gradient in a step (other models in the paper scheme) are skipped by
    Adam, so each model's moments advance only when it is the source, as with the paper's
    per-model optimisers. The update is torch's fused kernel where the parameters' device has
    one (:func:`fused_setting`), the same update in one pass over each tensor.
    """
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, **fused_setting(model))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused_setting(model))
    raise ValueError(f"train.optimizer = {cfg.optimizer!r} is unknown; available: ['adam', 'adamw']")


FUSED_DEVICES = ("cpu", "cuda")
"""Devices with a fused Adam kernel in torch (CPU since torch 2.4); elsewhere torch picks foreach."""


def fused_setting(model: USAE) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a float tensor on one device with a fused Adam
    kernel, else ``{}`` (torch's default, the foreach kernels)."""
    params = list(model.parameters())
    device = params[0].device.type
    if device in FUSED_DEVICES and all(p.device.type == device and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def optimizer_step(model: USAE, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], sources: list[str], *,
                   scheme: Scheme, dead: DeadLatents, lr: float, cfg: TrainConfig) -> StepOutput:
    """One step of the training loop with ``sources`` encoding; returns its losses (on the device).

    Sets ``lr`` -> zero_grad -> :func:`training_step` (bf16 autocast on CUDA with
    ``cfg.precision = bf16``) -> backward -> drop the gradients' components along the
    updated decoders' rows -> clip the gradient norm to ``cfg.grad_clip`` -> optimizer step
    -> renormalise the updated decoders' rows -> advance the dead-latent counters.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    first = next(iter(batch.values()))
    bf16 = cfg.precision == "bf16" and first.device.type == "cuda"
    with torch.autocast(first.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = training_step(model, batch, sources, model.cfg, dead, update_all=scheme.update_all,
                            encode=scheme.encode)
    out.loss.backward()
    updated = scheme.updated(sources)
    model.remove_parallel_grads(updated)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
    optimizer.step()
    model.normalize_decoders(updated)
    for source, fired in out.fired.items():
        dead.update(source, fired, first.shape[0])
    return out


def training_step(model: USAE, batch: dict[str, Tensor], sources: list[str], cfg: SAEConfig,
                  dead: DeadLatents, *, update_all: bool, encode: Encode | None = None) -> StepOutput:
    """Losses of one step with the given source model(s); call ``.loss.backward()`` after.

    ``update_all`` and ``encode`` are the scheme's (:class:`usae.training.schemes.Scheme`): with
    ``encode`` the sources' codes are made together, else each source's when its turn comes (so
    one source's dense pre-activations are alive at a time).
    """
    loss_fn: Loss = LOSSES.get(cfg.loss, setting="sae.loss")
    joint = None
    if encode is not None:
        joint = encode(model, batch, sources, keep_pre=loss_fn.dense or cfg.aux_k > 0, dense_grad=loss_fn.dense)
    total, per_target, l0 = 0.0, 0.0, 0.0
    fired = {}
    for source in sources:
        if joint is not None:
            codes = joint.pop(source)
        else:  # AuxK's dead latents are read with the active ones (one backward for both)
            columns = dead.index[source] if cfg.aux_k > 0 and len(dead.index[source]) else None
            codes = model.encode_sparse(source, batch[source], keep_pre=loss_fn.dense, dense_grad=loss_fn.dense,
                                        columns=columns)
        loss, targets = source_loss(model, batch, source, codes, cfg, dead, update_all=update_all)
        total = total + loss
        per_target = per_target + targets
        active = codes.values > 0
        l0 = l0 + active.sum(dim=1).float().mean()
        counts = torch.zeros(cfg.n_latents, dtype=torch.long, device=active.device)
        fired[source] = counts.scatter_add_(0, codes.indices.flatten(), active.flatten().long()) > 0
    n = len(sources)
    return StepOutput(loss=total, target_losses=per_target / n, l0=l0 / n, fired=fired)


def source_loss(model: USAE, batch: dict[str, Tensor], source: str, codes: Codes, cfg: SAEConfig,
                dead: DeadLatents, *, update_all: bool) -> tuple[Tensor, Tensor]:
    """Reconstruct every model from ``source``'s ``codes``; return (loss, per-target (M,)).

    Args:
        codes: the source's codes, with its pre-activations when the loss or AuxK reads them.
        update_all: if False (paper scheme) decoders other than the source's are detached.
    """
    loss: Loss = LOSSES.get(cfg.loss, setting="sae.loss")
    dense = codes.dense(cfg.n_latents) if loss.dense else None
    per_target = []
    total = batch[source].new_zeros((), dtype=torch.float32)
    source_hat = None
    for name in model.names:
        detach = not update_all and name != source
        x_hat = model.decode_sparse(name, codes, detach=detach)
        activity = None
        if dense is not None:
            weight = model.W_dec[name].detach() if detach else model.W_dec[name]
            activity = DenseActivity(codes.pre, dense, weight)
        terms = loss(batch[name], x_hat, activity)
        per_target.append(terms["reconstruction"].detach())
        weight = 1.0 if name == source else cfg.cross_coef
        for term in terms.values():
            total = total + weight * term
        if name == source:
            source_hat = x_hat
    if cfg.aux_k > 0:
        total = total + cfg.aux_coef * _auxk_term(model, batch[source], source_hat, codes, source, cfg, dead)
    return total, torch.stack(per_target)


def _auxk_term(model: USAE, x: Tensor, x_hat: Tensor, codes: Codes, source: str, cfg: SAEConfig,
               dead: DeadLatents) -> Tensor:
    """Top-k_aux dead latents of the source reconstruct its residual (0 when none is dead).

    The k_aux values sit in an (n, n_dead) matrix decoded by one matmul against the dead
    decoder rows: with k_aux a large share of n_dead, its backward is two dense GEMMs, where a
    gather over k_aux slots a token (embedding_bag) had a sorted scatter backward. The matrix
    is the candidates masked at each token's k_aux-th largest (and at 0, ReLU): elementwise
    passes, where scattering the top-k_aux (and its gather-and-scatter backward) cost 3x more;
    a tie at the k_aux-th value would keep every tied latent.
    """
    dead_index = dead.index[source]
    if len(dead_index) == 0:
        return x.new_zeros((), dtype=torch.float32)
    candidates = codes.at_columns if codes.at_columns is not None else codes.pre_at(dead_index)
    with torch.no_grad():
        cut = candidates.topk(min(cfg.aux_k, len(dead_index)), dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        # Negative pre-activations contribute nothing. A float mask: multiplying by it is 3x
        # faster than torch.where on CPU, and a bool one would be converted in each direction.
        keep = ((candidates >= cut) & (candidates > 0)).to(candidates.dtype)
    codes_dead = candidates * keep
    residual_hat = codes_dead @ select_rows(model.W_dec[source], dead_index).to(codes_dead.dtype)
    return auxk(x - x_hat, residual_hat)
