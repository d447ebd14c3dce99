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
from usae.fingerprint import file_sha256
from usae.sae.integrity import CONFIG, FORMAT, WEIGHTS, model_problem


def write_model_files(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` (``format`` added) and ``state`` to ``directory``, replacing it only when done."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        # The hash lets a reader (and the workflow, before any job) tell a damaged file from the saved one.
        config = {"format": FORMAT, **config, "weights_sha256": file_sha256(tmp / WEIGHTS)}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def read_model_files(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state)`` of a saved model.

    Raises:
        FileNotFoundError: ``directory`` lacks the weights or the config (every missing path listed).
        ValueError: another format, or damaged files (:func:`model_problem` says which and how).
    """
    directory = Path(directory)
    problem = model_problem(directory)
    if problem and problem.startswith("not a saved USAE"):
        raise FileNotFoundError(problem)
    if problem:
        raise ValueError(f"{problem}; retrain it (its run's `usae train`, or snakemake --forcerun train_usae)")
    config = json.loads((directory / CONFIG).read_text())
    config.pop("weights_sha256", None)
    return config, load_file(str(directory / WEIGHTS))
