"""The Universal Sparse Autoencoder model, its losses and its saved format."""

from usae.sae.model import USAE, Codes, USAEOutput

__all__ = ["USAE", "Codes", "USAEOutput"]
