"""The Universal Sparse Autoencoder model, its losses and its saved format.

The names below are imported on first use, so :mod:`usae.sae.integrity` (asked by the
workflow's driver before any job) imports without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usae.lazy import lazy_attributes

if TYPE_CHECKING:
    from usae.sae.model import USAE, Codes, USAEOutput

__getattr__ = lazy_attributes(__name__, {name: "usae.sae.model" for name in ("USAE", "Codes", "USAEOutput")})

__all__ = ["USAE", "Codes", "USAEOutput"]
