"""Registry of backbone families: one adapter class per library, picked by ``spec.library``."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

from usae.backbones.base import Backbone, init_seed
from usae.config import BackboneSpec

logger = logging.getLogger(__name__)

B = TypeVar("B", bound=type[Backbone])

_REGISTRY: dict[str, type[Backbone]] = {}


def register_backbone(library: str) -> Callable[[B], B]:
    """Class decorator that registers a :class:`Backbone` subclass under a library name.

    The class is built as ``cls(spec)`` by :func:`create_backbone`.

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
        if not (isinstance(cls, type) and issubclass(cls, Backbone)):
            raise ValueError(f"register_backbone({library!r}): {cls!r} is not a Backbone subclass")
        if library in _REGISTRY:
            raise ValueError(f"backbone library {library!r} is already registered "
                             f"(by {_REGISTRY[library].__qualname__})")
        _REGISTRY[library] = cls
        return cls

    return decorator


def list_backbones() -> list[str]:
    """Names of the registered backbone libraries, sorted."""
    return sorted(_REGISTRY)


def create_backbone(spec: BackboneSpec) -> Backbone:
    """Build the backbone a spec describes, frozen and in eval mode.

    Args:
        spec: Which library, model, layer and preprocessing to use.

    Returns:
        The backbone, in eval mode and with ``requires_grad`` False on every parameter.

    Raises:
        ValueError: If ``spec.library`` is not registered (the message lists the
            registered ones), or the adapter rejects the spec.
    """
    try:
        cls = _REGISTRY[spec.library]
    except KeyError:
        raise ValueError(f"models.{spec.key}.library = {spec.library!r} is unknown; "
                         f"available: {list_backbones()}") from None
    # Random weights must be the same in every job (parts of one extraction run in
    # separate processes), so they come from a seed fixed by the model's name.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(spec))
        backbone = cls(spec)
    backbone.eval()
    backbone.requires_grad_(False)
    logger.info("built backbone %s (%s:%s, layer %s): %s", spec.key, spec.library, spec.name,
                spec.layer_tag, backbone.layout)
    return backbone
