"""transformers adapter: offline tiny models, layouts, final/intermediate layers, preprocessing."""

import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from usae.backbones import TokenLayout, create_backbone  # noqa: E402
from usae.backbones.hf_backbone import IMAGENET_MEAN, IMAGENET_STD, HFBackbone  # noqa: E402
from usae.config import BackboneSpec  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VIT = {"model_type": "vit", **TINY, "image_size": 32, "patch_size": 8}


def _spec(hf_config: dict, image_size: int = 32, layer="final", **extra) -> BackboneSpec:
    return BackboneSpec(key="m", library="transformers", name=f"tiny-{hf_config['model_type']}",
                        pretrained=False, layer=layer, image_size=image_size, hf_config=hf_config,
                        **extra)


def _pixels(backbone, n: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    size = backbone.preprocessing.image_size
    return torch.randn(n, 3, size, size)


def _module(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    """The submodule whose name ends with ``suffix`` (module paths differ across versions)."""
    (found,) = [m for n, m in model.named_modules() if n == suffix or n.endswith("." + suffix)]
    return found


def _blocks(model: torch.nn.Module, depth: int) -> torch.nn.ModuleList:
    """The transformer block list (``layers`` or ``encoder.layer``, depending on the version)."""
    (found,) = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    return found


def _run(backbone, x):
    with torch.inference_mode():
        tokens = backbone.forward_tokens(x)
        out = backbone.model(pixel_values=x, output_hidden_states=True)
    return tokens, out


def test_vit_final_is_last_hidden_state():
    backbone = create_backbone(_spec(VIT))
    assert isinstance(backbone, HFBackbone)
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(4, 4), d_model=32)
    x = _pixels(backbone)
    (prefix, patches), out = _run(backbone, x)
    assert prefix.shape == (2, 1, 32) and patches.shape == (2, 16, 32)
    torch.testing.assert_close(prefix, out.last_hidden_state[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(patches, out.last_hidden_state[:, 1:], rtol=0, atol=0)
    # ViT's last_hidden_state is the final layernorm of the last block output.
    final_norm = _module(backbone.model, "layernorm")
    torch.testing.assert_close(out.last_hidden_state, final_norm(out.hidden_states[-1]))


@pytest.mark.parametrize("layer", [0, 1])
def test_vit_block_equals_hidden_state_and_hook(layer):
    backbone = create_backbone(_spec(VIT, layer=layer))
    x = _pixels(backbone)
    seen = []
    handle = _blocks(backbone.model, 2)[layer].register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        (prefix, patches), out = _run(backbone, x)
    finally:
        handle.remove()
    block_out = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    torch.testing.assert_close(patches, out.hidden_states[layer + 1][:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(prefix, block_out[:, :1])
    torch.testing.assert_close(patches, block_out[:, 1:])


RESNET = {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]}


def test_a_cnn_runs_channels_last_with_the_contiguous_tokens_and_a_vit_as_it_is():
    """A convolutional model (more than one convolution) keeps its 4-D weights channels-last; a ViT's one
    patch embedding gains nothing and stays contiguous."""
    backbone = create_backbone(_spec(RESNET, image_size=64))
    kernels = [p for p in backbone.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert backbone.channels_last and kernels
    assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in kernels)
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(8, 8), d_model=32)
    x = _pixels(backbone)
    with torch.inference_mode():
        patches = backbone.forward_tokens(x)[1]
        backbone.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(patches, backbone.forward_tokens(x)[1], rtol=1e-4, atol=1e-5)
    vit = create_backbone(_spec(VIT))
    assert not vit.channels_last and all(p.is_contiguous() for p in vit.parameters())


def test_layer_past_depth_raises():
    with pytest.raises(ValueError, match=r"layer 2 .*tiny-vit.*depth 2"):
        create_backbone(_spec(VIT, layer=2))


def test_hf_config_with_pretrained_raises():
    spec = BackboneSpec(key="m", library="transformers", name="x", pretrained=True, hf_config=VIT)
    with pytest.raises(ValueError, match="pretrained"):
        create_backbone(spec)


def test_hf_config_without_model_type_raises():
    spec = BackboneSpec(key="m", library="transformers", name="x", pretrained=False,
                        hf_config={"hidden_size": 32})
    with pytest.raises(ValueError, match="model_type"):
        create_backbone(spec)


def test_config_image_size_follows_spec():
    backbone = create_backbone(_spec({**VIT, "image_size": 224}, image_size=48))
    assert backbone.config.image_size == 48
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(6, 6), d_model=32)


def test_dinov2_with_registers():
    cfg = {"model_type": "dinov2_with_registers", **TINY, "patch_size": 14, "num_register_tokens": 4}
    cfg.pop("intermediate_size")
    backbone = create_backbone(_spec(cfg, image_size=56))
    assert backbone.layout == TokenLayout(n_prefix=5, grid=(4, 4), d_model=32)
    x = _pixels(backbone)
    (prefix, patches), out = _run(backbone, x)
    torch.testing.assert_close(prefix, out.last_hidden_state[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(patches, out.last_hidden_state[:, 5:], rtol=0, atol=0)
    final_norm = _module(backbone.model, "layernorm")
    torch.testing.assert_close(out.last_hidden_state, final_norm(out.hidden_states[-1]))


def test_siglip_vision_model_has_no_prefix_and_post_norm():
    cfg = {"model_type": "siglip_vision_model", **TINY, "patch_size": 8}
    backbone = create_backbone(_spec(cfg))
    assert backbone.layout == TokenLayout(n_prefix=0, grid=(4, 4), d_model=32)
    x = _pixels(backbone)
    (prefix, patches), out = _run(backbone, x)
    assert prefix.shape == (2, 0, 32)
    torch.testing.assert_close(patches, out.last_hidden_state, rtol=0, atol=0)
    post = _module(backbone.model, "post_layernorm")
    torch.testing.assert_close(patches, post(out.hidden_states[-1]))


def test_clip_keeps_vision_tower_and_applies_post_layernorm():
    cfg = {"model_type": "clip", "vision_config": {**TINY, "patch_size": 8},
           "text_config": {**TINY, "num_hidden_layers": 1}}
    backbone = create_backbone(_spec(cfg))
    assert not any("text" in name for name, _ in backbone.named_parameters())
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(4, 4), d_model=32)
    x = _pixels(backbone)
    (prefix, patches), out = _run(backbone, x)
    # CLIP's last_hidden_state skips post_layernorm (only the pooled token gets it).
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    normed = _module(backbone.model, "post_layernorm")(out.last_hidden_state)
    torch.testing.assert_close(prefix, normed[:, :1])
    torch.testing.assert_close(patches, normed[:, 1:])


def test_clip_block_layer_is_raw_hidden_state():
    cfg = {"model_type": "clip", "vision_config": {**TINY, "patch_size": 8}}
    backbone = create_backbone(_spec(cfg, layer=1))
    x = _pixels(backbone)
    (prefix, patches), out = _run(backbone, x)
    torch.testing.assert_close(patches, out.hidden_states[2][:, 1:], rtol=0, atol=0)


def test_imagenet_default_normalisation_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="usae.backbones.hf_backbone"):
        backbone = create_backbone(_spec(VIT))
    assert backbone.preprocessing.mean == IMAGENET_MEAN
    assert backbone.preprocessing.std == IMAGENET_STD
    assert backbone.preprocessing.image_size == 32
    assert any("ImageNet" in r.getMessage() for r in caplog.records)


def test_spec_normalisation_override(caplog):
    with caplog.at_level(logging.WARNING, logger="usae.backbones.hf_backbone"):
        backbone = create_backbone(_spec(VIT, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert backbone.preprocessing.mean == (0.5, 0.5, 0.5)
    assert backbone.preprocessing.std == (0.25, 0.25, 0.25)
    assert not caplog.records


def test_frozen_and_float32():
    backbone = create_backbone(_spec(VIT))
    assert not backbone.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in backbone.parameters())


@pytest.fixture
def saved_vit(tmp_path):
    """A tiny ViT (32 px native) and its image processor saved as a local 'hub' folder."""
    import transformers

    config = transformers.AutoConfig.for_model(**VIT)
    torch.manual_seed(1)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path)
    processor = transformers.ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.7, 0.8, 0.9])
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_pretrained_from_local_folder(saved_vit):
    import transformers

    spec = BackboneSpec(key="m", library="transformers", name=str(saved_vit), pretrained=True,
                        image_size=32)
    backbone = create_backbone(spec)
    assert backbone.preprocessing.mean == pytest.approx((0.1, 0.2, 0.3))
    assert backbone.preprocessing.std == pytest.approx((0.7, 0.8, 0.9))
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(4, 4), d_model=32)
    reference = transformers.AutoModel.from_pretrained(saved_vit).eval()
    x = _pixels(backbone)
    with torch.inference_mode():
        _, patches = backbone.forward_tokens(x)
        expected = reference(pixel_values=x).last_hidden_state[:, 1:]
    torch.testing.assert_close(patches, expected, rtol=0, atol=0)


