"""Which torch device a stage runs on."""

from __future__ import annotations

import torch


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error naming ``setting``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)
