"""SPARC's shared-index codes (``USAE.encode_shared``): one TopK over the sum of every model's
pre-activations, the same latents for every model, each keeping its own values; a hand-checked
example, gradients against the definition, the sparse-gradient path and its fallbacks, errors."""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig
from usae.sae.model import USAE

DIMS = {"vit": 8, "dino": 12, "clip": 10}
M, K, N = 32, 4, 24


def make(dims=DIMS, **overrides) -> USAE:
    cfg = SAEConfig(**{"n_latents": M, "k": K, "aux_k": 0, **overrides})
    model = USAE(dims, cfg, seed=0).train()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero biases: the pre-bias fold is part of what is checked
        for name in dims:
            model.b_dec[name].normal_(generator=gen)
            model.b_enc[name].normal_(std=0.1, generator=gen)
    return model


def batch(dims=DIMS, seed=1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(N, d, generator=gen) for name, d in dims.items()}


def by_definition(model: USAE, acts: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(values, indices) per model from the definition, with plain autograd through every pre-activation."""
    pre = {n: (x - model.b_dec[n]) @ model.W_enc[n] + model.b_enc[n] for n, x in acts.items()}
    indices = sum(p.detach() for p in pre.values()).topk(model.cfg.k, dim=1).indices
    return {n: (F.relu(p.gather(1, indices)), indices) for n, p in pre.items()}


def test_hand_example_same_indices_own_values():
    """Identity encoders, zero biases: pre = the activations themselves, so the sums are by hand.

    Token 0: pre_a = [3, 0.5, 1, -1], pre_b = [-2, 2.5, 0.5, 4.5], sum = [1, 3, 1.5, 3.5]: latents
    {3, 1}, where model a alone would pick {0, 2}; a keeps ReLU(-1) = 0 at 3 and 0.5 at 1.
    Token 1: pre_a = [0.2, 2, -3, 1], pre_b = [1, -1, -1, 0.5], sum = [1.2, 1, -4, 1.5]: latents
    {3, 0}, where model a alone would pick {1, 3}.
    """
    model = USAE({"a": 4, "b": 4}, SAEConfig(n_latents=4, k=2, aux_k=0), seed=0)
    with torch.no_grad():
        for name in ("a", "b"):
            model.W_enc[name].copy_(torch.eye(4))
    acts = {"a": torch.tensor([[3.0, 0.5, 1.0, -1.0], [0.2, 2.0, -3.0, 1.0]]),
            "b": torch.tensor([[-2.0, 2.5, 0.5, 4.5], [1.0, -1.0, -1.0, 0.5]])}
    codes = model.encode_shared(acts)
    want_indices = [{3, 1}, {3, 0}]
    want = {"a": [{3: 0.0, 1: 0.5}, {3: 1.0, 0: 0.2}], "b": [{3: 4.5, 1: 2.5}, {3: 0.5, 0: 1.0}]}
    for name in ("a", "b"):
        assert torch.equal(codes[name].indices, codes["a"].indices)
        for token in range(2):
            got = dict(zip(codes[name].indices[token].tolist(), codes[name].values[token].tolist()))
            assert set(got) == want_indices[token]
            assert got == pytest.approx(want[name][token])
    # Alone, model a picks its own two largest: {0, 2} for token 0, not the shared {1, 3}.
    assert set(model.encode_sparse("a", acts["a"]).indices[0].tolist()) == {0, 2}


def test_summing_or_averaging_selects_the_same_latents():
    model, acts = make(), batch()
    pre = [model.pre_codes(n, x).detach() for n, x in acts.items()]
    by_sum = sum(pre).topk(K, dim=1).indices.sort(dim=1).values
    by_mean = (sum(pre) / len(pre)).topk(K, dim=1).indices.sort(dim=1).values
    shared = model.encode_shared(acts)["vit"].indices.sort(dim=1).values
    assert torch.equal(by_sum, by_mean) and torch.equal(shared, by_sum)


@pytest.mark.parametrize("sparse_grad", [True, False])
def test_values_and_gradients_match_the_definition(sparse_grad):
    """In float64, so that the pre-bias fold's other summation order stays far below the tolerance."""
    model, acts = make().double(), {n: x.double() for n, x in batch().items()}
    model.sparse_grad = sparse_grad
    gen = torch.Generator().manual_seed(2)
    weights = {n: torch.randn(N, K, generator=gen, dtype=torch.float64) for n in DIMS}

    def loss_of(codes):  # each model's values weighted (slots in latent order); decoding each into every model
        total = sum((codes[n][0].gather(1, codes[n][1].argsort(dim=1)) * weights[n]).sum() for n in DIMS)
        for n in DIMS:
            dense = torch.zeros(N, M, dtype=torch.float64).scatter(1, codes[n][1], codes[n][0])
            total = total + sum((dense @ model.W_dec[t]).pow(2).mean() for t in DIMS)
        return total

    want_codes = by_definition(model, acts)
    want = torch.autograd.grad(loss_of(want_codes), list(model.parameters()))
    got_codes = {n: (c.values, c.indices) for n, c in model.encode_shared(acts).items()}
    got = torch.autograd.grad(loss_of(got_codes), list(model.parameters()))
    for n in DIMS:
        order_got, order_want = got_codes[n][1].argsort(dim=1), want_codes[n][1].argsort(dim=1)
        assert torch.equal(got_codes[n][1].gather(1, order_got), want_codes[n][1].gather(1, order_want))
        torch.testing.assert_close(got_codes[n][0].gather(1, order_got), want_codes[n][0].gather(1, order_want))
    for (key, _), g, w in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=key)


