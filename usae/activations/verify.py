"""Full check of activation stores (``usae verify``): layout as specified, every chunk present and intact.

Reading a store already refuses a missing or corrupt chunk when it reaches it; this reads
every chunk up front, so a damaged store is found before a long job, and lists every
problem at once rather than the first one.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from usae.activations.integrity import CHECKSUM_CODEC, DamagedStoreError, codec_names, rebuild_hint
from usae.activations.parts import part_layers
from usae.activations.store import open_store

logger = logging.getLogger(__name__)

REQUIRED_ATTRS = {
    "extract": ("models", "manifest_hash", "part", "n_parts", "n_images"),
    "prepare": ("model", "layer", "grid", "d_model", "manifest_hash", "standardization"),
}
LAYER_ATTRS = ("model", "layer", "grid", "d_model", "n_prefix")
"""Attributes of each layer's group of an extraction part."""


def verify_store(path: str | Path) -> list[str]:
    """Every problem of the store at ``path``, one line each (empty: the store is sound).

    Checks that it opens (exists, protocol, complete), that its attributes and arrays are
    those ``docs/stores.md`` specifies (names, shapes, dtypes, whole-row chunks, checksum
    codec), and reads every chunk of every array: present, checksum correct, decodable,
    and finite for token arrays.
    """
    path = Path(path)
    try:
        group = open_store(path)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    attrs = group.attrs.asdict()
    problems = [f"{path}: {p}" for p in _layout_problems(path, group, attrs)]
    for name, array in sorted(_arrays(group)):
        problems += [f"{path}: {p}" for p in _chunk_problems(name, array)]
    if problems:
        problems.append(f"{path}: {rebuild_hint(path, attrs)}")
    return problems


def _arrays(group: zarr.Group) -> list[tuple[str, zarr.Array]]:
    return [(name, node) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]


def _expected(attrs: dict[str, Any], group: zarr.Group) -> dict[str, tuple[tuple[int, ...], str]]:
    """Array path -> (shape, dtype) that the store's stage writes, sized from its attributes and ``rows``."""
    if attrs.get("stage") == "extract":
        n = attrs.get("n_images")
        spec = {"rows": ((n,), "int64"), "valid": ((n,), "bool")}
        for layer in part_layers(attrs):
            if layer in group:
                spec.update(_layer_arrays(layer, group[layer].attrs.asdict(), group[layer], n))
        return spec
    grid, d = attrs.get("grid") or [0, 0], attrs.get("d_model")
    tokens = int(np.prod(grid))
    spec = {}
    for split in ("train", "val"):
        n = group[f"{split}/rows"].shape[0] if f"{split}/rows" in group else None
        spec.update({f"{split}/tokens": ((n, tokens, d), "float16"), f"{split}/rows": ((n,), "int64"),
                     f"{split}/valid": ((n,), "bool")})
    return spec


def _layer_arrays(layer: str, attrs: dict[str, Any], group: zarr.Group,
                  n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays of one layer's group of an extraction part, sized from the group's attributes."""
    tokens, d = int(np.prod(attrs.get("grid") or [0, 0])), attrs.get("d_model")
    spec = {f"{layer}/patches": ((n, tokens, d), "float16")}
    if "prefix" in group:
        spec[f"{layer}/prefix"] = ((n, attrs.get("n_prefix"), d), "float16")
    return spec


def _layer_problems(group: zarr.Group, attrs: dict[str, Any]) -> list[str]:
    """Missing layer groups of an extraction part, and missing attributes of those present."""
    problems = []
    for layer in part_layers(attrs):
        if layer not in group:
            problems.append(f"layer group '{layer}' is missing")
            continue
        held = group[layer].attrs.asdict()
        problems += [f"attribute {key!r} of layer group '{layer}' is missing" for key in LAYER_ATTRS if key not in held]
    return problems


def _layout_problems(path: Path, group: zarr.Group, attrs: dict[str, Any]) -> list[str]:
    stage = attrs.get("stage")
    if stage not in REQUIRED_ATTRS:
        return [f"attribute stage is {stage!r}, expected one of {sorted(REQUIRED_ATTRS)}"]
    problems = [f"attribute {key!r} is missing" for key in REQUIRED_ATTRS[stage] if key not in attrs]
    if stage == "extract":
        problems += _layer_problems(group, attrs)
    arrays = dict(_arrays(group))
    for name, (shape, dtype) in _expected(attrs, group).items():
        array = arrays.get(name)
        if array is None:
            problems.append(f"array '{name}' is missing")
            continue
        if tuple(array.shape) != shape:
            problems.append(f"array '{name}' has shape {tuple(array.shape)}, expected {shape}")
        if str(array.dtype) != dtype:
            problems.append(f"array '{name}' has dtype {array.dtype}, expected {dtype}")
        whole_rows = tuple(max(1, s) for s in array.shape[1:])
        if tuple(array.chunks[1:]) != whole_rows:
            problems.append(f"array '{name}' has chunks {array.chunks}: not whole rows {whole_rows}")
        # From the file: the checked store shows Zarr the chain without the checksum it verifies itself.
        codecs = codec_names(json.loads((path / name / "zarr.json").read_text()))
        if codecs[-1:] != [CHECKSUM_CODEC]:
            problems.append(f"array '{name}' has no {CHECKSUM_CODEC} checksum (codecs {codecs})")
    return problems


def _chunk_problems(name: str, array: zarr.Array) -> list[str]:
    """Read every chunk of ``array`` on its own; what is wrong with each, one line per chunk."""
    problems = []
    floating = np.dtype(array.dtype).kind == "f"
    for chunk in itertools.product(*(range(n) for n in array.cdata_shape)):
        box = tuple(slice(c * k, min((c + 1) * k, s)) for c, k, s in zip(chunk, array.chunks, array.shape))
        try:
            block = array[box]
        except DamagedStoreError as err:
            problems.append(err.what)
            continue
        except Exception as err:  # noqa: BLE001 - a codec failing on its bytes; reported, then the next chunk
            problems.append(f"chunk {chunk} of array '{name}' cannot be decoded: {type(err).__name__}: {err}")
            continue
        if floating and not np.isfinite(block).all():
            problems.append(f"chunk {chunk} of array '{name}' holds NaN or inf")
    return problems
