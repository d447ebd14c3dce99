"""What MACO maximises: a concept's code at one model's patch tokens, from pixels, with gradients.

The chain is the pipeline's own: resize-free pixels in (0, 1) at the model's input size ->
the model's normalisation -> its backbone to the configured layer -> the USAE's
standardisation -> model i's encoder. The optimised quantity is the concept's
*pre-activation* at each token (before TopK): the code ``Z_k`` itself is zero, with no
gradient, wherever the concept is not yet among a token's K largest. What is reported is
the code ``Z_k`` (after TopK), reduced over tokens by the same objective.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from usae.backbones.base import Backbone
from usae.sae.model import USAE


def mean_over_tokens(values: Tensor) -> Tensor:
    """``(n, T) -> (n,)``: the mean over all patch tokens (the whole image shows the concept)."""
    return values.mean(dim=1)


def max_over_tokens(values: Tensor) -> Tensor:
    """``(n, T) -> (n,)``: the largest token (the concept anywhere in the image)."""
    return values.amax(dim=1)


def centre_tokens(values: Tensor) -> Tensor:
    """``(n, T) -> (n,)``: the mean over the central half of the (square) token grid, a spatial target."""
    side = int(round(values.shape[1] ** 0.5))
    if side * side != values.shape[1]:
        raise ValueError(f"the centre objective needs a square token grid, got {values.shape[1]} tokens")
    lo, hi = side // 4, side - side // 4
    return values.reshape(-1, side, side)[:, lo:hi, lo:hi].mean(dim=(1, 2))


class ConceptReader(nn.Module):
    """One model's view of the shared concepts: pixels -> per-token values of chosen concepts."""

    def __init__(self, name: str, backbone: Backbone, usae: USAE) -> None:
        super().__init__()
        self.name, self.backbone, self.usae = name, backbone.eval().requires_grad_(False), usae.eval()
        usae.requires_grad_(False)
        prep = backbone.preprocessing
        self.input_size = prep.image_size
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1))

    def pre_codes(self, pixels: Tensor) -> Tensor:
        """``(n, 3, s, s)`` pixels in (0, 1) at the input size -> ``(n, T, m)`` pre-activations."""
        _, patches = self.backbone.forward_tokens((pixels - self.mean) / self.std)
        flat = self.usae.standardize(self.name, patches.float()).reshape(-1, patches.shape[-1])
        return self.usae.pre_codes(self.name, flat).reshape(patches.shape[0], patches.shape[1], -1)

    def forward(self, pixels: Tensor, concepts: Tensor) -> Tensor:
        """Pre-activation of concept ``concepts[b]`` at each token of image ``b``: ``(n, T)``."""
        pre = self.pre_codes(pixels)
        return pre.gather(2, concepts.view(-1, 1, 1).expand(-1, pre.shape[1], 1)).squeeze(2)

    @torch.no_grad()
    def codes(self, pixels: Tensor, concepts: Tensor) -> Tensor:
        """The code ``Z_k`` (after the SAE's activation) of concept ``concepts[b]`` at each token: ``(n, T)``."""
        pre = self.pre_codes(pixels)
        n, tokens, m = pre.shape
        codes = self.usae.activate(self.name, pre.reshape(n * tokens, m)).dense(m).reshape(n, tokens, m)
        return codes.gather(2, concepts.view(-1, 1, 1).expand(-1, tokens, 1)).squeeze(2)
