"""Helpers every family shares: tokens from maps and sequences, prefix inference, weights files."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from usae.backbones.base import channels_first, infer_prefix, load_state_dict_file, split_tokens
from usae.config import BackboneSpec

SPEC = BackboneSpec(key="m", library="torchvision", name="toy")


def test_feature_maps_and_sequences_become_prefix_and_patch_tokens():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    prefix, patches = split_tokens(fmap, 0, "models.m")
    assert prefix.shape == (2, 0, 3) and torch.equal(patches[0, 1], fmap[0, :, 0, 1])  # row-major
    seq = torch.randn(2, 5, 4)
    prefix, patches = split_tokens(seq, 1, "models.m")
    assert torch.equal(prefix, seq[:, :1]) and torch.equal(patches, seq[:, 1:])
    with pytest.raises(ValueError, match=r"models.m: the layer's output has shape \(2, 4\)"):
        split_tokens(torch.zeros(2, 4), 0, "models.m")


def test_channels_last_maps_are_recognised_by_their_shape():
    nchw = torch.randn(1, 8, 7, 7)
    assert channels_first(nchw) is nchw
    assert torch.equal(channels_first(nchw.permute(0, 2, 3, 1)), nchw)
    cube = torch.randn(1, 7, 7, 7)  # C == H == W: taken as NCHW
    assert channels_first(cube) is cube


@pytest.mark.parametrize(("n_tokens", "size", "expected"), [(257, 224, 1), (261, 224, 5), (256, 224, 0), (50, 224, 1)])
def test_prefix_counts_of_real_vits(n_tokens, size, expected):
    assert infer_prefix(n_tokens, size, "models.m") == expected


@pytest.mark.parametrize(("n_tokens", "size", "found"), [(19, 32, r"counts \[3, 15\] all fit"), (40, 224, "no count")])
def test_ambiguous_or_impossible_prefix_asks_for_the_setting(n_tokens, size, found):
    with pytest.raises(ValueError, match=rf"{found}.*set models.m.prefix_tokens"):
        infer_prefix(n_tokens, size, "models.m")


def test_nested_and_safetensors_state_dicts_load(tmp_path):
    model = nn.Linear(3, 2)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "nested.pt")
    save_file(state, str(tmp_path / "flat.safetensors"))
    for name in ("nested.pt", "flat.safetensors"):
        target = nn.Linear(3, 2)
        load_state_dict_file(target, tmp_path / name, SPEC)
        assert torch.equal(target.weight, state["weight"])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt for torchvision model 'toy' does not hold a state dict"):
        load_state_dict_file(nn.Linear(3, 2), tmp_path / "list.pt", SPEC)
