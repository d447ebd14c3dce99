"""Settings of the data stages: image source, backbones, extraction, preparation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from usae.config.base import check_choice, check_range

SOURCES = ("synthetic", "folder", "list")
STANDARDIZATIONS = ("scalar", "per_dim", "none")
COMPRESSORS = ("none", "zstd", "blosc-lz4")
DEVICES = ("auto", "cpu", "cuda")
FINAL_LAYER = "final"


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
        check_range("dataset.synthetic", "n_images", self.n_images, 1)
        check_range("dataset.synthetic", "image_size", self.image_size, 32)
        check_range("dataset.synthetic", "max_objects", self.max_objects, 1, 8)


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
        check_choice("dataset", "source", self.source, SOURCES)
        check_range("dataset", "val_fraction", self.val_fraction, 0.0, 1.0)
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
        check_range(section, "image_size", self.image_size, 16)
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
        check_range("extract", "n_parts", self.n_parts, 1)
        check_range("extract", "batch_size", self.batch_size, 1)
        check_range("extract", "num_workers", self.num_workers, 0)
        check_range("extract", "images_per_chunk", self.images_per_chunk, 1)
        check_choice("extract", "device", self.device, DEVICES)
        check_choice("extract", "compressor", self.compressor, COMPRESSORS)


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
        check_range("prepare", "grid", self.grid, 1)
        check_choice("prepare", "standardize", self.standardize, STANDARDIZATIONS)
        check_range("prepare", "stats_images", self.stats_images, 1)
        check_range("prepare", "images_per_chunk", self.images_per_chunk, 1)
        check_choice("prepare", "compressor", self.compressor, COMPRESSORS)
