"""The one interface every backbone family implements: preprocessing, layer, token layout."""

from __future__ import annotations

import abc
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from usae.config import BackboneSpec
from usae.weights import LocalWeights, library_weights
from usae.weights.hub import HubSource


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor.

    Square resize to ``image_size`` (no crop, as in the paper), then ``(x/255 - mean) / std``.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one image sit in the output of the chosen layer.

    ``n_prefix`` tokens (CLS, registers) come first, then ``grid[0] * grid[1]`` patch
    tokens in row-major order. CNN feature maps have no prefix tokens.
    """

    n_prefix: int
    grid: tuple[int, int]
    d_model: int

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict[str, Any]:
        return {"n_prefix": self.n_prefix, "grid": list(self.grid), "d_model": self.d_model}


def init_seed(spec: BackboneSpec) -> int:
    """Seed of a randomly initialised backbone: a stable hash of its library and name.

    Every job that builds the model (parts of one extraction run in separate processes)
    then gets the same random weights.
    """
    return zlib.crc32(f"{spec.library}:{spec.name}".encode())


class Backbone(nn.Module, abc.ABC):
    """A frozen vision model that maps preprocessed pixels to (prefix, patch) tokens."""

    spec: BackboneSpec
    preprocessing: Preprocessing
    layout: TokenLayout
    weights: LocalWeights | None = None
    """The weights loaded, once the adapter resolved ``spec.weights`` (:func:`usae.weights.resolve_weights`)."""
    loads_local_weights: ClassVar[bool] = False
    """Whether the family can load ``spec.weights``; :func:`create_backbone` refuses them otherwise."""

    @classmethod
    def hub_source(cls, spec: BackboneSpec) -> HubSource | None:
        """Where the library's own mechanism gets ``spec``'s released weights; None if unknown (not checked)."""
        return None

    @classmethod
    def weightless_spec(cls, spec: BackboneSpec) -> BackboneSpec:
        """The spec the pre-run checks build to read shapes: random weights, nothing read or downloaded."""
        return replace(spec, pretrained=False, weights=None, weights_sha256=None, weights_format=None)

    @abc.abstractmethod
    def forward_tokens(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens of the configured layer.

        Args:
            pixels: (batch, 3, image_size, image_size) preprocessed images.

        Returns:
            prefix (batch, n_prefix, d_model) and patches (batch, grid_h * grid_w, d_model).
        """

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_tokens(pixels)

    def train(self, mode: bool = True) -> Backbone:
        """Backbones are frozen feature extractors: always stay in eval mode (no dropout)."""
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly provenance: what was run, which layer, which token layout."""
        return {
            "key": self.spec.key,
            "library": self.spec.library,
            "name": self.spec.name,
            "pretrained": self.spec.pretrained,
            "init_seed": None if self.spec.pretrained else init_seed(self.spec),
            "weights": (self.weights or library_weights(self.spec)).to_dict(),
            "layer": self.spec.layer_tag,
            "layout": self.layout.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
        }

    def _probe_layout(self) -> TokenLayout:
        """Run one blank image to read the layout instead of trusting model attributes."""
        size = self.preprocessing.image_size
        with torch.inference_mode():
            prefix, patches = self.forward_tokens(torch.zeros(1, 3, size, size))
        return TokenLayout(n_prefix=prefix.shape[1], grid=self._grid(patches.shape[1]),
                           d_model=patches.shape[2])

    def _grid(self, n_patches: int) -> tuple[int, int]:
        side = int(round(n_patches ** 0.5))
        if side * side != n_patches:
            raise ValueError(f"{self.spec.key}: {n_patches} patch tokens do not form a square grid")
        return side, side