def test_pretrained_at_other_size_interpolates_position_embeddings(saved_vit):
    spec = BackboneSpec(key="m", library="transformers", name=str(saved_vit), pretrained=True,
                        image_size=48, std=(0.5, 0.5, 0.5))
    backbone = create_backbone(spec)
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(6, 6), d_model=32)
    assert backbone.preprocessing.mean == pytest.approx((0.1, 0.2, 0.3))  # processor fills the gap
    assert backbone.preprocessing.std == (0.5, 0.5, 0.5)


def test_random_init_from_named_config(saved_vit):
    spec = BackboneSpec(key="m", library="transformers", name=str(saved_vit), pretrained=False,
                        image_size=64, kwargs={"num_hidden_layers": 1})
    backbone = create_backbone(spec)
    assert backbone.depth == 1
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(8, 8), d_model=32)


def test_layer_names_are_refused_with_what_works():
    with pytest.raises(ValueError, match=r"models.m.layer = 'encoder.layer.0': library transformers takes 'final' "
                                         r"or a block index"):
        create_backbone(_spec(VIT, layer="encoder.layer.0"))


def test_weights_folder_loads_with_the_name_as_a_label(saved_vit):
    import transformers

    spec = BackboneSpec(key="m", library="transformers", name="google/vit-tiny-label-only", image_size=32,
                        weights=str(saved_vit))
    backbone = create_backbone(spec)
    assert backbone.preprocessing.mean == pytest.approx((0.1, 0.2, 0.3))  # the folder's image processor
    assert backbone.describe()["weights"]["origin"] == f"file:{saved_vit}"
    reference = transformers.AutoModel.from_pretrained(saved_vit).eval()
    x = _pixels(backbone)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.forward_tokens(x)[1], reference(pixel_values=x).last_hidden_state[:, 1:],
                                   rtol=0, atol=0)


