"""Extraction parts: opened layer by layer, and deleted once their aligned stores are written.

A part store holds one group a layer (``docs/stores.md``): models that differ only in
``layer`` share the job that wrote it. Preparation reads one layer
(:func:`open_part_layer`). The parts are intermediates (``extract.keep: false``): the
aligned store holds everything training and evaluation read, and the parts (each model's
native patch grid, plus its CLS/register tokens) are needed again only to prepare with
other settings, which Snakemake then extracts afresh. Deleting them halves the disk a run
keeps at the paper's widths.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from usae.activations.store import create_array, open_store
from usae.atomic import remove_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartLayer:
    """One layer of one extraction part: its tokens, the part's rows and validity, and the attributes of both
    (the layer's model, grid and width; the part's manifest hash, part index and failed images)."""

    path: Path
    patches: zarr.Array
    rows: np.ndarray
    valid: np.ndarray
    attrs: dict


def create_part_layer(root: zarr.Group, layer: str, attrs: dict, n_images: int, *, prefix: bool,
                      chunk_rows: int, compressor: str) -> dict[str, zarr.Array]:
    """The group of layer tag ``layer`` in a new extraction part, with attributes ``attrs`` (at least
    ``grid``, ``d_model`` and ``n_prefix``) and its empty ``patches`` (and ``prefix``) array(s), by name."""
    group = root.create_group(layer)
    group.attrs.update({**attrs, "layer": layer})
    n_patches, d = attrs["grid"][0] * attrs["grid"][1], attrs["d_model"]
    shapes = {"patches": (n_images, n_patches, d), "prefix": (n_images, attrs["n_prefix"], d)}
    return {name: create_array(group, name, shapes[name], dtype="float16", chunk_rows=chunk_rows,
                               compressor=compressor) for name in (["patches", "prefix"] if prefix else ["patches"])}


def part_layers(attrs: dict) -> list[str]:
    """The layer tags of an extraction part, from its root attributes (``models``: key -> layer tag), sorted."""
    return sorted(set((attrs.get("models") or {}).values()))


def open_part_layer(path: str | Path, layer: str | None = None) -> PartLayer:
    """Layer tag ``layer`` of extraction part ``path``; None: its only layer.

    Raises:
        FileNotFoundError, ValueError: as :func:`usae.activations.store.open_store`; also a store of another
            stage, or one without that layer (the message lists the layers it has).
    """
    root = open_store(path)
    attrs = root.attrs.asdict()
    if attrs.get("stage") != "extract":
        raise ValueError(f"{path}: a store of stage {attrs.get('stage')!r}, not an extraction part")
    layers = part_layers(attrs)
    if layer is None and len(layers) != 1:
        raise ValueError(f"{path}: extraction part of several layers {layers}; say which one to read")
    layer = layers[0] if layer is None else layer
    if layer not in layers:
        raise ValueError(f"{path}: extraction part without layer {layer!r} (it has {layers}); rerun its extraction")
    group = root[layer]
    return PartLayer(path=Path(path), patches=group["patches"], rows=root["rows"][:], valid=root["valid"][:],
                     attrs={**{k: v for k, v in attrs.items() if k != "models"}, **group.attrs.asdict()})


def delete_extraction_parts(part_paths: list[str | Path]) -> list[Path]:
    """Delete whole extraction part stores; return those deleted (absent ones are skipped).

    Every path is checked before any is deleted, so a list with a wrong path deletes nothing.
    The emptied ``<backbone>`` folder above the parts is removed too.

    Raises:
        ValueError: a path that exists but is not a usae extraction part (no Zarr store, another
            protocol, or a store of another stage such as an aligned store); the message names it.
    """
    present = [Path(p) for p in part_paths if Path(p).exists()]
    for path in present:
        _check_extraction_part(path)
    for path in present:
        remove_path(path)
        logger.info("deleted extraction part %s (extract.keep is false: its aligned store is written)", path)
        _remove_empty_parents(path, levels=1)
    return present


def delete_parts_once_prepared(part_paths: list[str | Path], sharing: list[str | Path]) -> list[Path]:
    """Delete the parts (:func:`delete_extraction_parts`) unless a statistics file of ``sharing`` (the other
    layers the parts hold) is still missing; return those deleted.

    Every preparation of the parts calls this after publishing its own statistics, so the
    last of them to finish sees every file and deletes the parts.
    """
    waiting = [str(p) for p in sharing if not Path(p).exists()]
    if waiting:
        logger.info("extraction parts kept until the other layers they hold are prepared: %s", waiting)
        return []
    return delete_extraction_parts(part_paths)


def _check_extraction_part(path: Path) -> None:
    try:
        attrs = open_store(path).attrs.asdict()
    except (OSError, ValueError) as err:
        raise ValueError(f"refusing to delete {path}: not a finished usae store ({err})") from None
    if attrs.get("stage") != "extract":
        raise ValueError(f"refusing to delete {path}: a store of stage {attrs.get('stage')!r}, not an extraction "
                         "part (stage 'extract')")


def _remove_empty_parents(path: Path, levels: int) -> None:
    """Remove up to ``levels`` folders above ``path`` while they are empty (another job may be filling one)."""
    for parent in list(path.parents)[:levels]:
        try:
            os.rmdir(parent)
        except OSError:  # not empty, or gone already
            return
