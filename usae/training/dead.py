"""Dead latents (Gao et al. 2024): tokens since each latent last fired, per source model.

Life cycle, all in the training loop: created with the model; advanced after every step with
the step's fired latents (``optimizer_step``); its dead-latent lists refreshed at start-up and
at every log row; its share of dead latents logged; saved in checkpoints and restored on resume.
AuxK (``usae.training.step``) reads the lists.
"""

from __future__ import annotations

import torch
from torch import Tensor

AUTO = "auto"


def dead_window(setting: int | str, *, source_tokens: int, validation_tokens: int | None, batch_tokens: int) -> int:
    """Tokens a latent must stay inactive on, for one model, to count as dead (``sae.dead_tokens``).

    An integer setting is used as it is. ``auto`` makes the criterion scale with the run and
    agree with evaluation:

        W = max(batch_tokens, min(validation_tokens, source_tokens / 4))
        W = max(batch_tokens, source_tokens / 10)          without a validation split

    where ``source_tokens`` is how many tokens each model encodes as a source over the whole
    run (with the paper scheme and M models, 1/M of all tokens). A latent dead in training is
    then one that stayed silent on as many tokens as evaluation's dead count sees, and the cap
    lets the counter reach W within the run, so AuxK can act.
    """
    if setting != AUTO:
        return int(setting)
    if validation_tokens:
        return max(batch_tokens, min(validation_tokens, source_tokens // 4))
    return max(batch_tokens, source_tokens // 10)


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
