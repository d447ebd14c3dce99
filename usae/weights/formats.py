"""Converters between checkpoint key layouts: a released state dict renamed to a library's own names.

Each format is a :class:`KeyFormat` registered in :data:`usae.registry.WEIGHT_FORMATS`
(``models.<name>.weights_format``). With ``weights_format: null`` a checkpoint whose keys
a registered format recognises is converted by it; otherwise it is loaded as saved.
Either way the model is then loaded strictly, so a wrong conversion cannot pass silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from usae.registry import WEIGHT_FORMATS

logger = logging.getLogger(__name__)

StateDict = dict[str, Any]


@dataclass(frozen=True)
class KeyFormat:
    """One checkpoint key layout: how to recognise it and how to rename it for ``library``."""

    library: str
    """The backbone library whose models the converted keys fit (``timm``)."""
    matches: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[StateDict], StateDict]


def convert_keys(state: StateDict, chosen: str | None, where: str, library: str) -> tuple[StateDict, str | None]:
    """Rename a state dict's keys with the chosen format, or the one that recognises them.

    Args:
        state: The checkpoint's state dict.
        chosen: ``weights_format`` (a name in :data:`WEIGHT_FORMATS`) or None to detect.
        where: The model's config path (``models.effnet``), for messages.
        library: The model's backbone library; only formats for it apply.

    Returns:
        The (possibly renamed) state dict and the name of the format used, if any.

    Raises:
        ValueError: the chosen format is for another library or does not fit the keys.
    """
    if chosen is None:
        chosen = next((n for n in WEIGHT_FORMATS.names() if _fits(WEIGHT_FORMATS.get(n), state, library)), None)
        if chosen is None:
            return state, None
        logger.info("%s: the checkpoint's keys are in %r layout; converting them for %s", where, chosen, library)
    fmt: KeyFormat = WEIGHT_FORMATS.get(chosen, setting=f"{where}.weights_format")
    if fmt.library != library:
        raise ValueError(f"{where}.weights_format = {chosen!r} converts checkpoints for {fmt.library} models, "
                         f"not {library}")
    try:
        return fmt.convert(state), chosen
    except (KeyError, ValueError, IndexError) as err:
        raise ValueError(f"{where}.weights_format = {chosen!r} does not fit the checkpoint, whose keys begin "
                         f"{list(state)[:5]} ({type(err).__name__}: {err})") from None


def _fits(fmt: KeyFormat, state: Mapping[str, Any], library: str) -> bool:
    return fmt.library == library and fmt.matches(state)


# --- EfficientNet(-Lite) in the layout of lukemelas' efficientnet_pytorch --------------------------------------

_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
_EFFNET_SHARED = {"_depthwise_conv": "conv_dw", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_EFFNET_DS = {**_EFFNET_SHARED, "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
"""Blocks without an expansion (timm ``DepthwiseSeparableConv``)."""
_EFFNET_IR = {**_EFFNET_SHARED, "_expand_conv": "conv_pw", "_bn0": "bn1", "_bn1": "bn2", "_project_conv": "conv_pwl",
              "_bn2": "bn3"}
"""Blocks with an expansion (timm ``InvertedResidual``)."""
_EFFNET_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def _is_efficientnet_pytorch(state: Mapping[str, Any]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.0.") for k in state)


def efficientnet_pytorch_to_timm(state: StateDict) -> StateDict:
    """``efficientnet_pytorch`` / ``efficientnet_lite_pytorch`` keys -> timm ``tf_efficientnet*``.

    The checkpoint numbers its blocks 0..n-1; timm nests them as ``blocks.<stage>.<i>``.
    Stages are runs of consecutive blocks with the same output width (every EfficientNet
    stage has its own), so one converter serves Lite0-4 (timm ``tf_efficientnet_lite<i>``,
    inputs in [-1, 1]).
    """
    stage_of = _effnet_stages(state)
    out: StateDict = {}
    for key, value in state.items():
        block = _EFFNET_BLOCK.fullmatch(key)
        if block is None:
            module, rest = key.split(".", 1)
            out[f"{_EFFNET_TOP[module]}.{rest}"] = value
            continue
        index, module, tensor = int(block[1]), block[2], block[3]
        stage, position = stage_of[index]
        names = _EFFNET_IR if f"_blocks.{index}._expand_conv.weight" in state else _EFFNET_DS
        out[f"blocks.{stage}.{position}.{names[module]}.{tensor}"] = value
    return out


def _effnet_stages(state: Mapping[str, Any]) -> dict[int, tuple[int, int]]:
    """Block index -> (stage, position in stage), from each block's output width."""
    blocks = sorted({int(m[1]) for k in state if (m := _EFFNET_BLOCK.fullmatch(k))})
    if blocks != list(range(len(blocks))):
        raise ValueError(f"block indices {blocks} have gaps")
    found: dict[int, tuple[int, int]] = {}
    stage, position, width = -1, 0, None
    for index in blocks:
        out_width = state[f"_blocks.{index}._project_conv.weight"].shape[0]
        stage, position = (stage, position + 1) if out_width == width else (stage + 1, 0)
        width = out_width
        found[index] = (stage, position)
    return found


EFFICIENTNET_PYTORCH = KeyFormat(library="timm", matches=_is_efficientnet_pytorch, convert=efficientnet_pytorch_to_timm)

__all__ = ["EFFICIENTNET_PYTORCH", "KeyFormat", "StateDict", "convert_keys", "efficientnet_pytorch_to_timm"]
