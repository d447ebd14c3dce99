"""Running sums of every evaluation metric over batches of tokens, in bounded memory.

Per batch, each model encodes its own activations into sparse codes (k active latents per
token); nothing of size (tokens x m) is ever built. What is kept: per (source, target)
squared errors; per target the sums behind both R2 forms; per model firing counts,
summed codes and L0; per model firing counts at each token position of an image (the
chance co-fires' ingredients); co-fire counts (per concept in every model, and per pair of
models); the top-N images per concept and model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from usae.sae.model import USAE, Codes


@dataclass
class TopImages:
    """The ``n`` images with the largest max-over-tokens activation, per concept."""

    values: Tensor  # (m, n), -inf where empty
    rows: Tensor  # (m, n) manifest rows, -1 where empty

    @classmethod
    def empty(cls, m: int, n: int, device: torch.device) -> TopImages:
        return cls(torch.full((m, n), float("-inf"), device=device), torch.full((m, n), -1, dtype=torch.long,
                                                                                device=device))

    def update(self, image_max: Tensor, rows: Tensor) -> None:
        """Merge (m, B) per-image maxima of a block of images with manifest ``rows`` (B,)."""
        values = torch.cat([self.values, image_max], dim=1)
        ids = torch.cat([self.rows, rows.to(self.rows.device).expand(image_max.shape[0], -1)], dim=1)
        self.values, order = values.topk(self.values.shape[1], dim=1)
        self.rows = ids.gather(1, order)


@dataclass
class Accumulator:
    """Everything :func:`usae.evaluation.evaluate.evaluate_sources` reports, as running sums."""

    model: USAE
    tau: float
    top_n: int
    device: torch.device
    n_tokens: int = 0
    n_images: int = 0
    sse: Tensor = field(init=False)
    sum_x: dict[str, Tensor] = field(init=False)
    sum_x2: dict[str, Tensor] = field(init=False)
    fires: Tensor = field(init=False)
    code_sums: Tensor = field(init=False)
    l0: Tensor = field(init=False)
    cofires: Tensor = field(init=False)
    pair_cofires: Tensor = field(init=False)
    top: dict[str, TopImages] = field(init=False)
    fires_at: Tensor | None = field(init=False, default=None)
    """(models, tokens per image, m): images where each model fires each concept at each token position
    (made at the first block, whose tokens per image it takes)."""

    def __post_init__(self) -> None:
        names, m, dev = self.model.names, self.model.cfg.n_latents, self.device
        n_models = len(names)
        self.sse = torch.zeros(n_models, n_models, dtype=torch.float64, device=dev)
        self.sum_x = {n: torch.zeros(d, dtype=torch.float64, device=dev) for n, d in self.model.dims.items()}
        self.sum_x2 = {n: torch.zeros(d, dtype=torch.float64, device=dev) for n, d in self.model.dims.items()}
        self.fires = torch.zeros(n_models, m, dtype=torch.long, device=dev)
        self.code_sums = torch.zeros(n_models, m, dtype=torch.float64, device=dev)
        self.l0 = torch.zeros(n_models, dtype=torch.float64, device=dev)
        self.cofires = torch.zeros(m, dtype=torch.long, device=dev)
        self.pair_cofires = torch.zeros(n_models, n_models, dtype=torch.long, device=dev)
        self.top = {n: TopImages.empty(m, self.top_n, dev) for n in names}

    @torch.no_grad()
    def update(self, acts: dict[str, Tensor], rows: Tensor, tokens_per_image: int) -> dict[str, Codes]:
        """Add a block of whole images: ``acts[name]`` is (B * T, d_name), ``rows`` (B,) manifest rows."""
        names, m = self.model.names, self.model.cfg.n_latents
        codes = {n: self.model.encode_sparse(n, acts[n]) for n in names}
        n_tok = next(iter(acts.values())).shape[0]
        for target in names:
            x = acts[target].double()
            self.sum_x[target] += x.sum(dim=0)
            self.sum_x2[target] += x.pow(2).sum(dim=0)
        fired_keys = []
        for i, source in enumerate(names):
            c = codes[source]
            for j, target in enumerate(names):
                err = acts[target] - self.model.decode_sparse(target, c)
                self.sse[i, j] += err.double().pow(2).sum()
            fired = c.values > self.tau
            self.fires[i] += torch.bincount(c.indices[fired], minlength=m)
            token = torch.arange(n_tok, device=self.device).unsqueeze(1).expand_as(c.indices)
            self._update_fires_at(i, token % tokens_per_image, c.indices, fired, tokens_per_image)
            self.code_sums[i] += torch.zeros(m, dtype=torch.float64, device=self.device).scatter_add_(
                0, c.indices.flatten(), c.values.double().flatten())
            self.l0[i] += (c.values > 0).sum()
            fired_keys.append((token * m + c.indices)[fired])
            self._update_top(source, c, rows, tokens_per_image)
        self._update_cofires(fired_keys, m)
        self._update_pairs(fired_keys)
        self.n_tokens += n_tok
        self.n_images += len(rows)
        return codes

    def _update_fires_at(self, model: int, position: Tensor, indices: Tensor, fired: Tensor,
                         tokens_per_image: int) -> None:
        """Add a block's firings of ``model`` by token position within its image (``position``, shaped as
        ``indices``)."""
        m = self.model.cfg.n_latents
        if self.fires_at is None:
            self.fires_at = torch.zeros(len(self.model.names), tokens_per_image, m, dtype=torch.long,
                                        device=self.device)
        elif self.fires_at.shape[1] != tokens_per_image:
            raise ValueError(f"blocks of {tokens_per_image} tokens per image after blocks of "
                             f"{self.fires_at.shape[1]}: one evaluation needs one layout")
        self.fires_at[model] += torch.bincount((position * m + indices)[fired], minlength=tokens_per_image * m
                                               ).view(tokens_per_image, m)

    def chance_cofires(self) -> Tensor:
        """(m,) co-fires each concept would have if the models fired it independently of each other at each
        token position: lambda_k = N * sum_t prod_i (F_i[t, k] / N), over the N images evaluated, with
        F_i[t, k] the images where model i fires concept k at position t (:attr:`fires_at`).

        Independence given the position: a concept every model fires at the same positions of every image
        (a border, a corner) co-fires there whatever the image shows, and this counts those co-fires as
        chance. With one token per image it is the position-free n * prod_i (fires_i / n)."""
        if self.fires_at is None or self.n_images == 0:
            return torch.zeros(self.model.cfg.n_latents, dtype=torch.float64)
        rates = self.fires_at.double().cpu() / self.n_images
        return self.n_images * rates.prod(dim=0).sum(dim=0)

    def firing_maps(self) -> dict[str, np.ndarray]:
        """Per model, :attr:`fires_at` as ``(m, tokens per image)`` uint32: row k is where on the image grid the
        model fires concept k (images per position; all zeros before any block)."""
        m = self.model.cfg.n_latents
        if self.fires_at is None:
            return {name: np.zeros((m, 1), np.uint32) for name in self.model.names}
        counts = self.fires_at.cpu().numpy()
        return {name: np.ascontiguousarray(counts[i].T, dtype=np.uint32) for i, name in enumerate(self.model.names)}

    def _update_cofires(self, keys: list[Tensor], m: int) -> None:
        """Co-fire: the (token, concept) pair fires in every model (intersection of sparse keys)."""
        common = keys[0]
        for other in keys[1:]:
            common = common[torch.isin(common, other)]
        self.cofires += torch.bincount(common % m, minlength=m)

    def _update_pairs(self, keys: list[Tensor]) -> None:
        """Pair co-fires: (token, concept) pairs firing in both model i and model j (i == j: all of i's)."""
        for i, mine in enumerate(keys):
            self.pair_cofires[i, i] += mine.numel()
            for j in range(i + 1, len(keys)):
                shared = torch.isin(mine, keys[j]).sum()
                self.pair_cofires[i, j] += shared
                self.pair_cofires[j, i] += shared

    def _update_top(self, name: str, codes: Codes, rows: Tensor, tokens_per_image: int) -> None:
        m = self.model.cfg.n_latents
        n_img = len(rows)
        image = torch.arange(codes.indices.shape[0], device=self.device) // tokens_per_image
        keys = (image.unsqueeze(1) * m + codes.indices).flatten()
        image_max = torch.zeros(n_img * m, device=self.device).scatter_reduce_(
            0, keys, codes.values.float().flatten(), reduce="amax", include_self=True)
        self.top[name].update(image_max.view(n_img, m).t(), rows)
