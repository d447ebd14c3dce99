"""Checking a config against the models it names before any job runs.

Some impossible values depend on a model's shape: a layer index past its depth, or a
common grid finer than its patch grid. Building each model on PyTorch's ``meta`` device
(shapes only: no weights allocated, nothing downloaded) reads those shapes in a fraction
of a second, so ``snakemake`` and ``usae`` refuse such configs before the first job
instead of hours later in the preparation job.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from usae.backbones.base import TokenLayout
from usae.backbones.registry import backbone_class, create_backbone
from usae.config import BackboneSpec, PipelineConfig

logger = logging.getLogger(__name__)


def probe_geometry(spec: BackboneSpec) -> TokenLayout:
    """Build ``spec``'s model without weights and read its token layout.

    Randomly initialised on the meta device where the adapter allows it, else on the CPU.
    A family whose weights file is its architecture (onnx) is read from that file.

    Raises:
        ValueError: the spec is impossible for this model (layer past its depth, ...).
        ImportError: the family's optional packages are not installed.
        Exception: anything the model library raises when it cannot build the model
            (unknown name, hub config not reachable offline, ...).
    """
    weightless = replace(spec, pretrained=False) if backbone_class(spec).weightless_probe else spec
    try:
        with torch.device("meta"):
            backbone = create_backbone(weightless)
    except NotImplementedError:  # an adapter that inspects values (transformers, onnx): build it for real
        backbone = create_backbone(weightless)
    return backbone.layout


def check_geometry(cfg: PipelineConfig) -> dict[str, TokenLayout]:
    """Check every model's layer and the common grid of ``cfg``; return what was measured.

    A model whose shapes cannot be read here (e.g. a Hugging Face model whose config
    is not cached and the hub is unreachable) is skipped with a warning; its extraction
    job checks it again.

    Raises:
        ValueError: listing every model whose layer is past its depth or unknown, whose
            patch grid is smaller than ``prepare.grid``, whose weights file is missing or
            whose family's packages are not installed.
    """
    problems: list[str] = []
    found: dict[str, TokenLayout] = {}
    for key, spec in sorted(cfg.models.items()):
        try:
            geometry = probe_geometry(spec)
        except (ValueError, ImportError, FileNotFoundError) as err:  # wrong in the config or the environment
            problems.append(str(err))
            continue
        except Exception as err:  # noqa: BLE001 - the library's own failure; the job reports it in full
            logger.warning("models.%s: could not read the shapes of %r before running (%s: %s); "
                           "its extraction job will check them", key, spec.name, type(err).__name__, err)
            continue
        found[key] = geometry
        if cfg.prepare.grid > min(geometry.grid):
            problems.append(f"prepare.grid = {cfg.prepare.grid} is larger than models.{key}'s patch grid "
                            f"{geometry.grid[0]}x{geometry.grid[1]} ({spec.name} at image_size "
                            f"{spec.image_size}); choose prepare.grid <= {min(geometry.grid)} "
                            f"or a larger image_size")
    if problems:
        raise ValueError("; ".join(problems))
    return found
