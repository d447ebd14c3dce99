"""Backbone families behind one interface.

The ``timm``, ``transformers``, ``torchvision`` and ``onnx`` adapters are registered lazily
(``usae.registry.BACKBONES``): their libraries are imported when a model of that family is
first built, not here.
"""

from usae.backbones.base import Backbone, Preprocessing, TokenLayout
from usae.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "Preprocessing", "TokenLayout", "create_backbone", "list_backbones",
           "register_backbone"]
