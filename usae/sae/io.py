"""Saved USAE format: ``model.safetensors`` (weights and buffers) + ``config.json``.

``config.json`` holds ``format``, the models and their widths (in order), the SAE
settings, and ``meta``: training scheme, standardisation statistics, data provenance,
code version and a training summary. Documented in README ("Saved model").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from usae import __version__
from usae.atomic import atomic_path
from usae.config import SAEConfig, from_dict, to_dict
from usae.sae.model import USAE

FORMAT = "usae-model/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_usae(model: USAE, directory: str | Path) -> Path:
    """Write ``model`` to ``directory``; an existing model there is replaced only when done."""
    directory = Path(directory)
    config = {"format": FORMAT, "usae_version": __version__, "models": model.names, "dims": model.dims,
              "sae": to_dict(model.cfg), "meta": model.meta}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_usae(directory: str | Path, *, device: str | torch.device = "cpu") -> USAE:
    """Load a model written by :func:`save_usae`.

    Raises:
        FileNotFoundError: ``directory`` lacks the weights or the config.
        ValueError: another format, or weights that do not match the config.
    """
    directory = Path(directory)
    missing = [str(directory / f) for f in (WEIGHTS, CONFIG) if not (directory / f).exists()]
    if missing:
        raise FileNotFoundError(f"not a saved USAE, missing: {', '.join(missing)}")
    config = json.loads((directory / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory}: format {config.get('format')!r}, expected {FORMAT!r}")
    dims = {name: int(config["dims"][name]) for name in config["models"]}
    model = USAE(dims, from_dict(SAEConfig, config["sae"], section="sae"))
    state = load_file(str(directory / WEIGHTS))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that disagree with config.json's dims or settings
        raise ValueError(f"{directory}: weights do not match config.json: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{directory}: weights do not match config.json (missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys})")
    model.meta = config.get("meta", {})
    return model.to(device).eval()
