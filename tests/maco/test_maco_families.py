"""MACO through every backbone family that has gradients: timm, transformers, torchvision and ONNX
(converted by onnx2torch). Tiny random networks: this checks the gradient path, not the science."""

import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from usae.backbones.registry import create_backbone  # noqa: E402
from usae.config import BackboneSpec, MacoConfig, SAEConfig  # noqa: E402
from usae.maco.objective import ConceptReader, mean_over_tokens  # noqa: E402
from usae.maco.optimize import maximise  # noqa: E402
from usae.maco.spectrum import one_over_f  # noqa: E402
from usae.sae.model import USAE  # noqa: E402

torch.set_num_threads(1)


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c2(torch.relu(self.c1(x))))


def onnx_spec(tmp_path) -> BackboneSpec:
    pytest.importorskip("onnx2torch")
    path = tmp_path / "two_convs.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoConvs().eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["out"])
    return BackboneSpec(key="m", library="onnx", name="two_convs", layer="final", image_size=32, weights=str(path))


SPECS = {
    "timm": lambda _: BackboneSpec(key="m", name="vit_small_patch16_224", pretrained=False, image_size=32,
                                   kwargs={"depth": 1, "embed_dim": 24, "num_heads": 2}),
    "transformers": lambda _: BackboneSpec(
        key="m", library="transformers", name="tiny-vit", pretrained=False, image_size=32,
        hf_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "intermediate_size": 64, "image_size": 32, "patch_size": 8}),
    "torchvision": lambda _: BackboneSpec(key="m", library="torchvision", name="resnet18", pretrained=False,
                                          layer="layer1", image_size=32),
    "onnx": onnx_spec,
}


@pytest.mark.parametrize("family", sorted(SPECS))
def test_gradients_reach_the_pixels_and_the_objective_rises(family, tmp_path):
    backbone = create_backbone(SPECS[family](tmp_path))
    width = backbone.layout.d_model
    reader = ConceptReader("m", backbone, USAE({"m": width}, SAEConfig(n_latents=16, k=2, aux_k=0), seed=0))
    pixels = torch.rand(2, 3, 32, 32, requires_grad=True)
    reader(pixels, torch.tensor([1, 2])).mean().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0, family
    cfg = MacoConfig(steps=6, lr=0.2, crops=1, crop_min=1.0, crop_max=1.0, noise=0.0, seed=1)
    images = maximise(reader, [1, 2], one_over_f(40, colour_scale=0.2, mean=0.5), mean_over_tokens, cfg=cfg, device=torch.device("cpu"))
    assert images.shape == (2, 3, 40, 40) and torch.isfinite(images).all()
    start = maximise(reader, [1, 2], one_over_f(40, colour_scale=0.2, mean=0.5), mean_over_tokens, cfg=MacoConfig(**{**vars(cfg), "steps": 1}),
                     device=torch.device("cpu"))
    resize = lambda x: torch.nn.functional.interpolate(x, size=32, mode="bilinear", antialias=True)
    with torch.no_grad():
        after = mean_over_tokens(reader(resize(images), torch.tensor([1, 2])))
        before = mean_over_tokens(reader(resize(start), torch.tensor([1, 2])))
    assert (after > before).all(), (family, before, after)
