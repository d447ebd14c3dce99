"""Typed, validated settings of every stage: one frozen dataclass per config section.

The YAML schema (``workflow/schemas/config.schema.yaml``) and these classes describe the
same keys; ``tests/test_config.py`` fails when they drift apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

SOURCES = ("synthetic", "folder", "list")
STANDARDIZATIONS = ("scalar", "per_dim", "none")
COMPRESSORS = ("none", "zstd", "blosc-lz4")
DEVICES = ("auto", "cpu", "cuda")
FINAL_LAYER = "final"


def _check_choice(section: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{key} = {value!r} is not allowed; choose one of {list(allowed)}")


def _check_range(section: str, key: str, value: Any, lo: float | None = None,
                 hi: float | None = None, lo_open: bool = False) -> None:
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
    if bad:
        low = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        high = "" if hi is None else f"<= {hi}"
        raise ValueError(f"{section}.{key} = {value!r} is out of range; it must be {' and '.join(filter(None, (low, high)))}")


@dataclass(frozen=True, kw_only=True)
class SyntheticImagesConfig:
    """Settings of the built-in generated image set with planted factors."""

    n_images: int = 256
    """Number of images to generate."""
    image_size: int = 224
    """Side of the square images in pixels."""
    max_objects: int = 3
    """Each image holds 1..max_objects objects."""

    def __post_init__(self) -> None:
        _check_range("dataset.synthetic", "n_images", self.n_images, 1)
        _check_range("dataset.synthetic", "image_size", self.image_size, 32)
        _check_range("dataset.synthetic", "max_objects", self.max_objects, 1, 8)


@dataclass(frozen=True, kw_only=True)
class ManifestConfig:
    """Where the images come from and how they are split (config section ``dataset``)."""

    name: str = "synthetic"
    """Dataset name; outputs go to ``results/<name>/``."""
    source: str = "synthetic"
    """``synthetic`` (generated), ``folder`` (class subfolders become labels) or ``list`` (CSV/Parquet)."""
    path: str | None = None
    """Folder root or list file; unused for ``synthetic``."""
    val_fraction: float = 0.2
    """Share of images put in the validation split when the source gives no split."""
    seed: int = 0
    """Seed of the hash split and of the generated images."""
    synthetic: SyntheticImagesConfig = field(default_factory=SyntheticImagesConfig)
    """Generator settings, used when ``source: synthetic``."""

    def __post_init__(self) -> None:
        _check_choice("dataset", "source", self.source, SOURCES)
        _check_range("dataset", "val_fraction", self.val_fraction, 0.0, 1.0)
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"dataset.path is required when dataset.source = {self.source!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"dataset.name = {self.name!r} must be a non-empty name without '/'")


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """One model whose activations are extracted (an entry of config section ``models``)."""

    key: str
    """Short name used in paths and reports (the key under ``models``)."""
    library: str = "timm"
    """Backbone family in the registry: ``timm`` or ``transformers``."""
    name: str
    """timm ``arch.tag`` or Hugging Face hub id."""
    pretrained: bool = True
    """Load released weights (needs the hub) or initialise randomly."""
    layer: str | int = FINAL_LAYER
    """``final`` (post-norm output) or a 0-based block index (that block's output)."""
    image_size: int = 224
    """Input side in pixels (square resize, bicubic, no crop, as in the paper)."""
    mean: tuple[float, float, float] | None = None
    """Normalisation mean; default: the model's own configuration."""
    std: tuple[float, float, float] | None = None
    """Normalisation std; default: the model's own configuration."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra constructor arguments (timm ``create_model`` kwargs)."""
    hf_config: dict[str, Any] | None = None
    """transformers only: a model config (``model_type`` plus fields) to build offline."""

    def __post_init__(self) -> None:
        section = f"models.{self.key}"
        if self.layer != FINAL_LAYER and not (isinstance(self.layer, int) and self.layer >= 0):
            raise ValueError(f"{section}.layer = {self.layer!r}; use 'final' or a block index >= 0")
        _check_range(section, "image_size", self.image_size, 16)
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None:
                if len(value) != 3:
                    raise ValueError(f"{section}.{key} = {value!r} must have 3 values (RGB)")
                object.__setattr__(self, key, tuple(float(v) for v in value))
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"{section}.std = {self.std!r} must be positive")

    @property
    def layer_tag(self) -> str:
        """The layer as it appears in paths: ``final`` or ``block<i>``."""
        return layer_tag(self.layer)