def test_weights_folder_missing_tensors_is_refused(saved_vit):
    from safetensors.torch import load_file, save_file

    state = load_file(saved_vit / "model.safetensors")
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, saved_vit / "model.safetensors")
    spec = BackboneSpec(key="m", library="transformers", name="x", image_size=32, weights=str(saved_vit))
    with pytest.raises(ValueError, match=f"models.m: the weights in {saved_vit} lack 16 of the model's tensors "
                                         r"\(e.g. \['.*layers?\.1\..*\]\); they would stay random"):
        create_backbone(spec)


def test_weights_must_be_a_folder_and_take_no_key_format(saved_vit):
    file_spec = BackboneSpec(key="m", library="transformers", name="x", weights=str(saved_vit / "config.json"))
    with pytest.raises(ValueError, match="models.m.weights: transformers models load a folder written by "
                                         "save_pretrained .* is a file"):
        create_backbone(file_spec)
    fmt_spec = BackboneSpec(key="m", library="transformers", name="x", weights=str(saved_vit),
                            weights_format="efficientnet_pytorch")
    with pytest.raises(ValueError, match="models.m.weights_format: transformers models load a save_pretrained"):
        create_backbone(fmt_spec)


def test_weights_folder_gives_the_shapes_before_running(saved_vit):
    from usae.backbones.geometry import probe_geometry

    spec = BackboneSpec(key="m", library="transformers", name="x", image_size=48, weights=str(saved_vit))
    assert probe_geometry(spec) == TokenLayout(n_prefix=1, grid=(6, 6), d_model=32)


CLIP = {"model_type": "clip", "vision_config": {**TINY, "patch_size": 8}}


@pytest.mark.parametrize(("config", "layers"), [
    (VIT, ["final", 1, 0]),
    (CLIP, [0, "final", 1]),  # 'final' gets post_layernorm also from the pass that returns the blocks
])
def test_one_call_gives_each_layer_its_own_tokens(same_as_alone, config, layers):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layer_set = same_as_alone(_spec(config), layers, x)
    assert [layer_set.describe(i)["layer"] for i in range(3)] == [
        "final" if layer == "final" else f"block{layer}" for layer in layers]
    assert HFBackbone.shares_forward(layer_set.specs)


@pytest.mark.parametrize(("layers", "message"), [
    ([0, 2], r"models.m1: layer 2 is out of range for transformers model 'tiny-vit', which has depth 2"),
    (["final", "encoder.layer.0"], r"models.m1.layer = 'encoder.layer.0': library transformers takes 'final'"),
])
def test_a_bad_layer_among_several_names_its_model(layers_of, layers, message):
    first, *rest = layers_of(_spec(VIT), layers)
    with pytest.raises(ValueError, match=message):
        create_backbone(first, more_specs=tuple(rest))
