"""Fused PyTorch kernels for the operator chains that an ONNX export spells out.

An exporter writes LayerNorm, exact GELU, attention and a linear layer's bias as chains
of elementwise ONNX nodes (ReduceMean, Sub, Pow, Sqrt, Div, Erf, ...), and onnx2torch
converts each node into its own module. Each link of a chain is a pass over memory, so
on a CPU the DINOv2 ViT-S/14 of the default run spent 38% of its forward pass outside
the matrix products. :func:`fuse_onnx_graph` rewrites a converted ``torch.fx`` graph so
that each chain becomes one fused call:

========== ============================================================== =====================================
chain      ONNX nodes (either operand order where the operation commutes)  replaced by
========== ============================================================== =====================================
layer_norm ``d = x - mean(x)``, ``d / sqrt(mean(d ** 2) + eps)``,           ``F.layer_norm``
           then ``* gamma + beta`` if present (last axis only)
gelu       ``x * (erf(x / sqrt(2)) + 1) * 0.5``                           ``F.gelu`` (exact, not tanh)
linear     ``x @ W + b``, ``W`` a 2-D and ``b`` a 1-D weight of the file   ``F.linear`` (one addmm)
attention  ``softmax((q * a) @ (kT * b), -1) @ v``                         ``F.scaled_dot_product_attention``
========== ============================================================== =====================================

A chain is replaced only where every value inside it is used by the chain alone: a
tensor the pipeline reads (a graph output) or that another node uses stays computed as
it was. The fused graph computes the same function up to float rounding (a test holds it
to that on the released DINOv2 and on exported blocks), keeps gradients to the pixels
and runs on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

Node = fx.Node

#: Scalars of the GELU chain, compared with this relative tolerance (files store them as float32).
_SCALAR_RTOL = 1e-5


def fuse_onnx_graph(graph: fx.GraphModule) -> dict[str, int]:
    """Rewrite ``graph`` in place, chain by chain, and return how many of each chain were fused.

    Args:
        graph: A module that onnx2torch converted (a ``torch.fx.GraphModule``).

    Returns:
        Fused count per chain name (``layer_norm``, ``gelu``, ``linear``, ``attention``).
    """
    counts = {}
    for name, fuse in _CHAINS.items():
        counts[name] = sum(fuse(graph, node) for node in list(graph.graph.nodes))
        graph.graph.eliminate_dead_code()  # a dead chain's nodes would still count as users in the next pass
    graph.delete_all_unused_submodules()
    graph.recompile()
    return counts


def _layer_norm_last(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float) -> torch.Tensor:
    """LayerNorm over the last axis, whatever its size."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _attention(q: torch.Tensor, k_transposed: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q @ k_transposed * scale) @ v`` as one fused kernel."""
    return F.scaled_dot_product_attention(q, k_transposed.transpose(-2, -1), v, scale=scale)


# ---- reading the converted graph --------------------------------------------------------------------------------

def _module(graph: fx.GraphModule, node: Any) -> nn.Module | None:
    if not isinstance(node, Node) or node.op != "call_module":
        return None
    return graph.get_submodule(node.target)


def _op(graph: fx.GraphModule, node: Any) -> str | None:
    """The ONNX operation a converted node performs (``Add``, ``ReduceMean``, ``Softmax``, ...), else None."""
    module = _module(graph, node)
    if module is None:
        return None
    name = type(module).__name__
    if name == "OnnxBinaryMathOperation":
        if getattr(module, "broadcast", None) == 1:  # old-style broadcasting: leave it alone
            return None
        function = module.math_op_function
        return {torch.add: "Add", torch.sub: "Sub", torch.mul: "Mul"}.get(function) or (
            "Div" if getattr(function, "__name__", "") == "_onnx_div" else None)
    if name == "OnnxReduceStaticAxes":
        last_axis = module.axes == [-1] and module.keepdims
        return module.operation_type if last_axis else None
    if name == "Softmax":
        return "Softmax" if module.dim == -1 else None
    return {"OnnxPow": "Pow", "OnnxSqrt": "Sqrt", "OnnxErf": "Erf", "OnnxMatMul": "MatMul"}.get(name)


