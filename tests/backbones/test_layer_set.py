"""LayerSet: the models of one extraction job (same model, other layers) and how many backbones serve them."""

from dataclasses import replace

import pytest
import torch

from usae.backbones.layer_set import LayerSet
from usae.config import BackboneSpec

SPEC = BackboneSpec(key="a", library="torchvision", name="resnet18", layer="layer2", image_size=64, pretrained=False)


def test_models_that_differ_in_more_than_the_layer_are_refused():
    others = [replace(SPEC, key="b", layer="layer3"), replace(SPEC, key="c", image_size=32),
              replace(SPEC, key="d", name="resnet34")]
    with pytest.raises(ValueError, match=r"models \['c', 'd'\] differ from models.a in more than the layer; one "
                                         r"extraction job runs one model"):
        LayerSet([SPEC, *others])
    with pytest.raises(ValueError, match="a layer set needs at least one model"):
        LayerSet([])


def test_a_set_reports_its_layers_in_the_order_asked(layers_of):
    layer_set = LayerSet(layers_of(SPEC, ["layer3", "layer1", "final"]))
    assert layer_set.name == "a0 (+2 layers)" and LayerSet([SPEC]).name == "a"
    assert [s.key for s in layer_set.specs] == ["a0", "a1", "a2"]
    assert [layout.grid for layout in layer_set.layouts] == [(4, 4), (16, 16), (2, 2)]
    assert [layer_set.describe(i)["node"] for i in range(3)] == ["layer3", "layer1", "layer4.1.relu_1"]
    assert layer_set.preprocessing.image_size == 64
    with pytest.raises(IndexError):
        layer_set.describe(3)
    with torch.inference_mode():
        tokens = layer_set(torch.zeros(2, 3, 64, 64))
    assert [patches.shape for _, patches in tokens] == [(2, 16, 256), (2, 256, 64), (2, 4, 512)]
