"""Proof on a planted ground truth: the USAE recovers shared concepts, and entropy separates them.

Setting of the issue: 3 models of widths 64/96/128, 128 shared + 32 private atoms each,
about 6 active per token. Targets: >= 90% of shared atoms recovered at cosine >= 0.9 in
every model, AUROC >= 0.95 of firing entropy for shared vs private concepts.
"""

import pytest

from usae.activations.sources import open_arrays
from usae.config import SAEConfig, TrainConfig
from usae.planted.scoring import evaluate_recovery
from usae.sae.model import USAE
from usae.planted.activations import PlantedConfig, generate_planted

pytestmark = pytest.mark.slow

SAE = SAEConfig(n_latents=512, k=8, aux_k=64, dead_tokens=20_000, decode="sparse")
TRAIN = TrainConfig(epochs=60, batch_tokens=1024, buffer_tokens=65_536, lr=3e-3, warmup=0.02, log_every=100,
                    checkpoint_every=10_000, device="cpu", scheme="paper", seed=0)


def test_paper_scheme_recovers_planted_shared_concepts(tmp_path):
    from usae.training.loop import train_usae

    data = generate_planted(PlantedConfig(widths=(64, 96, 128), n_shared=128, n_private=32, n_tokens=60_000,
                                          active_shared=4.0, active_private=2.0, seed=0))
    paths = data.save(tmp_path / "data")
    result = train_usae(open_arrays({n: paths[n] for n in data.names}), SAE, TRAIN, tmp_path / "run")
    rec = evaluate_recovery(data, USAE.load(result.model_dir))
    for name, share in rec.shared_recovered.items():
        assert share >= 0.9, f"{name}: only {share:.1%} of shared atoms recovered at cosine >= 0.9"
    assert rec.entropy_auroc >= 0.95, f"firing-entropy AUROC {rec.entropy_auroc:.3f}"
    # Cross-model reconstruction works: every off-diagonal R2 is clearly positive.
    assert (rec.r2 > 0.3).all(), rec.r2
