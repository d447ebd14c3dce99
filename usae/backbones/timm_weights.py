"""Local checkpoints for timm models, loaded through timm's own pretrained mechanism, strictly.

timm loads a checkpoint given as ``pretrained_cfg_overlay`` the way it loads its released
weights, including the architecture's own checkpoint filter (e.g. a ViT's position
embeddings resampled to another input size). It drops the classifier, and then loads
non-strictly, when the model is built with another class count than the checkpoint's;
so the model is built with the checkpoint's class count (strict: a missing or extra key
is an error) and its classifier removed afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import timm.models
from torch import nn

from usae.config import BackboneSpec
from usae.registry import WEIGHT_FORMATS
from usae.weights import LocalWeights
from usae.weights.formats import StateDict, convert_keys
from usae.weights.hub import HubSource

logger = logging.getLogger(__name__)

FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
"""Checkpoint names looked for in a ``weights`` folder (the layout of timm's hub repositories)."""


def read_checkpoint(spec: BackboneSpec, weights: LocalWeights) -> tuple[StateDict, LocalWeights]:
    """The state dict of ``weights`` (file or folder), renamed by its key format if it has one.

    Returns:
        The state dict, and ``weights`` with the format used recorded.

    Raises:
        ValueError: a folder without a checkpoint, a file that is not a readable state
            dict (damaged, truncated, another kind of file), or a format that does not fit.
    """
    path = _checkpoint_file(spec, weights)
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as err:  # noqa: BLE001 - torch/safetensors raise many kinds for a damaged file
        raise ValueError(f"models.{spec.key}: cannot read {path} ({weights.origin}) as a checkpoint "
                         f"({type(err).__name__}: {err}); the file is damaged (an interrupted copy or download?) "
                         "or not a PyTorch/safetensors state dict") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"models.{spec.key}: {path} holds no state dict (a mapping of parameter names to tensors)")
    state, used = convert_keys(state, spec.weights_format, f"models.{spec.key}", "timm")
    return state, replace(weights, format=used)


def _checkpoint_file(spec: BackboneSpec, weights: LocalWeights) -> Path:
    path = weights.path
    assert path is not None  # only local weights are read
    if not path.is_dir():
        return path
    found = next((path / name for name in FOLDER_FILES if (path / name).is_file()), None)
    if found is None:
        raise ValueError(f"models.{spec.key}.weights: the folder {path} holds none of {list(FOLDER_FILES)}; "
                         "give the checkpoint file itself")
    return found


def checkpoint_kwargs(spec: BackboneSpec, state: StateDict) -> dict[str, Any]:
    """``timm.create_model`` arguments that load ``state`` strictly, with the checkpoint's class count."""
    cfg = timm.models.get_pretrained_cfg(spec.name)
    heads = getattr(cfg, "classifier", None) or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    n_classes = next((int(state[f"{h}.weight"].shape[0]) for h in heads if f"{h}.weight" in state), 0)
    overlay = dict(state_dict=state, num_classes=n_classes, label_offset=0)
    return dict(pretrained=True, num_classes=n_classes, pretrained_cfg_overlay=overlay)


def build_strictly(spec: BackboneSpec, weights: LocalWeights, build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` (a ``create_model`` call with :func:`checkpoint_kwargs`); return the model without classifier.

    Raises:
        ValueError: the checkpoint's keys or shapes do not fit the model, naming the
            model, the file and the registered key formats.
    """
    try:
        model = build()
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        detail = str(err) if len(str(err)) < 1500 else str(err)[:1500] + " ..."
        hint = "" if weights.format else (f"; if the checkpoint uses another key layout, set models.{spec.key}."
                                          f"weights_format (registered: {list(WEIGHT_FORMATS.names())})")
        raise ValueError(f"models.{spec.key}: the checkpoint {weights.path} ({weights.origin}) does not fit timm "
                         f"model {spec.name!r}{hint}. {detail}") from None
    model.pretrained_cfg.pop("state_dict", None)  # the tensors are in the model now; do not keep a second copy
    if model.pretrained_cfg.get("num_classes"):
        model.reset_classifier(0)
    logger.info("models.%s: loaded %s (sha256 %s) into %s", spec.key, weights.origin, weights.sha256, spec.name)
    return model


def timm_hub_source(spec: BackboneSpec) -> HubSource | None:
    """Where timm downloads ``spec``'s released weights from: the Hugging Face hub, else a URL."""
    if not timm.is_model(spec.name) or {"pretrained_cfg", "pretrained_cfg_overlay"} & set(spec.kwargs):
        return None
    cfg = timm.models.get_pretrained_cfg(spec.name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else FOLDER_FILES
        return HubSource(repo_id=cfg.hf_hub_id, files=(names,))
    return HubSource(url=cfg.url) if cfg.url else None


__all__ = ["FOLDER_FILES", "build_strictly", "checkpoint_kwargs", "read_checkpoint", "timm_hub_source"]
