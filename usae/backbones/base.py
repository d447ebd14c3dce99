"""The one interface every backbone family implements: preprocessing, layer, token layout.

Also the helpers families share: feature maps and token sequences as (prefix, patch)
tokens, layer-name errors, and reading a local weights file.
"""

from __future__ import annotations

import abc
import difflib
import inspect
import logging
import zlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from usae.backbones.layout import Preprocessing, TokenLayout
from usae.config import FINAL_LAYER, BackboneSpec
from usae.weights import LocalWeights, library_weights
from usae.weights.formats import convert_keys
from usae.weights.hub import HubSource

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PREFIX_TOKENS = 16
"""Largest number of CLS/register tokens :func:`infer_prefix` considers."""


def init_seed(spec: BackboneSpec) -> int:
    """Seed of a randomly initialised backbone: a stable hash of its library and name.

    Every job that builds the model (parts of one extraction run in separate processes)
    then gets the same random weights.
    """
    return zlib.crc32(f"{spec.library}:{spec.name}".encode())


class Backbone(nn.Module, abc.ABC):
    """A frozen vision model that maps preprocessed pixels to (prefix, patch) tokens."""

    spec: BackboneSpec
    preprocessing: Preprocessing
    layout: TokenLayout
    weights: LocalWeights | None = None
    """The weights loaded, once the adapter resolved ``spec.weights`` (:func:`usae.weights.resolve_weights`)."""
    loads_local_weights: ClassVar[bool] = False
    """Whether the family can load ``spec.weights``; :func:`create_backbone` refuses them otherwise."""
    family_settings: ClassVar[tuple[str, ...]] = ()
    """Which of :data:`FAMILY_SETTINGS` this family reads; the others must keep their defaults."""
    more_specs: tuple[BackboneSpec, ...] = ()
    """Further layers of the same model computed by the same forward pass (:meth:`forward_layers`)."""
    channels_last: bool = False
    """Whether :func:`create_backbone` stores the model's 4-D weights in channels-last order, so
    that convolutions take oneDNN's (CPU) and the tensor cores' (GPU) fast path (MobileNetV2 on
    2 CPU cores: 1.21x forward, 1.35x with gradients, benchmarks/bench_backbone_kernels.py).
    Set by a family (class attribute) or per model (:meth:`_probe_channels_last`), only where the
    code never ``view``s a convolution's output, which channels-last strides would break."""

    @classmethod
    def shares_forward(cls, specs: tuple[BackboneSpec, ...]) -> bool:
        """Whether one instance built as ``cls(specs[0], more_specs=specs[1:])`` computes all these layers
        (same model, other ``layer``) in one forward pass. The default: no, one instance a layer."""
        return False

    _probed: tuple[TokenLayout, ...] = ()

    @property
    def specs(self) -> tuple[BackboneSpec, ...]:
        """Every layer this backbone computes: ``spec`` then :attr:`more_specs`."""
        return (self.spec, *self.more_specs)

    @property
    def layouts(self) -> tuple[TokenLayout, ...]:
        """The token layout of each of :attr:`specs` (``layout`` is the first): as probed, else ``layout``
        alone (an adapter that sets it without :meth:`_probe_layout`)."""
        return self._probed or (self.layout,)

    @classmethod
    def hub_source(cls, spec: BackboneSpec) -> HubSource | None:
        """Where the library's own mechanism gets ``spec``'s released weights; None if unknown (not checked)."""
        return None

    @classmethod
    def weightless_spec(cls, spec: BackboneSpec) -> BackboneSpec:
        """The spec the pre-run checks build to read shapes: random weights, nothing read or downloaded.

        A family whose weights file is also its architecture (onnx) returns ``spec`` itself.
        """
        return replace(spec, pretrained=False, weights=None, weights_sha256=None, weights_format=None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls) and (cls.forward_tokens is Backbone.forward_tokens
                                            and cls.forward_layers is Backbone.forward_layers):
            raise TypeError(f"{cls.__name__} must define forward_tokens (one layer a pass) or forward_layers "
                            "(several layers from one pass)")

    def forward_tokens(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens of the configured layer; by default the first entry of :meth:`forward_layers`.

        Args:
            pixels: (batch, 3, image_size, image_size) preprocessed images.

        Returns:
            prefix (batch, n_prefix, d_model) and patches (batch, grid_h * grid_w, d_model).
        """
        return self.forward_layers(pixels)[0]

    def forward_layers(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(prefix, patches) of every layer of :attr:`specs`, in that order, from one forward pass; by default
        :meth:`forward_tokens` alone.

        A family defines one of the two: :meth:`forward_tokens` if it computes one layer a pass,
        :meth:`forward_layers` if it shares the pass between layers (:meth:`shares_forward`).
        """
        return [self.forward_tokens(pixels)]

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_tokens(pixels)

    def train(self, mode: bool = True) -> Backbone:
        """Backbones are frozen feature extractors: always stay in eval mode (no dropout)."""
        return super().train(False)

    def describe(self, index: int = 0) -> dict[str, Any]:
        """JSON-friendly provenance of layer ``index`` of :attr:`specs`: what was run, which layer, which layout.

        Constructor ``kwargs`` are recorded only when given, so records of models without them
        read alike before and after they were recorded (the comparison page groups runs' models by
        these records: :mod:`usae.report.compare_rows`).
        """
        spec = self.specs[index]
        built_with = {"kwargs": dict(spec.kwargs)} if spec.kwargs else {}
        return {
            "key": spec.key,
            "library": spec.library,
            "name": spec.name,
            "pretrained": spec.pretrained,
            "init_seed": None if spec.pretrained else init_seed(spec),
            "weights": (self.weights or library_weights(spec)).to_dict(),
            "layer": spec.layer_tag,
            "layout": self.layouts[index].to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            **built_with,
        }

    def _probe_layout(self) -> TokenLayout:
        """Run one blank image to read the layouts (:attr:`layouts`) instead of trusting model attributes;
        returns the first."""
        size = self.preprocessing.image_size
        with torch.inference_mode():
            outputs = self.forward_layers(torch.zeros(1, 3, size, size))
        self._probed = tuple(TokenLayout(n_prefix=prefix.shape[1], grid=self._grid(patches.shape[1], spec),
                                         d_model=patches.shape[2])
                             for spec, (prefix, patches) in zip(self.specs, outputs, strict=True))
        return self._probed[0]

    def _probe_channels_last(self) -> TokenLayout:
        """:meth:`_probe_layout` with the 4-D weights channels-last where the model convolves beyond a patch
        embedding (:func:`is_convolutional`), which sets :attr:`channels_last`; a model whose code fails so (it
        ``view``s a convolution's output) keeps them contiguous, logged. For families whose models may or may
        not be convolutional (timm, transformers)."""
        if not is_convolutional(self):
            return self._probe_layout()
        self.to(memory_format=torch.channels_last)
        try:
            layout = self._probe_layout()
        except RuntimeError as err:
            self.to(memory_format=torch.contiguous_format)
            layout = self._probe_layout()  # an error that is not the order's is raised here
            logger.info("models.%s: %s model %r fails with channels-last weights (%s); they stay contiguous",
                        self.spec.key, self.spec.library, self.spec.name, str(err).splitlines()[0])
            return layout
        self.channels_last = True
        return layout

    def _grid(self, n_patches: int, spec: BackboneSpec | None = None) -> tuple[int, int]:
        side = int(round(n_patches ** 0.5))
        if side * side != n_patches:
            raise ValueError(f"models.{(spec or self.spec).key}: {n_patches} patch tokens do not form a square grid")
        return side, side


def is_convolutional(model: nn.Module) -> bool:
    """Whether ``model`` convolves beyond a patch embedding: more than one 2-D convolution.

    CNNs then run with channels-last weights (timm's, on 2 CPU cores: forward 1.06-1.31x faster over
    a dozen architectures, benchmarks/README.md); a ViT's one patch-embedding convolution gains
    nothing.
    """
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


FAMILY_SETTINGS = ("input_layout", "channel_order", "prefix_tokens")
"""Settings of ``models.<name>`` that only some families read (``Backbone.family_settings``)."""


def split_tokens(out: Tensor, n_prefix: int, where: str) -> tuple[Tensor, Tensor]:
    """Prefix and patch tokens of a (B, N, D) sequence or a (B, C, H, W) feature map.

    A feature map becomes H*W patch tokens in row-major order and no prefix tokens; a
    sequence's first ``n_prefix`` tokens are its prefix (CLS, registers).

    Raises:
        ValueError: naming ``where`` for any other number of dimensions.
    """
    if out.ndim == 4:
        patches = out.flatten(2).transpose(1, 2)
        return patches[:, :0], patches
    if out.ndim != 3:
        raise ValueError(f"{where}: the layer's output has shape {tuple(out.shape)}; expected tokens "
                         "(batch, tokens, d) or a feature map (batch, channels, height, width)")
    return out[:, :n_prefix], out[:, n_prefix:]


def infer_prefix(n_tokens: int, image_size: int, where: str) -> int:
    """Number of prefix tokens of a square image's token sequence, when nothing else tells.

    The patch tokens form a g x g grid, g >= 2, with a whole patch size
    (``image_size % g == 0``); at most :data:`MAX_PREFIX_TOKENS` tokens come before them.

    Raises:
        ValueError: if no count, or more than one, fits; the message names ``prefix_tokens``.
    """
    fits = [n for n in range(min(n_tokens - 1, MAX_PREFIX_TOKENS) + 1)
            if _square_side(n_tokens - n) and image_size % _square_side(n_tokens - n) == 0]
    if len(fits) == 1:
        return fits[0]
    found = "no count fits" if not fits else f"counts {fits} all fit"
    raise ValueError(f"{where}: cannot tell the prefix tokens of {n_tokens} tokens at image_size {image_size} "
                     f"({found} a square grid of whole patches); set {where}.prefix_tokens")


def _square_side(n: int) -> int:
    """g where n == g * g and g >= 2, else 0."""
    side = int(round(n ** 0.5))
    return side if side > 1 and side * side == n else 0


def layer_not_found(spec: BackboneSpec, what: str, names: list[str], note: str = "") -> ValueError:
    """Error for a layer the model lacks, listing a few valid names (the closest, else first and last)."""
    sample = difflib.get_close_matches(str(spec.layer), names, n=5, cutoff=0.4)
    if not sample:
        sample = [*names[:3], *names[-3:]] if len(names) > 6 else names
    return ValueError(f"models.{spec.key}.layer = {spec.layer!r} is not a {what} of {spec.library} model "
                      f"{spec.name!r}{note}; valid names include {sample} ({len(names)} in all)")


def channels_first(out: Tensor) -> Tensor:
    """A 4-D feature map as (B, C, H, W), also where the model keeps its channels last.

    Inputs are square, so a (B, C, H, W) map has H == W: a map whose axes 1 and 2 agree
    while axes 2 and 3 differ is (B, H, W, C) (Swin stages, graphs converted from
    TensorFlow) and is permuted. Anything else is returned unchanged.
    """
    if out.ndim == 4 and out.shape[1] == out.shape[2] != out.shape[3]:
        return out.permute(0, 3, 1, 2)
    return out


def refuse_layer_name(spec: BackboneSpec) -> None:
    """For families that select layers by block index only: refuse a layer name, saying what works."""
    if not isinstance(spec.layer, str) or spec.layer == FINAL_LAYER:
        return
    hint = f" (write {spec.layer} without quotes for block {spec.layer})" if spec.layer.isdigit() else ""
    raise ValueError(f"models.{spec.key}.layer = {spec.layer!r}: library {spec.library} takes {FINAL_LAYER!r} or a "
                     f"block index{hint}; layers by name are supported by the torchvision and onnx libraries")


def load_state_dict_file(model: nn.Module, path: Path, spec: BackboneSpec) -> str | None:
    """Load a local weights file into ``model``, strictly: every key present, no extra key, same shapes.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load``
    (``weights_only``: tensors only, no code). A checkpoint that nests its state dict
    under ``state_dict`` or ``model`` is unwrapped; one whose keys a registered format of
    the family recognises (or ``spec.weights_format`` names) is renamed first
    (:func:`usae.weights.formats.convert_keys`).

    Returns:
        The name of the key format applied, if any (for :attr:`LocalWeights.format`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the path is a folder, the file cannot be read (truncated, not a state
            dict), the key format does not fit, or its keys or shapes do not match the
            model; the message names the model, the file and the keys.
    """
    what = f"models.{spec.key}: weights file {path} for {spec.library} model {spec.name!r}"
    if path.is_dir():
        raise ValueError(f"{what} is a folder; give the .pth/.pt or .safetensors file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{what} does not exist")
    state = _read_state_dict(path, what)
    state, used = convert_keys(dict(state), spec.weights_format, f"models.{spec.key}", spec.library)
    problems = _state_dict_problems(model.state_dict(), state)
    if problems:
        raise ValueError(f"{what} does not fit the model: {problems}")
    model.load_state_dict(state, strict=True)
    logger.info("models.%s: loaded %d tensors from %s", spec.key, len(state), path)
    return used


def _read_state_dict(path: Path, what: str) -> Mapping[str, Tensor]:
    """The state dict of a ``.pth``/``.pt``/``.safetensors`` file, unwrapped from ``state_dict``/``model``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader fails differently on a damaged file
        raise ValueError(f"{what} cannot be read (truncated or not a state dict?): "
                         f"{type(err).__name__}: {err}") from None
    if isinstance(state, Mapping) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))
    if not (isinstance(state, Mapping) and all(isinstance(v, Tensor) for v in state.values())):
        raise ValueError(f"{what} does not hold a state dict (a mapping of names to tensors)")
    return state


def _state_dict_problems(expected: Mapping[str, Tensor], found: Mapping[str, Any]) -> str:
    """Missing, unexpected and differently shaped keys, a few of each; empty if none."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    parts = [f"{len(keys)} {label} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
             for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches (file vs model)", shapes)) if keys]
    return "; ".join(parts)
