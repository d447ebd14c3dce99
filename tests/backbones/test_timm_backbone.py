"""timm adapter: layouts, final/intermediate layers and preprocessing of tiny random models."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import timm  # noqa: E402
import timm.data  # noqa: E402
import torch  # noqa: E402

from usae.backbones import TokenLayout, create_backbone  # noqa: E402
from usae.backbones.timm_backbone import TimmBackbone  # noqa: E402
from usae.config import BackboneSpec  # noqa: E402

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def _spec(name: str, image_size: int, layer="final", **extra) -> BackboneSpec:
    return BackboneSpec(key="m", library="timm", name=name, pretrained=False, layer=layer,
                        image_size=image_size, **extra)


def _pixels(backbone, n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    size = backbone.preprocessing.image_size
    return torch.randn(n, 3, size, size)


def _hooked(module: torch.nn.Module, run) -> torch.Tensor:
    """Output of ``module`` during ``run()``, captured with a forward hook."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.inference_mode():
            run()
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_vit_final_layout_and_output():
    backbone = create_backbone(_spec("vit_small_patch16_224", 112, kwargs=TINY_VIT))
    assert isinstance(backbone, TimmBackbone)
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(7, 7), d_model=64)
    x = _pixels(backbone)
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
        expected = backbone.model.forward_features(x)  # post final norm
    assert prefix.shape == (2, 1, 64) and patches.shape == (2, 49, 64)
    torch.testing.assert_close(prefix, expected[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(patches, expected[:, 1:], rtol=0, atol=0)
    # The final norm really was applied: tokens are standardised along the channel axis.
    assert patches.mean(-1).abs().max() < 1e-4


@pytest.mark.parametrize("layer", [0, 1])
def test_vit_block_equals_hook_on_block(layer):
    backbone = create_backbone(_spec("vit_small_patch16_224", 112, layer=layer, kwargs=TINY_VIT))
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(7, 7), d_model=64)
    x = _pixels(backbone)
    block_out = _hooked(backbone.model.blocks[layer], lambda: backbone.model.forward_features(x))
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
    torch.testing.assert_close(prefix, block_out[:, :1])
    torch.testing.assert_close(patches, block_out[:, 1:])


def test_dinov2_registers_layout_and_block():
    kwargs = {"depth": 2, "embed_dim": 32, "num_heads": 2}
    final = create_backbone(_spec("vit_small_patch14_reg4_dinov2", 112, kwargs=kwargs))
    assert final.layout == TokenLayout(n_prefix=5, grid=(8, 8), d_model=32)
    block = create_backbone(_spec("vit_small_patch14_reg4_dinov2", 112, layer=1, kwargs=kwargs))
    block.model.load_state_dict(final.model.state_dict())
    x = _pixels(final)
    block_out = _hooked(block.model.blocks[1], lambda: block.model.forward_features(x))
    with torch.inference_mode():
        prefix, patches = block.forward_tokens(x)
        f_prefix, f_patches = final.forward_tokens(x)
    assert prefix.shape == (2, 5, 32) and patches.shape == (2, 64, 32)
    torch.testing.assert_close(prefix, block_out[:, :5])
    torch.testing.assert_close(patches, block_out[:, 5:])
    # 'final' is the last block's output passed through the final norm.
    torch.testing.assert_close(f_patches, final.model.norm(block_out)[:, 5:])
    torch.testing.assert_close(f_prefix, final.model.norm(block_out)[:, :5])


def test_dinov2_is_built_at_the_requested_size():
    backbone = create_backbone(_spec("vit_small_patch14_reg4_dinov2", 224,
                                     kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}))
    assert backbone.layout == TokenLayout(n_prefix=5, grid=(16, 16), d_model=32)
    assert tuple(backbone.model.patch_embed.img_size) == (224, 224)  # timm default is 518


def test_cnn_final_feature_map():
    backbone = create_backbone(_spec("resnet18", 64))
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(2, 2), d_model=512)
    x = _pixels(backbone)
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
        fmap = backbone.model.forward_features(x)
    assert prefix.shape == (2, 0, 512) and patches.shape == (2, 4, 512)
    # Row-major order: token h * W + w is the feature-map pixel (h, w).
    torch.testing.assert_close(patches[:, 1], fmap[:, :, 0, 1], rtol=0, atol=0)
    torch.testing.assert_close(patches, fmap.flatten(2).transpose(1, 2), rtol=0, atol=0)


