"""Saved USAE format: ``model.safetensors`` (weights and buffers) + ``config.json``.

``config.json`` holds ``format``, the models and their widths (in order), the SAE
settings, and ``meta``: training scheme, standardisation statistics, data provenance,
code version and a training summary. Documented in README ("Saved model").

This module reads and writes the two files and knows nothing of the model class;
:mod:`usae.sae.model` turns a USAE into them and back (``USAE.save``, ``USAE.load``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from usae.atomic import atomic_path

FORMAT = "usae-model/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def write_model_files(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` (``format`` added) and ``state`` to ``directory``, replacing it only when done."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, **config}, indent=2, sort_keys=True))
    return directory


def read_model_files(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state)`` of a saved model.

    Raises:
        FileNotFoundError: ``directory`` lacks the weights or the config (every missing path listed).
        ValueError: another format.
    """
    directory = Path(directory)
    missing = [str(directory / f) for f in (WEIGHTS, CONFIG) if not (directory / f).exists()]
    if missing:
        raise FileNotFoundError(f"not a saved USAE, missing: {', '.join(missing)}")
    config = json.loads((directory / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory}: format {config.get('format')!r}, expected {FORMAT!r}")
    return config, load_file(str(directory / WEIGHTS))