def _tensor(graph: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The value of a constant node or a stored weight, else None."""
    if isinstance(node, Node) and node.op == "get_attr":
        value: Any = graph
        for part in node.target.split("."):
            value = getattr(value, part)
        return value if isinstance(value, torch.Tensor) else None
    module = _module(graph, node)
    if module is not None and type(module).__name__ == "OnnxConstant" and isinstance(module.value, torch.Tensor):
        return module.value
    return None


def _scalar(graph: fx.GraphModule, node: Any) -> float | None:
    value = _tensor(graph, node)
    return float(value.reshape(())) if value is not None and value.numel() == 1 and value.is_floating_point() else None


def _is(graph: fx.GraphModule, node: Any, op: str, users: int | None = 1) -> bool:
    """Whether ``node`` performs ``op`` and (unless ``users`` is None) has exactly that many users."""
    return _op(graph, node) == op and (users is None or len(node.users) == users)


def _only_user(node: Node) -> Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _split(node: Node, is_first: Callable[[Any], bool]) -> tuple[Any, Any] | None:
    """The operands of a commutative ``node`` as (the one ``is_first`` accepts, the other), else None."""
    a, b = node.args[:2]
    if is_first(a):
        return a, b
    if is_first(b):
        return b, a
    return None


def _other(node: Node, known: Any) -> Any:
    """The operand of a binary ``node`` that is not ``known`` (None if neither is)."""
    parts = _split(node, lambda n: n is known)
    return parts[1] if parts else None


def _replace(graph: fx.GraphModule, last: Node, function: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """Compute ``function(*args)`` in place of ``last``; the chain's other nodes die with their last use."""
    with graph.graph.inserting_before(last):
        fused = graph.graph.call_function(function, args)
    last.replace_all_uses_with(fused)
    graph.graph.erase_node(last)
    return 1


# ---- the chains --------------------------------------------------------------------------------------------------

def _fuse_layer_norm(graph: fx.GraphModule, div: Node) -> int:
    """``(x - mean(x)) / sqrt(mean((x - mean(x)) ** 2) + eps)``, with the affine ``* gamma + beta`` if present."""
    if not _is(graph, div, "Div", users=None):
        return 0
    centred, root = div.args[:2]
    if not (_is(graph, centred, "Sub", users=2) and _is(graph, root, "Sqrt")):
        return 0
    x, mean = centred.args[:2]
    if not (_is(graph, mean, "ReduceMean") and mean.args[0] is x and _is(graph, root.args[0], "Add")):
        return 0
    parts = _split(root.args[0], lambda n: _is(graph, n, "ReduceMean"))
    eps = _scalar(graph, parts[1]) if parts else None
    if eps is None or not _is(graph, parts[0].args[0], "Pow"):
        return 0
    square = parts[0].args[0]
    if square.args[0] is not centred or _scalar(graph, square.args[1]) != 2.0 or set(centred.users) != {square, div}:
        return 0
    last, weight, bias = _affine(graph, div)
    return _replace(graph, last, _layer_norm_last, (x, weight, bias, eps))


def _affine(graph: fx.GraphModule, normed: Node) -> tuple[Node, Node | None, Node | None]:
    """The ``* gamma + beta`` after a normalisation, as (last node, gamma, beta); (normed, None, None) if absent."""
    scaled = _only_user(normed)
    if scaled is None or not _is(graph, scaled, "Mul"):
        return normed, None, None
    weight = _split(scaled, lambda n: n is normed)
    if weight is None or not _is_vector(graph, weight[1]):
        return normed, None, None
    shifted = _only_user(scaled)
    bias = _split(shifted, lambda n: n is scaled) if shifted is not None and _is(graph, shifted, "Add", None) else None
    if bias is None or not _is_vector(graph, bias[1], like=weight[1]):
        return scaled, weight[1], None
    return shifted, weight[1], bias[1]


def _is_vector(graph: fx.GraphModule, node: Any, like: Node | None = None) -> bool:
    """Whether ``node`` is a stored 1-D float weight (of the same length as ``like``'s)."""
    value = _tensor(graph, node)
    if value is None or value.ndim != 1 or not value.is_floating_point():
        return False
    return like is None or value.shape == _tensor(graph, like).shape


def _fuse_gelu(graph: fx.GraphModule, erf: Node) -> int:
    """``x * (erf(x / sqrt(2)) + 1) * 0.5`` (exact GELU)."""
    if not _is(graph, erf, "Erf") or not _is(graph, erf.args[0], "Div"):
        return 0
    x, root2 = erf.args[0].args[:2]
    plus_one, times_x = _only_user(erf), None
    if _is(graph, plus_one, "Add") and _close(graph, _other(plus_one, erf), 1.0):
        times_x = _only_user(plus_one)
    if not (_close(graph, root2, math.sqrt(2.0)) and _is(graph, times_x, "Mul", None)):
        return 0
    if _split(times_x, lambda n: n is plus_one) != (plus_one, x) or len(erf.args[0].users) != 1:
        return 0
    half = _only_user(times_x)
    if not (_is(graph, half, "Mul", None) and _close(graph, _other(half, times_x), 0.5)):
        return 0
    return _replace(graph, half, F.gelu, (x,))


def _close(graph: fx.GraphModule, node: Any, target: float) -> bool:
    value = _scalar(graph, node)
    return value is not None and math.isclose(value, target, rel_tol=_SCALAR_RTOL)


def _fuse_linear(graph: fx.GraphModule, add: Node) -> int:
    """``x @ W + b`` with ``W`` a stored (d_in, d_out) and ``b`` a stored (d_out,) weight."""
    if not _is(graph, add, "Add", users=None):
        return 0
    parts = _split(add, lambda n: _is(graph, n, "MatMul"))
    if parts is None:
        return 0
    product, bias = parts
    if len(product.users) != 1:  # the bare product is needed elsewhere too
        return 0
    x, weight = product.args[:2]
    matrix, vector = _tensor(graph, weight), _tensor(graph, bias)
    if matrix is None or vector is None or matrix.ndim != 2 or vector.shape != matrix.shape[1:]:
        return 0
    with graph.graph.inserting_before(add):
        transposed = graph.graph.call_function(torch.t, (weight,))
    return _replace(graph, add, F.linear, (x, transposed, bias))


def _fuse_attention(graph: fx.GraphModule, softmax: Node) -> int:
    """``softmax((q * a) @ (kT * b), dim=-1) @ v``, with scalar ``a`` and ``b`` (either may be absent)."""
    if not (_is(graph, softmax, "Softmax") and _is(graph, softmax.args[0], "MatMul")):
        return 0
    out = _only_user(softmax)
    if not (_is(graph, out, "MatMul", None) and out.args[0] is softmax):
        return 0
    q, a = _unscale(graph, softmax.args[0].args[0])
    k_transposed, b = _unscale(graph, softmax.args[0].args[1])
    return _replace(graph, out, _attention, (q, k_transposed, out.args[1], a * b))


def _unscale(graph: fx.GraphModule, node: Any) -> tuple[Any, float]:
    """(x, s) for a node computing ``x * s`` with a scalar ``s`` used only here, else (node, 1.0)."""
    if _is(graph, node, "Mul"):
        parts = _split(node, lambda n: _scalar(graph, n) is not None)
        if parts is not None:
            return parts[1], _scalar(graph, parts[0])
    return node, 1.0


_CHAINS: dict[str, Callable[[fx.GraphModule, Node], int]] = {
    "layer_norm": _fuse_layer_norm, "gelu": _fuse_gelu, "linear": _fuse_linear, "attention": _fuse_attention,
}

__all__ = ["fuse_onnx_graph"]
