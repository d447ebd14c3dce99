"""One training step: which parameters each scheme updates, per-target losses, auxiliary
terms, fired latents; and the whole optimiser step the loop runs."""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig, TrainConfig
from usae.sae.losses import PAPER_AUX_WEIGHT, auxk, l1, mse, paper_dense_aux
from usae.sae.model import USAE
from usae.training.dead import DeadLatents
from usae.training.schemes import AllSourcesScheme, PaperScheme
from usae.training.step import make_optimizer, optimizer_step, training_step

DIMS = {"vit": 8, "dino": 12}
M, K = 32, 4


def setup(n: int = 16, seed: int = 0, **overrides):
    cfg = SAEConfig(**{"n_latents": M, "k": K, "aux_k": 0, "dead_tokens": 1_000_000, **overrides})  # a fixed window
    model = USAE(DIMS, cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in DIMS:
            model.b_dec[name].normal_(generator=gen)
    batch = {name: torch.randn(n, d, generator=gen) for name, d in DIMS.items()}
    dead = DeadLatents(list(DIMS), M, torch.device("cpu"))
    return model, cfg, batch, dead


def hand_codes(model: USAE, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, dense TopK(ReLU(pre))) from the definition."""
    pre = (x - model.b_dec[name]) @ model.W_enc[name] + model.b_enc[name]
    relu = F.relu(pre)
    idx = relu.topk(model.cfg.k, dim=1).indices
    return pre, torch.zeros_like(relu).scatter_(1, idx, relu.gather(1, idx))


def params_of(model: USAE, name: str) -> dict[str, torch.nn.Parameter]:
    return {key: p for key, p in model.named_parameters() if name in key.split(".")}


# -- which parameters learn --------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mse", "l1", "paper"])
@pytest.mark.parametrize("aux_k", [0, 8])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_paper_scheme_updates_only_the_source(loss, aux_k, batchnorm):
    model, cfg, batch, dead = setup(loss=loss, aux_k=aux_k, batchnorm=batchnorm)
    dead.since["vit"].fill_(cfg.dead_tokens)  # make the AuxK term active when aux_k > 0
    dead.refresh(cfg.dead_tokens)
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    out.loss.backward()
    for key, p in params_of(model, "vit").items():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
    for key, p in params_of(model, "dino").items():
        assert p.grad is None, key
    for key in ("W_enc.vit", "b_enc.vit", "W_dec.vit", "b_dec.vit"):
        assert key in params_of(model, "vit")


def test_all_sources_updates_everything():
    model, cfg, batch, dead = setup(batchnorm=True)
    out = training_step(model, batch, list(DIMS), cfg, dead, update_all=True)
    out.loss.backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, key


def test_update_all_with_one_source_trains_every_decoder():
    model, cfg, batch, dead = setup()
    training_step(model, batch, ["vit"], cfg, dead, update_all=True).loss.backward()
    assert model.W_dec["dino"].grad is not None and model.b_dec["dino"].grad is not None
    assert model.W_enc["dino"].grad is None  # dino's encoder was not used


# -- losses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss,fn", [("mse", mse), ("l1", l1)])
def test_target_losses_match_independent_reconstruction(loss, fn):
    model, cfg, batch, dead = setup(loss=loss)
    out = training_step(model, batch, ["dino"], cfg, dead, update_all=False)
    assert out.target_losses.shape == (len(DIMS),)
    _, z = hand_codes(model, "dino", batch["dino"])
    expected = torch.stack([fn(batch[j], z @ model.W_dec[j] + model.b_dec[j]) for j in model.names])
    torch.testing.assert_close(out.target_losses, expected.detach(), rtol=1e-5, atol=1e-6)
    assert not out.target_losses.requires_grad
    torch.testing.assert_close(out.loss, expected.sum())


def test_target_losses_average_over_sources():
    model, cfg, batch, dead = setup()
    out = training_step(model, batch, list(DIMS), cfg, dead, update_all=True)
    per_source = []
    for src in model.names:
        _, z = hand_codes(model, src, batch[src])
        per_source.append(torch.stack([mse(batch[j], z @ model.W_dec[j] + model.b_dec[j]) for j in model.names]))
    torch.testing.assert_close(out.target_losses, torch.stack(per_source).mean(0).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, torch.stack(per_source).sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,fn", [("mse", mse), ("l1", l1)])
@pytest.mark.parametrize("cross_coef", [0.0, 0.3])
def test_cross_coef_weighs_only_the_cross_model_terms(loss, fn, cross_coef):
    model, cfg, batch, dead = setup(loss=loss, cross_coef=cross_coef)
    out = training_step(model, batch, ["dino"], cfg, dead, update_all=True)
    _, z = hand_codes(model, "dino", batch["dino"])
    errors = {j: fn(batch[j], z @ model.W_dec[j] + model.b_dec[j]) for j in model.names}
    torch.testing.assert_close(out.loss, errors["dino"] + cross_coef * errors["vit"], rtol=1e-5, atol=1e-6)
    # the logged per-target errors stay unweighted: they are what evaluation compares
    torch.testing.assert_close(out.target_losses, torch.stack([errors[j] for j in model.names]).detach(),
                               rtol=1e-5, atol=1e-6)
    out.loss.backward()
    if cross_coef == 0:  # the other model's decoder gets an exactly zero gradient, its reconstruction no pull
        assert model.W_dec["vit"].grad.abs().max() == 0
        alone = setup(loss=loss, cross_coef=1.0)[0]
        z_alone = hand_codes(alone, "dino", batch["dino"])[1]
        fn(batch["dino"], z_alone @ alone.W_dec["dino"] + alone.b_dec["dino"]).backward()
        torch.testing.assert_close(model.W_enc["dino"].grad, alone.W_enc["dino"].grad, rtol=1e-5, atol=1e-7)


def test_paper_loss_adds_dense_aux():
    model, cfg, batch, dead = setup(loss="paper")
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    assert out.loss.item() > out.target_losses.sum().item()
    pre, z = hand_codes(model, "vit", batch["vit"])
    expected = out.target_losses.sum()
    for j in model.names:
        x_hat = z @ model.W_dec[j] + model.b_dec[j]
        expected = expected + PAPER_AUX_WEIGHT * paper_dense_aux(batch[j], x_hat, pre, z, model.W_dec[j])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_auxk_without_dead_latents_adds_zero():
    model, cfg, batch, dead = setup(aux_k=8)
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    assert out.loss.item() == out.target_losses.sum().item()
    assert torch.isfinite(out.loss)


def expected_auxk(model, cfg, x, is_dead):
    pre, z = hand_codes(model, "vit", x)
    x_hat = z @ model.W_dec["vit"] + model.b_dec["vit"]
    masked = pre.masked_fill(~is_dead, float("-inf"))
    idx = masked.topk(min(cfg.aux_k, M), dim=1).indices
    aux = torch.zeros_like(pre).scatter_(1, idx, F.relu(pre.gather(1, idx)))
    aux = aux * is_dead  # only dead latents
    return auxk(x - x_hat, aux @ model.W_dec["vit"])  # decoded without bias


def test_auxk_with_every_latent_dead():
    model, cfg, batch, dead = setup(aux_k=8, aux_coef=0.5, dead_tokens=100)
    dead.since["vit"].fill_(100)
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    assert out.loss.item() == out.target_losses.sum().item()  # not refreshed yet: no dead list
    dead.refresh(100)
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    term = expected_auxk(model, cfg, batch["vit"], torch.ones(M, dtype=torch.bool))
    assert term.item() > 0
    assert out.loss.item() > out.target_losses.sum().item()
    torch.testing.assert_close(out.loss, out.target_losses.sum() + 0.5 * term, rtol=1e-5, atol=1e-6)


def test_auxk_uses_only_dead_latents():
    model, cfg, batch, dead = setup(aux_k=4, aux_coef=1.0, dead_tokens=100)
    is_dead = torch.zeros(M, dtype=torch.bool)
    is_dead[::3] = True
    dead.since["vit"][is_dead] = 100
    dead.since["vit"][~is_dead] = 99  # just short of dead
    dead.refresh(100)
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    term = expected_auxk(model, cfg, batch["vit"], is_dead)
    torch.testing.assert_close(out.loss, out.target_losses.sum() + term, rtol=1e-5, atol=1e-6)
    # the source's dead count decides: marking dino's latents dead changes nothing for source vit
    dead2 = DeadLatents(list(DIMS), M, torch.device("cpu"))
    dead2.since["dino"].fill_(100)
    dead2.refresh(100)
    out2 = training_step(model, batch, ["vit"], cfg, dead2, update_all=False)
    assert out2.loss.item() == out2.target_losses.sum().item()


# -- fired latents and L0 ----------------------------------------------------------------------

def test_fired_and_l0():
    model, cfg, batch, dead = setup(n=3)
    out = training_step(model, batch, list(DIMS), cfg, dead, update_all=True)
    assert set(out.fired) == set(DIMS)
    l0 = []
    for name in DIMS:
        _, z = hand_codes(model, name, batch[name])
        expected = (z > 0).any(dim=0)
        assert out.fired[name].dtype == torch.bool and out.fired[name].shape == (M,)
        assert torch.equal(out.fired[name], expected)
        assert 0 < expected.sum() < M  # 3 tokens x k = 12 slots cannot cover 32 latents
        l0.append((z > 0).sum(dim=1).float().mean())
    torch.testing.assert_close(out.l0, torch.stack(l0).mean())


def test_fired_ignores_zero_valued_slots():
    model, cfg, batch, dead = setup(n=4)
    with torch.no_grad():
        model.b_enc["vit"].fill_(-1e3)  # nothing positive: TopK slots hold zeros
    out = training_step(model, batch, ["vit"], cfg, dead, update_all=False)
    assert not out.fired["vit"].any()
    assert out.l0.item() == 0.0
    assert list(out.fired) == ["vit"]


# -- the whole optimiser step ------------------------------------------------------------------

def hand_step(model, optimizer, batch, sources, cfg, dead, *, update_all, lr, clip):
    """The loop's step written out: the sequence optimizer_step must run."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    out = training_step(model, batch, sources, cfg, dead, update_all=update_all)
    out.loss.backward()
    model.remove_parallel_grads(None if update_all else sources)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
    optimizer.step()
    model.normalize_decoders(None if update_all else sources)
    for source, fired in out.fired.items():
        dead.update(source, fired, len(batch[source]))
    return out


@pytest.mark.parametrize("scheme_cls,sources", [(PaperScheme, ["vit"]), (AllSourcesScheme, list(DIMS))])
@pytest.mark.parametrize("optimizer_name", ["adam", "adamw"])
def test_optimizer_step_is_the_loops_sequence(scheme_cls, sources, optimizer_name):
    train = TrainConfig(lr=1e-2, optimizer=optimizer_name, weight_decay=0.01, grad_clip=0.5)
    runs = []
    for by_hand in (False, True):
        model, cfg, batch, dead = setup(aux_k=8, loss="paper", batchnorm=True)
        dead.since["vit"][::2] = cfg.dead_tokens
        dead.refresh(cfg.dead_tokens)
        optimizer = make_optimizer(model, train)
        for _ in range(3):
            if by_hand:
                hand_step(model, optimizer, batch, sources, cfg, dead, update_all=scheme_cls.update_all, lr=1e-2,
                          clip=0.5)
            else:
                optimizer_step(model, optimizer, batch, sources, scheme=scheme_cls(list(DIMS), 0), dead=dead, lr=1e-2,
                               cfg=train)
        runs.append((model.state_dict(), dead.state_dict()))
    (ours, ours_dead), (hand, hand_dead) = runs
    for key in hand:
        assert torch.equal(ours[key], hand[key]), key
    for name in DIMS:
        assert torch.equal(ours_dead["since"][name], hand_dead["since"][name])


def test_optimizer_step_paper_scheme_moves_only_the_source():
    model, cfg, batch, dead = setup()
    train = TrainConfig(lr=1e-2)
    optimizer = make_optimizer(model, train)
    before = {key: p.detach().clone() for key, p in model.named_parameters()}
    out = optimizer_step(model, optimizer, batch, ["vit"], scheme=PaperScheme(list(DIMS), 0), dead=dead, lr=5e-3,
                         cfg=train)
    for key, p in model.named_parameters():
        assert torch.equal(p, before[key]) != ("vit" in key.split(".")), key
    torch.testing.assert_close(model.W_dec["vit"].norm(dim=1), torch.ones(M))
    assert optimizer.param_groups[0]["lr"] == 5e-3
    assert torch.equal(dead.since["vit"], torch.where(out.fired["vit"], 0, 16))
    assert dead.since["dino"].sum() == 0


def test_make_optimizer_follows_the_setting():
    model = setup()[0]
    adam = make_optimizer(model, TrainConfig(lr=1e-3))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 1e-3
    adamw = make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.01))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.01