def layer_tag(layer: str | int) -> str:
    """Path-safe name of a layer setting: ``final`` or ``block<i>``."""
    return FINAL_LAYER if layer == FINAL_LAYER else f"block{int(layer)}"


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """How activations are computed and stored (config section ``extract``)."""

    n_parts: int = 2
    """Manifest parts, one extraction job (and one store) each."""
    batch_size: int = 32
    """Images per forward pass."""
    num_workers: int = 2
    """DataLoader processes decoding images."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    images_per_chunk: int = 16
    """Zarr chunk length along the image axis."""
    compressor: str = "none"
    """Codec of the float16 stores: ``none``, ``zstd`` or ``blosc-lz4``."""
    keep_prefix: bool = True
    """Also store CLS/register tokens (in their own array)."""

    def __post_init__(self) -> None:
        _check_range("extract", "n_parts", self.n_parts, 1)
        _check_range("extract", "batch_size", self.batch_size, 1)
        _check_range("extract", "num_workers", self.num_workers, 0)
        _check_range("extract", "images_per_chunk", self.images_per_chunk, 1)
        _check_choice("extract", "device", self.device, DEVICES)
        _check_choice("extract", "compressor", self.compressor, COMPRESSORS)


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """Patch-grid alignment and standardisation (config section ``prepare``)."""

    grid: int = 14
    """Common patch grid side every model is resized to (paper: 14)."""
    standardize: str = "scalar"
    """``scalar`` (one mean and std per model, the paper), ``per_dim`` or ``none``."""
    stats_images: int = 1000
    """Training images sampled (seeded) for the statistics."""
    seed: int = 0
    """Seed of the statistics sample."""
    images_per_chunk: int = 32
    """Zarr chunk length along the image axis of the aligned stores."""
    compressor: str = "none"
    """Codec of the aligned stores: ``none``, ``zstd`` or ``blosc-lz4``."""

    def __post_init__(self) -> None:
        _check_range("prepare", "grid", self.grid, 1)
        _check_choice("prepare", "standardize", self.standardize, STANDARDIZATIONS)
        _check_range("prepare", "stats_images", self.stats_images, 1)
        _check_range("prepare", "images_per_chunk", self.images_per_chunk, 1)
        _check_choice("prepare", "compressor", self.compressor, COMPRESSORS)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, section: str = "", **extra: Any) -> T:
    """Build a config dataclass from a plain dict, rejecting unknown keys by name.

    Nested dataclass fields are built recursively; lists become tuples where the field
    is annotated as a tuple.
    """
    where = section or cls.__name__
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    data = dict(data or {})
    data.update(extra)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names - set(extra))}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_in(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, section=f"{section}.{key}" if section else key)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-friendly dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value



@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The whole ``config.yaml``: dataset, models, and the settings of each stage."""

    results: str = "results"
    """Folder every output goes under."""
    dataset: ManifestConfig = field(default_factory=ManifestConfig)
    """Image source and split (stage ``manifest``)."""
    models: dict[str, BackboneSpec]
    """Backbones, by short name."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Stage ``extract``."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """Stage ``prepare``."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: at least one model is required")
        bad = [k for k in self.models if not k.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"models: names {bad} must use only letters, digits, '_' and '-'")


def load_config(data: dict[str, Any]) -> PipelineConfig:
    """Build and check the pipeline config from a parsed ``config.yaml`` dict."""
    data = dict(data)
    models = data.pop("models", None) or {}
    if not isinstance(models, dict):
        raise ValueError("models: expected a mapping of name -> model settings")
    specs = {key: from_dict(BackboneSpec, value, section=f"models.{key}", key=key) for key, value in models.items()}
    return from_dict(PipelineConfig, data, models=specs)
