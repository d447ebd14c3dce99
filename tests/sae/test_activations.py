"""Sparse activations: every ACTIVATIONS entry, called with the one signature, against its definition."""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig
from usae.registry import ACTIVATIONS
from usae.sae.activations import batch_topk, topk
from usae.sae.model import USAE

N, M, K = 6, 10, 3


def pre(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, M, generator=torch.Generator().manual_seed(seed))


def test_registry_names_the_entries():
    assert ACTIVATIONS.get("topk") is topk and ACTIVATIONS.get("batchtopk") is batch_topk
    assert not topk.padded and batch_topk.padded


@pytest.mark.parametrize("name", ACTIVATIONS.names())
@pytest.mark.parametrize("training", [True, False])
def test_every_entry_has_the_signature(name, training):
    activation = ACTIVATIONS.get(name, setting="sae.activation")
    values, indices = activation(pre(), K, threshold=torch.zeros(()), training=training)
    assert values.shape == indices.shape and values.shape[0] == N
    assert (values.shape[1] > K) == activation.padded and values.shape[1] >= K
    assert indices.dtype == torch.long and (values >= 0).all()
    assert values.requires_grad is False


def test_topk_is_relu_of_the_top_k():
    x = pre()
    values, indices = topk(x, K, threshold=torch.zeros(()), training=True)
    relu = F.relu(x)
    top = relu.topk(K, dim=1).indices
    expected = torch.zeros_like(x).scatter_(1, top, relu.gather(1, top))
    torch.testing.assert_close(torch.zeros_like(x).scatter_(1, indices, values), expected)


def test_batch_topk_moves_its_threshold_only_in_training():
    x, threshold = pre(), torch.zeros(())
    batch_topk(x, K, threshold=threshold, training=False)
    assert threshold.item() == 0.0
    values, _ = batch_topk(x, K, threshold=threshold, training=True)
    kth = F.relu(x).flatten().topk(K * N).values.min()
    torch.testing.assert_close(threshold, 0.01 * kth)
    assert 0 < int((values > 0).sum()) <= K * N


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_the_model_encodes_with_the_configured_entry(name):
    model = USAE({"vit": 8}, SAEConfig(n_latents=16, k=K, aux_k=0, activation=name))
    assert model.activation is ACTIVATIONS.get(name)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    expected = model.activation(model.pre_codes("vit", x), K, threshold=torch.zeros(()), training=model.training)
    codes = model.encode_sparse("vit", x)
    assert torch.equal(codes.values, expected[0]) and torch.equal(codes.indices, expected[1])
