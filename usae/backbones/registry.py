"""Building backbones by library name: ``spec.library`` picks an adapter in :data:`usae.registry.BACKBONES`.

The built-in adapters are declared there as import strings, so importing
``usae.backbones`` (or reading a config) imports neither timm nor transformers: an
adapter's module is imported the first time a spec names its library.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, TypeVar

import torch

from usae.backbones.base import FAMILY_SETTINGS, Backbone, init_seed
from usae.config import BackboneSpec
from usae.registry import BACKBONES
from usae.weights import resolve_weights

logger = logging.getLogger(__name__)

B = TypeVar("B", bound=type[Backbone])


def register_backbone(library: str) -> Callable[[B], B]:
    """Class decorator that registers a :class:`Backbone` subclass under a library name.

    The class is built as ``cls(spec)`` by :func:`create_backbone`; the name becomes an
    allowed value of ``models.<name>.library``.

    Args:
        library: The value of ``BackboneSpec.library`` that selects this class.

    Returns:
        A decorator that registers the class and returns it unchanged.

    Raises:
        ValueError: If the name is empty or already registered, or the class is not a
            :class:`Backbone` subclass.
    """
    if not isinstance(library, str) or not library:
        raise ValueError(f"backbone library name must be a non-empty string, got {library!r}")

    def decorator(cls: B) -> B:
        _check_adapter(library, cls)
        return BACKBONES.register(library)(cls)

    return decorator


def _check_adapter(library: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"register_backbone({library!r}): {cls!r} is not a Backbone subclass")


def backbone_class(spec: BackboneSpec) -> type[Backbone]:
    """The adapter class ``spec.library`` names, imported if needed.

    Raises:
        ValueError: If the library is not registered (the message lists the registered ones).
    """
    cls = BACKBONES.get(spec.library, setting=f"models.{spec.key}.library")
    _check_adapter(spec.library, cls)  # a lazily declared target is only seen now
    return cls


def _check_family_settings(spec: BackboneSpec, cls: type[Backbone]) -> None:
    """Refuse family-specific settings given to a family that would ignore them."""
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}
    ignored = [name for name in FAMILY_SETTINGS
               if name not in cls.family_settings and getattr(spec, name) != defaults[name]]
    if ignored:
        keys = ", ".join(f"models.{spec.key}.{name}" for name in ignored)
        raise ValueError(f"{keys}: not read by library {spec.library}; remove it (or choose a library that "
                         "reads it, e.g. onnx)")


def list_backbones() -> list[str]:
    """Names of the registered backbone libraries, sorted."""
    return sorted(BACKBONES.names())


def create_backbone(spec: BackboneSpec, more_specs: tuple[BackboneSpec, ...] = ()) -> Backbone:
    """Build the backbone a spec describes, frozen and in eval mode.

    Args:
        spec: Which library, model, layer and preprocessing to use.
        more_specs: Further layers of the same model for one forward pass to compute
            (:meth:`Backbone.forward_layers`); only for families whose
            :meth:`Backbone.shares_forward` accepts them (see :class:`usae.backbones.layer_set.LayerSet`).

    Returns:
        The backbone, in eval mode and with ``requires_grad`` False on every parameter.

    Raises:
        ValueError: If ``spec.library`` is not registered (the message lists the
            registered ones), cannot load the ``weights`` given, is given settings of
            other families, or the adapter rejects the spec.
    """
    cls = backbone_class(spec)
    _check_family_settings(spec, cls)
    if spec.weights is not None and not cls.loads_local_weights:
        raise ValueError(f"models.{spec.key}.weights: library {spec.library!r} cannot load local weights; "
                         f"remove weights to use its own pretrained weights")
    if more_specs and not cls.shares_forward((spec, *more_specs)):
        raise ValueError(f"library {spec.library} cannot compute layers {[s.layer for s in (spec, *more_specs)]} "
                         "in one forward pass; build one backbone a layer")
    # Random weights must be the same in every job (parts of one extraction run in
    # separate processes), so they come from a seed fixed by the model's name.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(spec))
        backbone = cls(spec, more_specs=more_specs) if more_specs else cls(spec)
    if backbone.weights is None:  # an adapter that did not record what it loaded: the stores must say it
        backbone.weights = resolve_weights(spec, fetch=False)
    backbone.eval()
    backbone.requires_grad_(False)
    if backbone.channels_last:  # moving to a device later keeps the order (Tensor.to preserves strides)
        backbone.to(memory_format=torch.channels_last)
    logger.info("built backbone %s (%s:%s, layers %s): %s", spec.key, spec.library, spec.name,
                [s.layer_tag for s in backbone.specs], backbone.layouts)
    return backbone