def test_cnn_stage_equals_hook():
    backbone = create_backbone(_spec("resnet18", 64, layer=2))
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(8, 8), d_model=128)
    x = _pixels(backbone)
    stage = _hooked(backbone.model.layer2, lambda: backbone.model.forward_features(x))
    with torch.inference_mode():
        prefix, patches = backbone.forward_tokens(x)
    assert prefix.shape == (2, 0, 128)
    torch.testing.assert_close(patches, stage.flatten(2).transpose(1, 2))



@pytest.mark.parametrize("layer", ["final", 2])
def test_cnns_run_channels_last_with_the_contiguous_tokens_and_pixel_gradients(layer):
    """Convolutional timm models keep their 4-D weights channels-last (oneDNN / tensor-core convolutions): the
    tokens, and the gradient MACO takes to the pixels, change by float rounding only."""
    backbone = create_backbone(_spec("resnet18", 64, layer=layer))
    conv = backbone.model.conv1.weight
    assert backbone.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()

    def tokens_and_gradient():
        x = _pixels(backbone).requires_grad_()
        patches = backbone.forward_tokens(x)[1]
        patches.square().mean().backward()
        return patches.detach(), x.grad

    patches, grad = tokens_and_gradient()
    backbone.to(memory_format=torch.contiguous_format)
    plain, plain_grad = tokens_and_gradient()
    torch.testing.assert_close(patches, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-4, atol=1e-6 * float(plain_grad.abs().max()))


class ViewsItsConvolution(torch.nn.Module):
    """Two convolutions and a ``view`` of the second one's output, which channels-last strides refuse."""

    def __init__(self, **_kwargs):
        super().__init__()
        self.stem, self.head = torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Conv2d(8, 8, 1)

    def forward_features(self, x):
        y = self.head(self.stem(x))
        b, c, h, w = y.shape
        return y.view(b, c * h * w).view(b, c, h, w)


def test_a_cnn_whose_code_fails_channels_last_keeps_its_weights_contiguous(monkeypatch, caplog):
    monkeypatch.setattr(timm, "is_model", lambda name: True)
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: ViewsItsConvolution(**kwargs))
    with pytest.raises(RuntimeError, match="view"):  # what the order would do to it
        ViewsItsConvolution().to(memory_format=torch.channels_last).forward_features(torch.zeros(1, 3, 16, 16))
    with caplog.at_level("INFO", logger="usae.backbones.base"):
        backbone = create_backbone(_spec("views_its_convolution", 16))
    assert not backbone.channels_last and backbone.model.stem.weight.is_contiguous()
    assert "models.m: timm model 'views_its_convolution' fails with channels-last weights" in caplog.text
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(4, 4), d_model=8)
    with torch.inference_mode():
        x = _pixels(backbone)
        torch.testing.assert_close(backbone.forward_tokens(x)[1],
                                   backbone.model.forward_features(x).flatten(2).transpose(1, 2), rtol=0, atol=0)


def test_a_vit_keeps_its_weights_as_they_are():
    """One patch-embedding convolution gains nothing from channels-last: a ViT is left contiguous."""
    backbone = create_backbone(_spec("vit_small_patch16_224", 112, kwargs=TINY_VIT))
    assert not backbone.channels_last and backbone.model.patch_embed.proj.weight.is_contiguous()

@pytest.mark.parametrize(("name", "layer", "depth", "kwargs"), [
    ("vit_small_patch16_224", 2, 2, TINY_VIT),
    ("resnet18", 5, 5, {}),
])
def test_layer_past_depth_raises(name, layer, depth, kwargs):
    with pytest.raises(ValueError, match=rf"layer {layer} .*{name}.*depth {depth}"):
        create_backbone(_spec(name, 64, layer=layer, kwargs=kwargs))


