"""Backbone families behind one interface.

The ``timm``, ``transformers``, ``torchvision`` and ``onnx`` adapters are registered lazily
(``usae.registry.BACKBONES``): their libraries are imported when a model of that family is
first built, not here. The names below are imported on first use too, so the torch-free
modules of this package (:mod:`usae.backbones.layout`, :mod:`usae.backbones.geometry`) import
without torch: the workflow's driver checks a config with them in a fraction of a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usae.lazy import lazy_attributes

if TYPE_CHECKING:
    from usae.backbones.base import Backbone
    from usae.backbones.layout import Preprocessing, TokenLayout
    from usae.backbones.registry import create_backbone, list_backbones, register_backbone

__getattr__ = lazy_attributes(__name__, {
    "Backbone": "usae.backbones.base",
    "Preprocessing": "usae.backbones.layout",
    "TokenLayout": "usae.backbones.layout",
    "create_backbone": "usae.backbones.registry",
    "list_backbones": "usae.backbones.registry",
    "register_backbone": "usae.backbones.registry",
})

__all__ = ["Backbone", "Preprocessing", "TokenLayout", "create_backbone", "list_backbones", "register_backbone"]
