"""Hugging Face ``transformers`` vision models behind the :class:`Backbone` interface."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import Tensor, nn

from usae.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocessing, refuse_layer_name, split_tokens
from usae.config import FINAL_LAYER, BackboneSpec
from usae.weights import LocalWeights, resolve_weights
from usae.weights.fetch import locate_weights
from usae.weights.hub import HubSource

logger = logging.getLogger(__name__)

# Always load float32: transformers 5 defaults to the checkpoint's dtype (often bf16), and
# renamed ``torch_dtype`` to ``dtype`` in 4.56.
_DTYPE_KEY = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
_DTYPE = {_DTYPE_KEY: torch.float32}


class HFBackbone(Backbone):
    """A ``transformers`` vision model (ViT, DINOv2, SigLIP/CLIP vision tower, ...).

    * Built offline from ``spec.hf_config`` (random init), from the hub config of
      ``spec.name`` (random init) or with the released weights (``pretrained``).
      ``spec.kwargs`` are config overrides (e.g. ``num_hidden_layers``). For models with
      a ``vision_config`` (CLIP, SigLIP) only the vision tower is kept. ``spec.weights``
      is a folder written by ``save_pretrained`` (config, weights, image processor),
      loaded with ``from_pretrained(folder)``; every weight of the model must be in it.
    * ``layer: final`` is ``last_hidden_state``, which is post final-norm for ViT,
      DINOv2 and SigLIP. Where it is not (CLIP applies ``post_layernorm`` only to the
      pooled token) the model's ``post_layernorm`` is applied to every token.
    * An integer layer ``i`` is ``hidden_states[i + 1]``, the raw output of block ``i``.
    * Token sequences hold ``seq_len - grid**2`` prefix tokens (CLS, registers) first,
      with ``grid = image_size // patch_size``; feature maps (B, C, H, W) have none.
    * Several layers (``more_specs``), blocks and ``final`` alike, come from one call.
    * Convolutional models (ResNet, ConvNeXt, ...) run with channels-last weights
      (``Backbone._probe_channels_last``).
    """

    loads_local_weights = True

    def __init__(self, spec: BackboneSpec, more_specs: Sequence[BackboneSpec] = ()) -> None:
        """Build the model of a spec and probe its depth, final norm and token layout(s).

        Args:
            spec: Hub id or offline config, pretrained flag, layer, input size,
                normalisation and config overrides.
            more_specs: Further layers of the same model, computed by the same call.

        Raises:
            ValueError: If ``hf_config`` is combined with ``pretrained``, lacks a
                ``model_type``, or the layer is a name or an index past the model's depth.
        """
        super().__init__()
        self.spec, self.more_specs = spec, tuple(more_specs)
        for s in self.specs:
            refuse_layer_name(s)
        self.weights = resolve_weights(spec)
        source = _source(spec, self.weights)
        model, config = _build(spec, source)
        vision_config = getattr(config, "vision_config", None)
        if vision_config is not None and hasattr(model, "vision_model"):
            model, config = model.vision_model, vision_config
        self.model: nn.Module = model.eval()
        self.config = config
        self._forward_kwargs = self._extra_kwargs()
        self._final_norm: nn.Module | None = None
        self._inspect()
        mean, std = _norm_stats(spec, source)
        self.preprocessing = Preprocessing(image_size=spec.image_size, mean=mean, std=std,
                                           interpolation="bicubic")
        self.layout = self._probe_channels_last()  # a CNN (ResNet, ConvNeXt, ...) runs channels-last

    @classmethod
    def hub_source(cls, spec: BackboneSpec) -> HubSource | None:
        """The hub repository ``spec.name`` (config and weights), unless it is a local folder or a built config."""
        if spec.hf_config is not None or Path(spec.name).expanduser().is_dir():
            return None
        weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
        return HubSource(repo_id=spec.name, files=(("config.json",), weights))

    @classmethod
    def weightless_spec(cls, spec: BackboneSpec) -> BackboneSpec:
        """Random weights; the config of a local ``weights`` folder (its ``config.json``) when there is one."""
        weightless = super().weightless_spec(spec)
        if spec.weights is None:
            return weightless
        path = locate_weights(spec)[1]
        return replace(weightless, name=str(path)) if path.is_dir() else weightless

    def _extra_kwargs(self) -> dict[str, Any]:
        """``interpolate_pos_encoding`` when pretrained weights run at another input size."""
        native = getattr(self.config, "image_size", None)
        accepts = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        if accepts and native is not None and native != self.spec.image_size:
            logger.info("models.%s: interpolating position embeddings from %s to %s px",
                        self.spec.key, native, self.spec.image_size)
            return {"interpolate_pos_encoding": True}
        return {}

    def _inspect(self) -> None:
        """One forward pass to read the depth and whether ``last_hidden_state`` is normed."""
        size = self.spec.image_size
        with torch.inference_mode():
            out = self.model(pixel_values=torch.zeros(1, 3, size, size), output_hidden_states=True,
                             **self._forward_kwargs)
        depth = len(out.hidden_states) - 1
        self.depth = depth
        for spec in self.specs:
            if spec.layer != FINAL_LAYER and spec.layer >= depth:
                raise ValueError(f"models.{spec.key}: layer {spec.layer} is out of range for "
                                 f"transformers model {spec.name!r}, which has depth {depth} "
                                 f"(indices 0..{depth - 1})")
        final = next((spec for spec in self.specs if spec.layer == FINAL_LAYER), None)
        if final is not None and torch.equal(out.last_hidden_state, out.hidden_states[-1]):
            norm = next((m for n, m in self.model.named_modules() if n.endswith("post_layernorm")), None)
            if norm is None:
                logger.warning("models.%s: last_hidden_state of %s is not normalised and no "
                               "post_layernorm was found; 'final' is the raw last block output",
                               final.key, final.name)
            else:
                logger.info("models.%s: applying post_layernorm to last_hidden_state for 'final'",
                            final.key)
            self._final_norm = norm

    @classmethod
    def shares_forward(cls, specs: tuple[BackboneSpec, ...]) -> bool:
        """Always: one call returns every block's output and the final one."""
        return True

    def forward_layers(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Prefix and patch tokens of every layer of :attr:`specs`, from one call of the model."""
        blocks = any(spec.layer != FINAL_LAYER for spec in self.specs)
        out = self.model(pixel_values=pixels, output_hidden_states=blocks, **self._forward_kwargs)
        return [self._split(self._final(out.last_hidden_state) if spec.layer == FINAL_LAYER
                            else out.hidden_states[spec.layer + 1], spec) for spec in self.specs]

    def _final(self, tokens: Tensor) -> Tensor:
        return tokens if self._final_norm is None else self._final_norm(tokens)

    def _split(self, tokens: Tensor, spec: BackboneSpec) -> tuple[Tensor, Tensor]:
        if tokens.ndim != 3:
            return split_tokens(tokens, 0, f"models.{spec.key}")
        grid = spec.image_size // _patch_size(self.config, spec)
        n_prefix = tokens.shape[1] - grid * grid
        if n_prefix < 0:
            raise ValueError(f"models.{spec.key}: {tokens.shape[1]} tokens are fewer than the "
                             f"{grid}x{grid} patch grid expected at {spec.image_size} px")
        return split_tokens(tokens, n_prefix, f"models.{spec.key}")


def _source(spec: BackboneSpec, weights: LocalWeights) -> str:
    """What ``from_pretrained`` reads: the local ``weights`` folder, else the hub id (or folder) ``spec.name``."""
    if spec.weights_format is not None:
        raise ValueError(f"models.{spec.key}.weights_format: transformers models load a save_pretrained folder "
                         "as saved; key formats apply to timm checkpoints")
    if weights.path is None:
        return spec.name
    if not weights.path.is_dir():
        raise ValueError(f"models.{spec.key}.weights: transformers models load a folder written by "
                         f"save_pretrained (config.json and the weights), but {weights.path} is a file")
    return str(weights.path)


def _build(spec: BackboneSpec, source: str) -> tuple[nn.Module, Any]:
    """The model (float32) and its top-level config, as the spec asks, from ``source`` (hub id or folder)."""
    overrides = dict(spec.kwargs)
    if spec.hf_config is not None:
        if spec.pretrained:
            raise ValueError(f"models.{spec.key}: hf_config builds a randomly initialised model; "
                             "set pretrained: false (or drop hf_config to load released weights)")
        fields = dict(spec.hf_config)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise ValueError(f"models.{spec.key}.hf_config needs a 'model_type' (e.g. 'vit')")
        try:
            config = transformers.AutoConfig.for_model(model_type, **{**fields, **overrides})
        except ValueError as err:
            raise ValueError(f"models.{spec.key}.hf_config: {err}") from None
    else:
        config = transformers.AutoConfig.from_pretrained(source, **overrides)
    if spec.pretrained:
        return _pretrained(spec, source, config), config
    vision = getattr(config, "vision_config", None) or config
    if hasattr(vision, "image_size"):
        if vision.image_size != spec.image_size:
            logger.info("models.%s: config image_size %s set to %s", spec.key, vision.image_size,
                        spec.image_size)
        vision.image_size = spec.image_size
    return transformers.AutoModel.from_config(config, **_DTYPE), config


def _pretrained(spec: BackboneSpec, source: str, config: Any) -> nn.Module:
    """``from_pretrained``; a local folder must hold every weight (a missing one would stay random)."""
    try:
        model, info = transformers.AutoModel.from_pretrained(source, config=config, output_loading_info=True,
                                                             **_DTYPE)
    except (OSError, RuntimeError, ValueError) as err:
        if spec.weights is None:
            raise
        raise ValueError(f"models.{spec.key}: cannot load the weights in {source} ({type(err).__name__}: {err}); "
                         "the folder is damaged or incomplete, or not a save_pretrained folder of this model") from None
    missing = [k for k in info.get("missing_keys") or () if not k.startswith("pooler.")]
    if missing and spec.weights is not None:
        raise ValueError(f"models.{spec.key}: the weights in {source} lack {len(missing)} of the model's tensors "
                         f"(e.g. {sorted(missing)[:5]}); they would stay random")
    if missing:
        logger.warning("models.%s: %d tensors of %s are not in its checkpoint and stay random (e.g. %s)",
                       spec.key, len(missing), source, sorted(missing)[:5])
    return model


def _patch_size(config: Any, spec: BackboneSpec) -> int:
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        if len(set(patch)) != 1:
            raise ValueError(f"models.{spec.key}: non-square patch size {patch} is not supported")
        patch = patch[0]
    if not isinstance(patch, int) or patch <= 0:
        raise ValueError(f"models.{spec.key}: config of {spec.name!r} has no usable patch_size "
                         f"({patch!r})")
    return patch


def _norm_stats(spec: BackboneSpec, source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean/std: the spec's, else the image processor's (hub or folder), else ImageNet's."""
    mean, std = spec.mean, spec.std
    if mean is not None and std is not None:
        return mean, std
    found = None
    if spec.pretrained and spec.hf_config is None:
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(source)
            found = (_rgb(processor.image_mean), _rgb(processor.image_std))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
            logger.warning("models.%s: no image processor for %s (%s)", spec.key, spec.name, err)
    if found is None:
        logger.warning("models.%s: normalisation not given and not known for %s; using ImageNet "
                       "mean/std", spec.key, spec.name)
        found = (IMAGENET_MEAN, IMAGENET_STD)
    return (mean if mean is not None else found[0]), (std if std is not None else found[1])


def _rgb(value: Any) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"expected 3 (RGB) normalisation values, got {value!r}")
    return values[0], values[1], values[2]


__all__ = ["HFBackbone", "IMAGENET_MEAN", "IMAGENET_STD"]
