"""Checkpoint key converters: the efficientnet_pytorch layout renamed for timm, detection, refusals."""

import pytest
import timm
import torch

from usae.registry import WEIGHT_FORMATS
from usae.weights.formats import EFFICIENTNET_PYTORCH, convert_keys, efficientnet_pytorch_to_timm

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _lukemelas_lite(widths=(16, 24, 24, 40)):
    """Keys and shapes as efficientnet_pytorch saves a Lite model: block 0 without expansion, then stages."""
    state = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_fc.weight": torch.zeros(10, 1280),
             "_fc.bias": torch.zeros(10), "_conv_head.weight": torch.zeros(1280, widths[-1], 1, 1)}
    state.update({f"_bn0.{t}": torch.zeros(32) for t in BN} | {f"_bn1.{t}": torch.zeros(1280) for t in BN})
    for i, width in enumerate(widths):
        block = f"_blocks.{i}."
        if i > 0:
            state[block + "_expand_conv.weight"] = torch.zeros(6 * widths[i - 1], widths[i - 1], 1, 1)
        state[block + "_depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
        state[block + "_project_conv.weight"] = torch.zeros(width, 1, 1, 1)
        state.update({f"{block}_bn{k}.{t}": torch.zeros(1) for k in ((1, 2) if i == 0 else (0, 1, 2)) for t in BN})
    return state


def test_blocks_are_grouped_into_stages_by_output_width():
    out = efficientnet_pytorch_to_timm(_lukemelas_lite())
    assert {k.rsplit(".", 1)[0] for k in out if k.startswith("blocks.")} == {
        "blocks.0.0.conv_dw", "blocks.0.0.conv_pw", "blocks.0.0.bn1", "blocks.0.0.bn2",
        *(f"blocks.{s}.{j}.{m}" for s, j in ((1, 0), (1, 1), (2, 0))
          for m in ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"))}
    assert {k for k in out if not k.startswith("blocks.")} == {
        "conv_stem.weight", "classifier.weight", "classifier.bias", "conv_head.weight",
        *(f"bn{i}.{t}" for i in (1, 2) for t in BN)}
    assert len(out) == len(_lukemelas_lite())


def test_the_conversion_fits_timm_lite0_exactly():
    """Renaming timm's own Lite0 keys back to efficientnet_pytorch's and converting gives the original dict."""
    model = timm.create_model("tf_efficientnet_lite0")
    reverse = _timm_to_lukemelas(model.state_dict())
    assert efficientnet_pytorch_to_timm(reverse).keys() == model.state_dict().keys()
    model.load_state_dict(efficientnet_pytorch_to_timm(reverse), strict=True)


def _timm_to_lukemelas(state):
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
          "conv_pwl": "_project_conv", "bn3": "_bn2"}
    flat = {key: i for i, key in enumerate(dict.fromkeys(k.rsplit(".", 2)[0] for k in state if k.startswith("blocks.")))}
    out = {}
    for key, value in state.items():
        if not key.startswith("blocks."):
            module, rest = key.split(".", 1)
            out[f"{top[module]}.{rest}"] = value
            continue
        block, module, tensor = key.rsplit(".", 2)
        names = ir if f"{block}.conv_pwl.weight" in state else ds
        out[f"_blocks.{flat[block]}.{names[module]}.{tensor}"] = value
    return out


def test_a_recognised_layout_is_converted_unless_another_library_is_asked():
    state = _lukemelas_lite()
    out, used = convert_keys(state, None, "models.m", "timm")
    assert used == "efficientnet_pytorch" and "conv_stem.weight" in out
    assert convert_keys(state, None, "models.m", "transformers") == (state, None)
    native = {"conv_stem.weight": torch.zeros(1)}
    assert convert_keys(native, None, "models.m", "timm") == (native, None)


def test_a_chosen_format_that_does_not_fit_names_the_setting():
    with pytest.raises(ValueError, match=r"models.m.weights_format = 'efficientnet_pytorch' does not fit the "
                                         r"checkpoint, whose keys begin \['conv_stem.weight'\]"):
        convert_keys({"conv_stem.weight": torch.zeros(1)}, "efficientnet_pytorch", "models.m", "timm")
    with pytest.raises(ValueError, match="converts checkpoints for timm models, not transformers"):
        convert_keys(_lukemelas_lite(), "efficientnet_pytorch", "models.m", "transformers")


def test_the_format_is_registered_by_name():
    assert WEIGHT_FORMATS.get("efficientnet_pytorch") is EFFICIENTNET_PYTORCH
