"""The optimised step (sparse encoder gradient, AuxK as a matmul) against the dense reference.

The reference is the step written from the definitions with plain autograd: dense
pre-activations differentiated as a whole, decoding and AuxK by ``embedding_bag`` (the code
before the optimisation). Losses and every parameter's gradient must agree within float
tolerance, with AuxK idle and live, for both schemes, and whole optimiser steps too.
"""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig, TrainConfig
from usae.registry import LOSSES
from usae.sae.losses import auxk
from usae.sae.model import USAE
from usae.training.dead import DeadLatents
from usae.training.schemes import AllSourcesScheme, PaperScheme, SparcScheme
from usae.training.step import make_optimizer, optimizer_step, training_step

DIMS = {"vit": 24, "dino": 16, "clip": 20}
M, K, N = 96, 6, 48


def setup(seed=0, **overrides):
    cfg = SAEConfig(**{"n_latents": M, "k": K, "aux_k": 0, "dead_tokens": 1000, **overrides})
    model = USAE(DIMS, cfg, seed=seed).train()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in DIMS:
            model.b_dec[name].normal_(generator=gen)
            model.b_enc[name].normal_(std=0.1, generator=gen)
    batch = {name: torch.randn(N, d, generator=gen) for name, d in DIMS.items()}
    dead = DeadLatents(list(DIMS), M, torch.device("cpu"))
    if cfg.aux_k:  # a seeded fifth of each model's latents dead: AuxK is live
        for name in DIMS:
            dead.since[name][torch.randperm(M, generator=gen)[: M // 5]] = cfg.dead_tokens
        dead.refresh(cfg.dead_tokens)
    return model, cfg, batch, dead


def reference_loss(model, batch, sources, cfg, dead, *, update_all):
    """The step's total loss from the definitions, with dense autograd throughout."""
    loss_fn = LOSSES.get(cfg.loss, setting="sae.loss")
    total = 0.0
    for source in sources:
        pre = model.pre_codes(source, batch[source])
        values, indices = model.activation(pre, cfg.k, threshold=getattr(model, f"threshold_{source}").clone(),
                                           training=True)
        for name in model.names:
            weight, bias = model.W_dec[name], model.b_dec[name]
            if not update_all and name != source:
                weight, bias = weight.detach(), bias.detach()
            x_hat = F.embedding_bag(indices, weight, per_sample_weights=values, mode="sum") + bias
            total = total + sum(loss_fn(batch[name], x_hat, None).values())
            if name == source:
                source_hat = x_hat
        dead_index = dead.index[source]
        if cfg.aux_k and len(dead_index):
            cand, slots = pre[:, dead_index].topk(min(cfg.aux_k, len(dead_index)), dim=1)
            residual_hat = F.embedding_bag(dead_index[slots], model.W_dec[source],
                                           per_sample_weights=F.relu(cand), mode="sum")
            total = total + cfg.aux_coef * auxk(batch[source] - source_hat, residual_hat)
    return total


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["mse", "l1"])
@pytest.mark.parametrize("aux_k", [0, 12])
@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@pytest.mark.parametrize("scheme", [PaperScheme, AllSourcesScheme])
def test_step_matches_dense_reference(loss, aux_k, activation, scheme):
    model, cfg, batch, dead = setup(loss=loss, aux_k=aux_k, activation=activation)
    sources = ["dino"] if scheme is PaperScheme else list(DIMS)
    thresholds = {n: getattr(model, f"threshold_{n}").clone() for n in DIMS}
    want_loss = reference_loss(model, batch, sources, cfg, dead, update_all=scheme.update_all)
    want = grads(model, want_loss)
    for name, value in thresholds.items():  # BatchTopK's EMA: both sides start from the same threshold
        getattr(model, f"threshold_{name}").copy_(value)
    out = training_step(model, batch, sources, cfg, dead, update_all=scheme.update_all)
    got = grads(model, out.loss)
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-6, atol=1e-7)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    if aux_k:
        assert any(len(dead.index[s]) for s in sources)


