"""Several layers of one backbone, computed in as few forward passes as its family allows.

Models of a config that differ only in ``layer`` (:func:`usae.config.same_backbone`) are
one extraction job. A family that can return several layers from one pass
(:meth:`Backbone.shares_forward`) builds one instance for them all; any other gets one
instance a layer, so the job is still correct, only not faster.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from usae.backbones.base import Preprocessing, TokenLayout
from usae.backbones.registry import backbone_class, create_backbone
from usae.config import BackboneSpec, same_backbone


def check_one_model(specs: Sequence[BackboneSpec]) -> None:
    """Refuse an empty list, or specs that differ in more than ``key`` and ``layer`` (naming them)."""
    if not specs:
        raise ValueError("a layer set needs at least one model")
    strangers = [s.key for s in specs if not same_backbone(specs[0], s)]
    if strangers:
        raise ValueError(f"models {strangers} differ from models.{specs[0].key} in more than the layer; "
                         "one extraction job runs one model")


def distinct_layers(specs: Sequence[BackboneSpec]) -> tuple[BackboneSpec, ...]:
    """The first spec of each layer of ``specs``, in order, once they are checked to be one model
    (:func:`check_one_model`)."""
    check_one_model(specs)
    return tuple({s.layer_tag: s for s in reversed(specs)}.values())[::-1]


class LayerSet:
    """The backbones that compute ``specs`` (same model, one entry a layer), in that order."""

    def __init__(self, specs: Sequence[BackboneSpec]) -> None:
        """Build the backbone(s) for ``specs``.

        Raises:
            ValueError: If ``specs`` is empty, or two of them differ in more than ``key`` and ``layer``.
        """
        specs = tuple(specs)
        check_one_model(specs)
        cls = backbone_class(specs[0])
        if len(specs) > 1 and cls.shares_forward(specs):
            self.backbones = [create_backbone(specs[0], more_specs=specs[1:])]
        else:
            self.backbones = [create_backbone(spec) for spec in specs]
        self.specs = tuple(s for b in self.backbones for s in b.specs)
        if [s.key for s in self.specs] != [s.key for s in specs]:
            raise AssertionError(f"{cls.__name__} returned layers {[s.key for s in self.specs]} for "
                                 f"{[s.key for s in specs]}")

    @property
    def preprocessing(self) -> Preprocessing:
        """The input every layer shares (same model, same settings)."""
        return self.backbones[0].preprocessing

    @property
    def layouts(self) -> tuple[TokenLayout, ...]:
        """Token layout of each of :attr:`specs`."""
        return tuple(layout for b in self.backbones for layout in b.layouts)

    @property
    def name(self) -> str:
        """A label for progress bars and logs: the first key, and how many layers."""
        extra = f" (+{len(self.specs) - 1} layers)" if len(self.specs) > 1 else ""
        return f"{self.specs[0].key}{extra}"

    def describe(self, index: int) -> dict:
        """Provenance of layer ``index`` of :attr:`specs` (:meth:`Backbone.describe`)."""
        for backbone in self.backbones:
            if index < len(backbone.specs):
                return backbone.describe(index)
            index -= len(backbone.specs)
        raise IndexError(index)

    def to(self, device) -> LayerSet:
        for backbone in self.backbones:
            backbone.to(device)
        return self

    def forward(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(prefix, patches) of every layer of :attr:`specs`, in that order."""
        return [tokens for backbone in self.backbones for tokens in backbone.forward_layers(pixels)]

    __call__ = forward


__all__ = ["LayerSet", "check_one_model", "distinct_layers"]
