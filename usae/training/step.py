"""One optimisation step of the Universal SAE, for each training scheme.

``paper`` (Thasarathan et al. 2025, Fig. 3): pick a source i, Z = E_i(A_i), decode Z with
every decoder, loss = sum_j err(A_j, Z D_j + b_j); only E_i and D_i are updated. D_j for
j != i only ever receives gradients that would be thrown away, so they are detached and
never computed. ``all_sources``: every model is a source, every parameter is updated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from usae.config import SAEConfig
from usae.sae.losses import RECONSTRUCTION, auxk, paper_dense_aux
from usae.sae.model import USAE, Codes

PAPER_AUX_WEIGHT = 0.1


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


class DeadLatents:
    """Tokens since each latent last fired, per source model (Gao et al.'s dead criterion).

    The list of dead latents AuxK works on is refreshed by :meth:`refresh` (the training loop
    calls it every ``log_every`` steps, where it syncs anyway), so steps never wait on the host
    and AuxK costs nothing while no latent is dead.
    """

    def __init__(self, names: list[str], n_latents: int, device: torch.device) -> None:
        self.since = {n: torch.zeros(n_latents, dtype=torch.long, device=device) for n in names}
        self.index = {n: torch.zeros(0, dtype=torch.long, device=device) for n in names}

    def update(self, name: str, fired: Tensor, n_tokens: int) -> None:
        since = self.since[name]
        since.add_(n_tokens).masked_fill_(fired, 0)

    def mask(self, name: str, threshold: int) -> Tensor:
        return self.since[name] >= threshold

    def refresh(self, threshold: int) -> None:
        """Recompute the dead-latent lists used by AuxK (one host sync per model)."""
        self.index = {n: (s >= threshold).nonzero().flatten() for n, s in self.since.items()}

    def fraction(self, threshold: int) -> dict[str, Tensor]:
        return {n: (s >= threshold).float().mean() for n, s in self.since.items()}

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"since": {n: s.clone() for n, s in self.since.items()},
                "index": {n: i.clone() for n, i in self.index.items()}}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        for n, s in state["since"].items():
            self.since[n].copy_(s)
        self.index = {n: i.to(self.since[n].device) for n, i in state["index"].items()}


def source_loss(model: USAE, batch: dict[str, Tensor], source: str, cfg: SAEConfig, dead: DeadLatents,
                *, update_all: bool) -> tuple[Tensor, Tensor, Codes]:
    """Encode from ``source``, reconstruct every model; return (loss, per-target (M,), codes).

    Args:
        update_all: if False (paper scheme) decoders other than the source's are detached.
    """
    recon = RECONSTRUCTION[cfg.loss]
    need_pre = cfg.loss == "paper" or cfg.aux_k > 0
    codes = model.encode_sparse(source, batch[source], keep_pre=need_pre)
    dense = codes.dense(cfg.n_latents) if cfg.loss == "paper" else None
    per_target = []
    total = batch[source].new_zeros((), dtype=torch.float32)
    source_hat = None
    for name in model.names:
        detach = not update_all and name != source
        x_hat = model.decode_sparse(name, codes, detach=detach)
        err = recon(batch[name], x_hat)
        per_target.append(err.detach())
        total = total + err
        if cfg.loss == "paper":
            weight = model.W_dec[name].detach() if detach else model.W_dec[name]
            total = total + PAPER_AUX_WEIGHT * paper_dense_aux(batch[name], x_hat, codes.pre, dense, weight)
        if name == source:
            source_hat = x_hat
    if cfg.aux_k > 0:
        total = total + cfg.aux_coef * _auxk_term(model, batch[source], source_hat, codes, source, cfg, dead)
    return total, torch.stack(per_target), codes


def _auxk_term(model: USAE, x: Tensor, x_hat: Tensor, codes: Codes, source: str, cfg: SAEConfig,
               dead: DeadLatents) -> Tensor:
    """Top-k_aux dead latents of the source reconstruct its residual (0 when none is dead)."""
    dead_index = dead.index[source]
    if len(dead_index) == 0:
        return x.new_zeros((), dtype=torch.float32)
    candidates = codes.pre[:, dead_index]
    values, slots = candidates.topk(min(cfg.aux_k, len(dead_index)), dim=1, sorted=False)
    values = F.relu(values)  # negative pre-activations contribute nothing
    residual_hat = F.embedding_bag(dead_index[slots], model.W_dec[source], per_sample_weights=values, mode="sum")
    return auxk(x - x_hat, residual_hat)


def training_step(model: USAE, batch: dict[str, Tensor], sources: list[str], cfg: SAEConfig,
                  dead: DeadLatents, *, update_all: bool) -> StepOutput:
    """Losses of one step with the given source model(s); call ``.loss.backward()`` after."""
    total, per_target, l0 = 0.0, 0.0, 0.0
    fired = {}
    for source in sources:
        loss, targets, codes = source_loss(model, batch, source, cfg, dead, update_all=update_all)
        total = total + loss
        per_target = per_target + targets
        active = codes.values > 0
        l0 = l0 + active.sum(dim=1).float().mean()
        counts = torch.zeros(cfg.n_latents, dtype=torch.long, device=active.device)
        fired[source] = counts.scatter_add_(0, codes.indices.flatten(), active.flatten().long()) > 0
    n = len(sources)
    return StepOutput(loss=total, target_losses=per_target / n, l0=l0 / n, fired=fired)
