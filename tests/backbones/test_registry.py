"""Registry of backbone families: registration, lookup and freezing."""

import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from usae.backbones import (Backbone, Preprocessing, TokenLayout, create_backbone,  # noqa: E402
                            list_backbones, register_backbone)
from usae.config import BackboneSpec  # noqa: E402
from usae.registry import BACKBONES  # noqa: E402


@pytest.fixture
def clean_registry(monkeypatch):
    """A registry copy, so test registrations do not leak into other tests."""
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))


class _Toy(Backbone):
    """2x2 grid of 4-d tokens from a conv, plus one mean-pooled prefix token."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(3, 4, kernel_size=spec.image_size // 2, stride=spec.image_size // 2)
        self.drop = nn.Dropout(0.5)
        self.preprocessing = Preprocessing(image_size=spec.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.layout = self._probe_layout()

    def forward_tokens(self, pixels):
        patches = self.drop(self.conv(pixels)).flatten(2).transpose(1, 2)
        return patches.mean(1, keepdim=True), patches


def test_a_family_defines_one_forward_and_gets_the_other():
    class Layers(_Toy):  # a family that shares its pass between layers defines forward_layers only
        forward_tokens = Backbone.forward_tokens

        def forward_layers(self, pixels):
            return [_Toy.forward_tokens(self, pixels)]

    spec = BackboneSpec(key="m", library="timm", name="x", pretrained=False, image_size=32)
    torch.manual_seed(0)
    toy = _Toy(spec).eval()
    torch.manual_seed(0)
    layers = Layers(spec).eval()
    pixels = torch.rand(2, 3, 32, 32)
    for got, want in zip(layers.forward_tokens(pixels), toy.forward_layers(pixels)[0]):
        torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="Neither must define forward_tokens .* or forward_layers"):
        class Neither(Backbone):
            pass


def test_builtin_libraries_are_registered():
    assert {"timm", "transformers"} <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


def test_unknown_library_lists_available():
    # The config refuses an unregistered library when it is read, before any job.
    with pytest.raises(ValueError, match="nope") as err:
        BackboneSpec(key="m", library="nope", name="x", pretrained=False)
    assert "timm" in str(err.value) and "transformers" in str(err.value)


def test_library_unregistered_after_the_config_was_read_lists_available(clean_registry):
    register_backbone("nope")(_Toy)
    spec = BackboneSpec(key="m", library="nope", name="x", pretrained=False)
    del BACKBONES._entries["nope"]
    with pytest.raises(ValueError, match="nope") as err:
        create_backbone(spec)
    assert "timm" in str(err.value) and "transformers" in str(err.value)


def test_importing_backbones_or_config_imports_neither_timm_nor_transformers():
    code = ("import sys, usae.backbones, usae.config, usae.config.generate; "
            "print(sorted(m for m in ('timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert set(list_backbones()) >= {"timm", "transformers"}  # declared all the same


def test_duplicate_registration_raises(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("timm")(_Toy)
    register_backbone("toy")(_Toy)
    with pytest.raises(ValueError, match="'toy'"):
        register_backbone("toy")(_Toy)


def test_register_rejects_non_backbone_and_empty_name(clean_registry):
    with pytest.raises(ValueError, match="not a Backbone"):
        register_backbone("thing")(nn.Linear)
    with pytest.raises(ValueError):
        register_backbone("")


def test_custom_backbone_is_built_frozen_and_in_eval(clean_registry):
    assert register_backbone("toy")(_Toy) is _Toy
    assert "toy" in list_backbones()
    backbone = create_backbone(BackboneSpec(key="t", library="toy", name="toy", pretrained=False,
                                            image_size=32))
    assert isinstance(backbone, _Toy)
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())
    assert backbone.layout == TokenLayout(n_prefix=1, grid=(2, 2), d_model=4)
    x = torch.randn(2, 3, 32, 32)
    a, b = backbone(x), backbone(x)  # dropout is off in eval mode
    assert torch.equal(a[1], b[1])
    desc = backbone.describe()
    assert desc["library"] == "toy" and desc["layout"] == {"n_prefix": 1, "grid": [2, 2], "d_model": 4}
    assert "kwargs" not in desc  # none given: recorded as before kwargs were recorded


def test_timm_backbone_is_frozen():
    spec = BackboneSpec(key="v", name="vit_small_patch16_224", pretrained=False, image_size=32,
                        kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2})
    backbone = create_backbone(spec)
    assert not backbone.training
    assert all(not p.requires_grad for p in backbone.parameters())
    # what it was built with is recorded: a 1-block ViT is another backbone than the 12-block one
    assert backbone.describe()["kwargs"] == {"depth": 1, "embed_dim": 16, "num_heads": 2}


def test_a_family_that_cannot_load_weights_refuses_them_and_records_what_it_built(clean_registry, tmp_path):
    register_backbone("toy")(_Toy)
    (tmp_path / "w.pth").write_bytes(b"x")
    spec = BackboneSpec(key="m", library="toy", name="x", image_size=16, weights=str(tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="models.m.weights: library 'toy' cannot load local weights"):
        create_backbone(spec)
    built = create_backbone(BackboneSpec(key="m", library="toy", name="x", pretrained=False, image_size=16))
    assert built.describe()["weights"] == {"origin": "random", "sha256": None}
