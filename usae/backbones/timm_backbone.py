"""timm models (ViTs and CNNs) behind the :class:`Backbone` interface."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import timm
import timm.data
from torch import Tensor, nn

from usae.backbones.base import Backbone, Preprocessing, refuse_layer_name, split_tokens
from usae.backbones.timm_weights import build_strictly, checkpoint_kwargs, read_checkpoint, timm_hub_source
from usae.config import FINAL_LAYER, BackboneSpec
from usae.weights import LocalWeights, resolve_weights
from usae.weights.hub import HubSource

logger = logging.getLogger(__name__)


class TimmBackbone(Backbone):
    """A timm model; tokens of its ``forward_features`` output or of one block/stage.

    * ``layer: final`` is the ``forward_features`` output (after the final norm). Token
      sequences (B, N, D) put the model's ``num_prefix_tokens`` (CLS, registers) first;
      feature maps (B, C, H, W) (or NHWC for models whose ``output_fmt`` says so) give
      H*W patch tokens and no prefix tokens.
    * An integer layer is the raw output (no final norm) of that entry of the model's
      ``feature_info``, taken with ``forward_intermediates``: block ``i`` for ViTs, and
      for CNNs the stem (0) then each stage (1, 2, ...), as timm counts them.

    Several integer layers (``more_specs``) come from one ``forward_intermediates`` call
    that stops at the deepest; ``final`` is computed alone (:meth:`shares_forward`).

    Models that accept ``img_size`` (ViT-style) are built at ``spec.image_size``, so that
    their position embeddings match the input (e.g. DINOv2, built at 518 by default).

    ``spec.weights`` (a state dict file, or a folder holding ``model.safetensors`` or
    ``pytorch_model.bin``) is loaded strictly through timm's pretrained mechanism
    (:mod:`usae.backbones.timm_weights`), after renaming its keys if they are in a
    registered layout (``weights_format``).

    Convolutional networks run with channels-last weights (``Backbone._probe_channels_last``), unless
    their code fails so when the layout is probed.
    """

    loads_local_weights = True

    def __init__(self, spec: BackboneSpec, more_specs: Sequence[BackboneSpec] = ()) -> None:
        """Build the timm model of a spec and probe its token layout(s).

        Args:
            spec: Model name, pretrained flag, layer, input size, normalisation and
                extra ``timm.create_model`` kwargs.
            more_specs: Further integer layers of the same model, computed by the same pass.

        Raises:
            ValueError: If the layer is a name, or an index past the model's depth, the
                model has no ``forward_intermediates`` for an integer layer, or ``kwargs``
                holds an ``img_size`` that contradicts ``image_size``.
        """
        super().__init__()
        self.spec, self.more_specs = spec, tuple(more_specs)
        for s in self.specs:
            refuse_layer_name(s)
        if self.more_specs and not self.shares_forward(self.specs):
            raise ValueError(f"models {[s.key for s in self.specs]}: timm computes layer 'final' in a pass of its own; "
                             "build one backbone a layer")
        self.model, self.weights = self._create(spec, resolve_weights(spec))
        self.model.eval()
        self._prefix_api = False
        for s in self.specs:
            if s.layer != FINAL_LAYER:
                self._check_layer(s)
        self.preprocessing = self._preprocessing(spec, self.model)
        self.layout = self._probe_channels_last()

    @classmethod
    def hub_source(cls, spec: BackboneSpec) -> HubSource | None:
        return timm_hub_source(spec)

    @staticmethod
    def _create(spec: BackboneSpec, weights: LocalWeights) -> tuple[nn.Module, LocalWeights]:
        kwargs: dict[str, Any] = dict(spec.kwargs)
        if kwargs.get("img_size", spec.image_size) != spec.image_size:
            raise ValueError(f"models.{spec.key}: kwargs.img_size = {kwargs['img_size']!r} differs from "
                             f"image_size = {spec.image_size}; set image_size only")
        kwargs.pop("img_size", None)
        if not timm.is_model(spec.name):
            raise ValueError(f"models.{spec.key}: {spec.name!r} is not a timm model "
                             "(see timm.list_models(); for the Hugging Face hub use library: transformers)")
        base = dict(pretrained=spec.pretrained, num_classes=0, **kwargs)
        if weights.path is None:
            return _create_at_size(spec, base), weights
        state, weights = read_checkpoint(spec, weights)
        local = {**base, **checkpoint_kwargs(spec, state)}
        return build_strictly(spec, weights, lambda: _create_at_size(spec, local)), weights

    @classmethod
    def shares_forward(cls, specs: tuple[BackboneSpec, ...]) -> bool:
        """When every layer is a block index: ``forward_intermediates`` returns them all; 'final'
        (``forward_features``, after the final norm) is a pass of its own."""
        return all(isinstance(s.layer, int) for s in specs)

    def _check_layer(self, spec: BackboneSpec) -> None:
        model, layer = self.model, spec.layer
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"models.{spec.key}: timm model {spec.name!r} has no "
                             "forward_intermediates, so only layer 'final' is supported")
        depth = self.depth
        if layer >= depth:
            raise ValueError(f"models.{spec.key}: layer {layer} is out of range for timm model "
                             f"{spec.name!r}, which has depth {depth} (indices 0..{depth - 1})")
        params = inspect.signature(model.forward_intermediates).parameters
        self._prefix_api = "return_prefix_tokens" in params

    @property
    def depth(self) -> int:
        """Number of selectable integer layers (entries of the model's ``feature_info``)."""
        info = getattr(self.model, "feature_info", None)
        if info:
            return len(info)
        blocks = getattr(self.model, "blocks", None)
        if blocks is None:
            raise ValueError(f"models.{self.spec.key}: cannot tell the depth of timm model "
                             f"{self.spec.name!r}")
        return len(blocks)

    @staticmethod
    def _preprocessing(spec: BackboneSpec, model: nn.Module) -> Preprocessing:
        cfg = timm.data.resolve_model_data_config(model)
        mean = spec.mean if spec.mean is not None else tuple(float(v) for v in cfg["mean"])
        std = spec.std if spec.std is not None else tuple(float(v) for v in cfg["std"])
        return Preprocessing(image_size=spec.image_size, mean=mean, std=std, interpolation="bicubic")

    def forward_tokens(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Prefix and patch tokens of the configured layer.

        Args:
            pixels: (batch, 3, image_size, image_size) preprocessed images.

        Returns:
            prefix (batch, n_prefix, d_model) and patches (batch, grid_h * grid_w, d_model).
        """
        if self.spec.layer == FINAL_LAYER:
            out = self.model.forward_features(pixels)
            if out.ndim == 4 and getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                out = out.permute(0, 3, 1, 2)
            return self._split(out, int(getattr(self.model, "num_prefix_tokens", 0) or 0), self.spec)
        return self.forward_layers(pixels)[0]

    def forward_layers(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Prefix and patch tokens of every layer of :attr:`specs`; block indices from one pass."""
        if self.spec.layer == FINAL_LAYER:  # alone: shares_forward keeps 'final' out of a shared pass
            return [self.forward_tokens(pixels)]
        # timm returns the blocks in depth order, whatever order they are asked in.
        indices = sorted({s.layer for s in self.specs})
        if self._prefix_api:
            outs = self.model.forward_intermediates(
                pixels, indices=indices, return_prefix_tokens=True, norm=False,
                stop_early=True, output_fmt="NLC", intermediates_only=True)
        else:
            outs = self.model.forward_intermediates(pixels, indices=indices, stop_early=True, intermediates_only=True)
        by_index = dict(zip(indices, outs, strict=True))
        return [self._tokens(by_index[s.layer], s) for s in self.specs]

    def _tokens(self, out: Tensor | tuple[Tensor, Tensor], spec: BackboneSpec) -> tuple[Tensor, Tensor]:
        """(prefix, patches) of one intermediate: timm's (patches, prefix) pair, or a bare map or sequence."""
        if isinstance(out, (tuple, list)):
            patches, prefix = out
            return prefix, patches
        return self._split(out, 0, spec)

    @staticmethod
    def _split(out: Tensor, n_prefix: int, spec: BackboneSpec) -> tuple[Tensor, Tensor]:
        return split_tokens(out, n_prefix, f"models.{spec.key}")


def _create_at_size(spec: BackboneSpec, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` at ``spec.image_size`` where the model takes ``img_size``, else at its own."""
    try:
        return timm.create_model(spec.name, img_size=spec.image_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
    logger.debug("%s does not accept img_size; building at its native geometry", spec.name)
    return timm.create_model(spec.name, **kwargs)


__all__ = ["TimmBackbone"]
