"""Training schemes: each SCHEMES entry's sources, detaching and updated decoders; and a new
scheme (SPARC-style shared indices) plugging into the step as one class, with no other change."""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig, TrainConfig
from usae.registry import SCHEMES
from usae.sae.model import USAE, Codes
from usae.training.dead import DeadLatents
from usae.training.schemes import AllSourcesScheme, PaperScheme, source_of_step
from usae.training.step import make_optimizer, optimizer_step

NAMES = ["vit", "dino", "clip"]


def test_registry_names_the_classes():
    assert SCHEMES.get("paper") is PaperScheme and SCHEMES.get("all_sources") is AllSourcesScheme


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
    assert scheme.update_all and scheme.updated(["dino"]) == NAMES


class SharedIndexScheme(AllSourcesScheme):
    """SPARC-style: one TopK over the sum of every model's pre-activations; each model keeps its
    own values at those shared indices."""

    def encode(self, model, batch, source, keep_pre):
        pre = {n: model.pre_codes(n, batch[n]) for n in self.names}
        indices = sum(pre.values()).topk(model.cfg.k, dim=1, sorted=False).indices
        values = F.relu(pre[source].gather(1, indices))
        return Codes(values, indices, pre[source] if keep_pre else None)


def test_a_shared_index_scheme_is_one_new_class():
    dims = {"vit": 8, "dino": 12}
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 4, generator=gen)
    batch = {n: base @ torch.randn(4, d, generator=gen) for n, d in dims.items()}
    model = USAE(dims, SAEConfig(n_latents=32, k=4, aux_k=8, dead_tokens=64, decode="sparse"), seed=0)
    scheme, train = SharedIndexScheme(list(dims), 0), TrainConfig(lr=1e-2)
    optimizer, dead = make_optimizer(model, train), DeadLatents(list(dims), 32, torch.device("cpu"))
    codes = {n: scheme.encode(model, batch, n, False) for n in dims}
    assert torch.equal(codes["vit"].indices, codes["dino"].indices)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    losses = [optimizer_step(model, optimizer, batch, scheme.sources(s), scheme=scheme, dead=dead, lr=train.lr,
                             cfg=train).target_losses.sum().item() for s in range(30)]
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, before[k]) for k, p in model.named_parameters())
    for name in dims:
        torch.testing.assert_close(model.W_dec[name].norm(dim=1), torch.ones(32))
