"""Recovery scoring against a planted truth, on USAEs built by hand (no training): fast and exact."""

import numpy as np
import pytest
import torch

from usae.config import SAEConfig
from usae.planted.activations import PlantedConfig, generate_planted
from usae.planted.scoring import evaluate_recovery
from usae.sae.model import USAE

CFG = PlantedConfig(widths=(32, 48), n_shared=16, n_private=4, n_tokens=3000, active_shared=2.0,
                    active_private=1.0, noise=0.0, seed=1)
SAE = SAEConfig(n_latents=CFG.n_shared + 2 * CFG.n_private + 8, k=6, aux_k=0, decode="sparse")


@pytest.fixture(scope="module")
def data():
    return generate_planted(CFG)


def oracle(data) -> USAE:
    """Latents 0..15: the shared atoms; then each model's private atoms, silent in the other model."""
    model = USAE(dict(zip(data.names, CFG.widths)), SAE, seed=0)
    with torch.no_grad():
        for j, name in enumerate(data.names):
            rows = model.W_dec[name].detach().clone()
            rows[:CFG.n_shared] = torch.from_numpy(data.shared_atoms[name])
            enc = torch.zeros_like(rows)
            enc[:CFG.n_shared] = rows[:CFG.n_shared]
            own = slice(CFG.n_shared + j * CFG.n_private, CFG.n_shared + (j + 1) * CFG.n_private)
            rows[own] = torch.from_numpy(data.private_atoms[name])
            enc[own] = rows[own]
            model.W_dec[name].copy_(rows)
            model.W_enc[name].copy_(enc.t())
    return model


def test_oracle_recovers_everything(data):
    rec = evaluate_recovery(data, oracle(data))
    assert rec.shared_recovered == {n: 1.0 for n in data.names}
    assert rec.private_recovered == {n: 1.0 for n in data.names}
    assert rec.shared_mean_cos == {n: pytest.approx(1.0) for n in data.names}
    assert rec.entropy_auroc == 1.0  # shared latents fire in both models, private ones in one
    assert (rec.n_shared_concepts, rec.n_private_concepts) == (CFG.n_shared, 2 * CFG.n_private)


def test_r2_is_variance_explained_per_dimension(data):
    model = oracle(data).eval()
    rec = evaluate_recovery(data, model, n_tokens=1000)
    for i, source in enumerate(data.names):
        for j, target in enumerate(data.names):
            x = data.acts[target][:1000].astype(np.float64)
            codes = model.encode(source, torch.from_numpy(data.acts[source][:1000]), standardized=True)
            x_hat = model.decode(target, codes, standardized=True).detach().double().numpy()
            expected = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
            assert rec.r2[i, j] == pytest.approx(expected, abs=1e-6)
    assert (np.diag(rec.r2) > rec.r2[[1, 0], [0, 1]]).all()  # the target's private atoms are missing across


def test_untrained_usae_recovers_nothing(data):
    rec = evaluate_recovery(data, USAE(dict(zip(data.names, CFG.widths)), SAE, seed=0))
    assert max(rec.shared_recovered.values()) == 0.0


def test_shared_index_scores_the_codes_made_together(data):
    """``shared_index``: every model's codes come from one TopK over the summed pre-activations."""
    model = oracle(data).eval()
    rec = evaluate_recovery(data, model, n_tokens=1000, shared_index=True)
    acts = {n: torch.from_numpy(data.acts[n][:1000]) for n in data.names}
    codes = model.encode_shared(acts)
    for i, source in enumerate(data.names):
        dense = codes[source].dense(SAE.n_latents)
        for j, target in enumerate(data.names):
            x = data.acts[target][:1000].astype(np.float64)
            x_hat = model.decode(target, dense, standardized=True).detach().double().numpy()
            expected = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
            assert rec.r2[i, j] == pytest.approx(expected, abs=1e-6)
    own = evaluate_recovery(data, model, n_tokens=1000)
    assert not np.allclose(rec.r2, own.r2)  # the shared selection is not each model's own TopK
