"""What a backbone's input and output look like, as plain values: no torch, so the pre-run checks
can hold them (:mod:`usae.backbones.geometry`) without importing it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        """The inverse of :meth:`to_dict`."""
        return cls(n_prefix=int(data["n_prefix"]), grid=(int(data["grid"][0]), int(data["grid"][1])),
                   d_model=int(data["d_model"]))
