"""The Universal Sparse Autoencoder model, its losses and its saved format."""

from usae.sae.model import USAE, Codes

__all__ = ["USAE", "Codes"]