def test_preprocessing_from_pretrained_cfg():
    spec = _spec("vit_base_patch16_siglip_224.webli", 64,
                 kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    backbone = create_backbone(spec)
    pre = backbone.preprocessing
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    assert pre.image_size == 64 and pre.interpolation == "bicubic"
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(4, 4), d_model=32)  # SigLIP: no CLS

    cnn = create_backbone(_spec("resnet18", 64))
    cfg = timm.data.resolve_model_data_config(cnn.model)
    assert cnn.preprocessing.mean == pytest.approx(cfg["mean"])
    assert cnn.preprocessing.std == pytest.approx(cfg["std"])
    assert cnn.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_preprocessing_spec_override():
    spec = _spec("vit_base_patch16_siglip_224.webli", 64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                 kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    pre = create_backbone(spec).preprocessing
    assert pre.mean == (0.1, 0.2, 0.3) and pre.std == (0.4, 0.5, 0.6)


def test_conflicting_img_size_kwarg_raises():
    with pytest.raises(ValueError, match="img_size"):
        create_backbone(_spec("vit_small_patch16_224", 112, kwargs={**TINY_VIT, "img_size": 224}))


def test_describe_is_json_friendly():
    backbone = create_backbone(_spec("vit_small_patch16_224", 112, layer=1, kwargs=TINY_VIT))
    desc = json.loads(json.dumps(backbone.describe()))
    assert desc["layer"] == "block1"
    assert desc["layout"] == {"n_prefix": 1, "grid": [7, 7], "d_model": 64}
    assert desc["preprocessing"]["image_size"] == 112


@pytest.mark.parametrize(("layer", "message"), [
    ("blocks.1", r"models.m.layer = 'blocks.1': library timm takes 'final' or a block index; layers by name are "
                 r"supported by the torchvision and onnx libraries"),
    ("1", r"\(write 1 without quotes for block 1\)"),
])
def test_layer_names_are_refused_with_what_works(layer, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(_spec("vit_small_patch16_224", 64, layer=layer, kwargs=TINY_VIT))


@pytest.mark.parametrize(("name", "size", "layers", "kwargs"), [
    ("vit_small_patch16_224", 112, [1, 0], TINY_VIT),  # timm returns blocks in depth order: asked out of it here
    ("vit_small_patch14_reg4_dinov2", 56, [0, 1], {"depth": 2, "embed_dim": 32, "num_heads": 2}),
    ("resnet18", 64, [3, 1, 2, 1], {}),  # a CNN: no prefix tokens; one stage twice
])
def test_one_pass_gives_each_block_its_own_tokens(same_as_alone, name, size, layers, kwargs):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    layer_set = same_as_alone(_spec(name, size, kwargs=kwargs), layers, x)
    assert [layer_set.describe(i)["layer"] for i in range(len(layers))] == [f"block{i}" for i in layers]


def test_final_with_blocks_is_one_backbone_a_layer(same_as_alone):
    spec = _spec("vit_small_patch16_224", 112, kwargs=TINY_VIT)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    layer_set = same_as_alone(spec, [1, "final", 0], x, shared=False)
    assert [s.key for s in layer_set.specs] == ["m0", "m1", "m2"]
    assert not TimmBackbone.shares_forward(layer_set.specs) and TimmBackbone.shares_forward(layer_set.specs[::2])
    with pytest.raises(ValueError, match=r"library timm cannot compute layers \[1, 'final', 0\] in one forward pass"):
        create_backbone(layer_set.specs[0], more_specs=layer_set.specs[1:])
    with pytest.raises(ValueError, match=r"models \['m0', 'm1', 'm2'\]: timm computes layer 'final' in a pass of its own"):
        TimmBackbone(layer_set.specs[0], more_specs=layer_set.specs[1:])


@pytest.mark.parametrize(("layers", "message"), [
    ([0, 2], r"models.m1: layer 2 is out of range for timm model 'vit_small_patch16_224', which has depth 2"),
    ([0, "blocks.1"], r"models.m1.layer = 'blocks.1': library timm takes 'final' or a block index"),
])
def test_a_bad_layer_among_several_names_its_model(layers_of, layers, message):
    first, *rest = layers_of(_spec("vit_small_patch16_224", 64, kwargs=TINY_VIT), layers)
    with pytest.raises(ValueError, match=message):
        TimmBackbone(first, more_specs=rest)
