"""Local checkpoints for timm models: strict round trips, classifier heads, folders, damaged files."""

import hashlib

import pytest
import safetensors.torch
import timm
import torch

from usae.backbones import create_backbone
from usae.config import BackboneSpec

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
NAME = "vit_small_patch16_224"


def _saved(path, num_classes=0, seed=3, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(NAME, img_size=64, num_classes=num_classes, **{**TINY, **kwargs})
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    return model.eval()


def _spec(weights, **extra):
    return BackboneSpec(key="m", name=NAME, image_size=64, kwargs=TINY, weights=str(weights), **extra)


def _tokens(module, x):
    with torch.inference_mode():
        return module.forward_features(x)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_saved_model_comes_back_identical(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    reference = _saved(path)
    backbone = create_backbone(_spec(path))
    assert backbone.model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(backbone.model.state_dict().values(),
                                                  reference.state_dict().values()))
    x = torch.randn(2, 3, 64, 64)
    prefix, patches = backbone.forward_tokens(x)
    torch.testing.assert_close(patches, _tokens(reference, x)[:, 1:], rtol=0, atol=0)
    assert backbone.describe()["weights"] == {"origin": f"file:{path}",
                                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_a_checkpoint_with_a_classifier_loads_strictly_and_the_head_is_dropped(tmp_path):
    reference = _saved(tmp_path / "w.pth", num_classes=5)
    backbone = create_backbone(_spec(tmp_path / "w.pth"))
    assert isinstance(backbone.model.head, torch.nn.Identity)
    assert "state_dict" not in backbone.model.pretrained_cfg  # no second copy of the weights is kept
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(backbone.forward_tokens(x)[1], _tokens(reference, x)[:, 1:], rtol=0, atol=0)


def test_a_folder_with_model_safetensors_is_read(tmp_path):
    _saved(tmp_path / "model.safetensors")
    assert create_backbone(_spec(tmp_path)).weights.path == tmp_path
    (tmp_path / "model.safetensors").rename(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"models.m.weights: the folder .* holds none of \['model.safetensors', "
                                         r"'pytorch_model.bin'\]"):
        create_backbone(_spec(tmp_path))


def test_a_checkpoint_of_another_shape_names_model_file_and_formats(tmp_path):
    _saved(tmp_path / "w.pth", depth=3)
    with pytest.raises(ValueError) as err:
        create_backbone(_spec(tmp_path / "w.pth"))
    text = str(err.value)
    assert text.startswith(f"models.m: the checkpoint {tmp_path}/w.pth (file:{tmp_path}/w.pth) does not fit timm "
                           f"model '{NAME}'; if the checkpoint uses another key layout, set models.m.weights_format "
                           "(registered: ['efficientnet_pytorch'])")
    assert 'Unexpected key(s) in state_dict: "blocks.2.norm1.weight"' in text


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    _saved(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"models.m: cannot read {path} \\(file:{path}\\) as a checkpoint .*; the "
                                         "file is damaged \\(an interrupted copy or download\\?\\) or not a "
                                         "PyTorch/safetensors state dict"):
        create_backbone(_spec(path))


def test_a_local_checkpoint_at_another_size_goes_through_timms_filter(tmp_path):
    """timm resamples a ViT's position embeddings to the input size, as for its released weights."""
    reference = _saved(tmp_path / "w.pth")
    backbone = create_backbone(BackboneSpec(key="m", name=NAME, image_size=96, kwargs=TINY,
                                            weights=str(tmp_path / "w.pth")))
    assert backbone.layout.grid == (6, 6)
    assert torch.equal(backbone.model.blocks[1].mlp.fc2.weight, reference.blocks[1].mlp.fc2.weight)


def test_random_and_hub_specs_record_where_their_weights_come_from():
    spec = BackboneSpec(key="m", name=NAME, pretrained=False, image_size=64, kwargs=TINY)
    assert create_backbone(spec).describe()["weights"] == {"origin": "random", "sha256": None}