def test_an_encoder_learns_only_at_the_shared_latents():
    """The selection passes no gradient: model vit's encoder columns outside the chosen latents get none."""
    model, acts = make(), batch()
    codes = model.encode_shared(acts)
    codes["vit"].values.sum().backward()
    chosen = torch.zeros(M, dtype=torch.bool)
    chosen[codes["vit"].indices[codes["vit"].values > 0].unique()] = True
    grad = model.W_enc["vit"].grad
    assert grad[:, ~chosen].abs().max() == 0 and grad[:, chosen].abs().sum(dim=0).min() > 0
    assert model.W_enc["dino"].grad is None


@pytest.mark.parametrize(("overrides", "dense_grad", "sparse"), [
    ({}, False, True), ({}, True, False), ({"batchnorm": True}, False, False)])
def test_sparse_gradient_path_and_its_fallbacks(overrides, dense_grad, sparse):
    """The sparse encoder gradient is kept where encode_sparse keeps it; BatchNorm and a dense loss fall
    back to the dense pre-activations. Either way AuxK reads the model's own pre-activations."""
    model, acts = make(**overrides), batch()
    codes = model.encode_shared(acts, keep_pre=True, dense_grad=dense_grad)
    columns = torch.tensor([0, 5, 17])
    for name, c in codes.items():
        assert (c.grad_inputs is not None) == sparse and c.pre.requires_grad != sparse
        torch.testing.assert_close(c.pre_at(columns), model.pre_codes(name, acts[name])[:, columns])


def test_without_keep_pre_no_dense_pre_activations_are_kept():
    codes = make().encode_shared(batch())
    assert all(c.pre is None and c.grad_inputs is None for c in codes.values())


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match="sae.activation = 'topk', got 'batchtopk'"):
        make(activation="batchtopk").encode_shared(batch())
    acts = batch()
    acts["dino"] = acts["dino"][:5]
    with pytest.raises(ValueError, match="paired tokens.*'dino': 5"):
        make().encode_shared(acts)
    with pytest.raises(KeyError, match="unknown model 'siglip'"):
        make().encode_shared({"siglip": torch.zeros(N, 8)})