def test_sparse_path_is_taken_and_dense_fallbacks_stay():
    """TopK without BatchNorm goes through the sparse gradient; BatchNorm and the paper loss do not."""
    for overrides, sparse in (({}, True), ({"batchnorm": True}, False), ({"loss": "paper"}, False)):
        model, cfg, batch, dead = setup(aux_k=12, **overrides)
        codes = model.encode_sparse("vit", batch["vit"], keep_pre=True, dense_grad=cfg.loss == "paper")
        assert (codes.grad_inputs is not None) == sparse
        assert codes.pre.requires_grad != sparse


@pytest.mark.parametrize("scheme", [PaperScheme, AllSourcesScheme])
@pytest.mark.parametrize("aux_k", [0, 12])
def test_optimizer_steps_match_dense_reference(scheme, aux_k):
    train = TrainConfig(lr=1e-2, grad_clip=0.5)
    states = []
    for sparse_grad in (True, False):
        model, cfg, batch, dead = setup(aux_k=aux_k)
        model.sparse_grad = sparse_grad
        optimizer = make_optimizer(model, train)
        schedule = scheme(list(DIMS), 0)
        losses = [optimizer_step(model, optimizer, batch, schedule.sources(step), scheme=schedule, dead=dead,
                                 lr=1e-2, cfg=train).loss.item() for step in range(4)]
        states.append((losses, model.state_dict()))
    (losses, ours), (ref_losses, ref) = states
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("optimizer_name", ["adam", "adamw"])
def test_fused_optimizer_makes_the_same_update(optimizer_name):
    train = TrainConfig(lr=1e-2, optimizer=optimizer_name, weight_decay=0.01)
    states = []
    for fused in (True, False):
        model, cfg, batch, dead = setup(aux_k=12)
        optimizer = make_optimizer(model, train)
        assert optimizer.defaults["fused"] is True
        if not fused:  # the same optimiser with torch's non-fused kernels
            kind = type(optimizer)
            optimizer = kind(model.parameters(), lr=train.lr, weight_decay=optimizer.defaults["weight_decay"],
                             foreach=False)
        schedule = PaperScheme(list(DIMS), 0)
        for step in range(4):
            optimizer_step(model, optimizer, batch, schedule.sources(step), scheme=schedule, dead=dead, lr=1e-2,
                           cfg=train)
        states.append(model.state_dict())
    for key in states[1]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_encoder_gradient_has_the_parameters_layout():
    model, cfg, batch, dead = setup(aux_k=12)
    training_step(model, batch, ["vit"], cfg, dead, update_all=False).loss.backward()
    assert model.W_enc["vit"].grad.stride() == model.W_enc["vit"].stride()


@pytest.mark.parametrize("scheme", [PaperScheme, AllSourcesScheme, SparcScheme])
def test_bf16_autocast_step_follows_fp32(scheme):
    """The CUDA bf16 path's code, under CPU autocast: the GEMMs in bf16, codes decoded in the
    decoders' fp32, every gradient fp32 and close to the fp32 step's (AuxK live)."""
    results = []
    for bf16 in (False, True):
        model, cfg, batch, dead = setup(aux_k=12)
        sources = ["dino"] if scheme is PaperScheme else list(DIMS)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = training_step(model, batch, sources, cfg, dead, update_all=scheme.update_all,
                                encode=scheme(list(DIMS), 0).encode)
        results.append((out.loss.detach(), grads(model, out.loss)))
    (loss, want), (loss_bf16, got) = results
    assert got.keys() == want.keys()
    torch.testing.assert_close(loss_bf16, loss, rtol=0.05, atol=0)
    for key in want:
        assert got[key].dtype == torch.float32
        cos = F.cosine_similarity(got[key].flatten(), want[key].flatten(), dim=0)
        assert cos > 0.9, (key, cos)
