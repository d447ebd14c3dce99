"""Backbone families behind one interface; importing this registers ``timm`` and ``transformers``."""

from usae.backbones.base import Backbone, Preprocessing, TokenLayout
from usae.backbones.registry import create_backbone, list_backbones, register_backbone
from usae.backbones import hf_backbone, timm_backbone  # noqa: F401  (registers the adapters)

__all__ = ["Backbone", "Preprocessing", "TokenLayout", "create_backbone", "list_backbones",
           "register_backbone"]
