"""Training schemes: each SCHEMES entry's sources, detaching and updated decoders, and SPARC's
shared-index codes in the step (same latents for every model, every parameter learning, the sparse
encoder gradient kept)."""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig, TrainConfig
from usae.registry import SCHEMES
from usae.sae.model import USAE
from usae.training.dead import DeadLatents
from usae.training.schemes import AllSourcesScheme, PaperScheme, SparcScheme, source_of_step
from usae.training.step import make_optimizer, optimizer_step, training_step

NAMES = ["vit", "dino", "clip"]


def test_registry_names_the_classes():
    assert SCHEMES.get("paper") is PaperScheme and SCHEMES.get("all_sources") is AllSourcesScheme
    assert SCHEMES.get("sparc") is SparcScheme


@pytest.mark.parametrize("name", SCHEMES.names())
def test_every_scheme_is_built_from_names_and_seed(name):
    scheme = SCHEMES.get(name, setting="train.scheme")(NAMES, 7)
    again = SCHEMES.get(name)(NAMES, 7)
    for step in range(40):
        sources = scheme.sources(step)
        assert sources and set(sources) <= set(NAMES) and sources == again.sources(step)
        assert set(sources) <= set(scheme.updated(sources)) <= set(NAMES)


def test_paper_scheme_one_drawn_source_updates_only_itself():
    scheme = PaperScheme(NAMES, 5)
    assert [scheme.sources(s) for s in range(300)] == [[NAMES[source_of_step(5, s, 3)]] for s in range(300)]
    assert not scheme.update_all and scheme.updated(["dino"]) == ["dino"]
    assert scheme.encode is None


def test_all_sources_scheme_every_model_every_step():
    scheme = AllSourcesScheme(NAMES, 5)
    assert all(scheme.sources(s) == NAMES for s in range(20))
    assert scheme.update_all and scheme.updated(["dino"]) == NAMES and scheme.encode is None


def test_sparc_scheme_shares_indices_and_trains_every_parameter():
    dims = {"vit": 8, "dino": 12}
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 4, generator=gen)
    batch = {n: base @ torch.randn(4, d, generator=gen) for n, d in dims.items()}
    model = USAE(dims, SAEConfig(n_latents=32, k=4, aux_k=8, dead_tokens=64, decode="sparse"), seed=0)
    scheme, train = SparcScheme(list(dims), 0), TrainConfig(lr=1e-2)
    assert scheme.sources(3) == list(dims) and scheme.updated(["vit"]) == list(dims)
    optimizer, dead = make_optimizer(model, train), DeadLatents(list(dims), 32, torch.device("cpu"))
    codes = scheme.encode(model, batch, list(dims), keep_pre=False, dense_grad=False)
    assert torch.equal(codes["vit"].indices, codes["dino"].indices)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    losses = [optimizer_step(model, optimizer, batch, scheme.sources(s), scheme=scheme, dead=dead, lr=train.lr,
                             cfg=train).target_losses.sum().item() for s in range(30)]
    assert losses[-1] < losses[0] / 2
    assert all(not torch.equal(p, before[k]) for k, p in model.named_parameters())
    for name in dims:
        torch.testing.assert_close(model.W_dec[name].norm(dim=1), torch.ones(32))


def test_sparc_step_is_all_sources_with_shared_codes():
    """One SPARC step's loss is the all_sources loss of the codes encode_shared gives: each source's
    own values at the shared latents, decoded by every decoder (nothing else differs)."""
    dims = {"vit": 8, "dino": 12, "clip": 6}
    gen = torch.Generator().manual_seed(3)
    batch = {n: torch.randn(40, d, generator=gen) for n, d in dims.items()}
    cfg = SAEConfig(n_latents=24, k=3, aux_k=0, dead_tokens=1000, decode="sparse")
    model = USAE(dims, cfg, seed=1).train()
    dead = DeadLatents(list(dims), 24, torch.device("cpu"))
    out = training_step(model, batch, list(dims), cfg, dead, update_all=True, encode=SparcScheme(list(dims), 0).encode)
    codes = model.encode_shared(batch)
    want = sum(F.mse_loss(model.decode_sparse(t, codes[s]), batch[t]) for s in dims for t in dims)
    torch.testing.assert_close(out.loss, want)
    own = training_step(model, batch, list(dims), cfg, dead, update_all=True)
    assert not torch.allclose(own.loss, want)  # the shared selection is not each model's own TopK


@pytest.mark.parametrize("aux_k", [0, 12])
def test_sparc_optimizer_steps_sparse_and_dense_gradients_agree(aux_k):
    """SPARC keeps the sparse encoder gradient; whole steps match the dense pre-activations' gradient."""
    dims = {"vit": 24, "dino": 16, "clip": 20}
    train = TrainConfig(lr=1e-2, grad_clip=0.5)
    states = []
    for sparse_grad in (True, False):
        gen = torch.Generator().manual_seed(4)
        batch = {n: torch.randn(48, d, generator=gen) for n, d in dims.items()}
        model = USAE(dims, SAEConfig(n_latents=96, k=6, aux_k=aux_k, dead_tokens=1000), seed=0).train()
        model.sparse_grad = sparse_grad
        dead = DeadLatents(list(dims), 96, torch.device("cpu"))
        if aux_k:  # a fifth of each model's latents dead: AuxK reads the shared codes' own pre-activations
            for name in dims:
                dead.since[name][torch.randperm(96, generator=gen)[:19]] = 1000
            dead.refresh(1000)
        scheme, optimizer = SparcScheme(list(dims), 0), make_optimizer(model, train)
        losses = [optimizer_step(model, optimizer, batch, scheme.sources(s), scheme=scheme, dead=dead, lr=1e-2,
                                 cfg=train).loss.item() for s in range(4)]
        states.append((losses, model.state_dict()))
    (losses, ours), (ref_losses, ref) = states
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
