"""Proof on a planted ground truth: the USAE recovers shared concepts, and entropy separates them;
SPARC's shared-index scheme recovers the shared atoms at least as well as the paper's.

Setting of the issue: 3 models of widths 64/96/128, 128 shared + 32 private atoms each,
about 6 active per token. Targets: >= 90% of shared atoms recovered at cosine >= 0.9 in
every model, AUROC >= 0.95 of firing entropy for shared vs private concepts, every
off-diagonal R2 > 0.3.

Cost: 2340 steps of 512 tokens, about 25 s on one CPU thread (the former 3480 steps of 1024
tokens took about 55 s, AUROC 0.991-0.999 on seeds 0-2). What buys the shorter schedule: a
higher peak learning rate (5e-3) and AuxK reviving latents after 2,000 tokens without firing
(not 20,000), which separates private concepts that started out sharing a latent. Measured
with these settings (data seed = training seed; shared atoms recovered per model, AUROC,
smallest off-diagonal R2):

    seed 0 (this test): 97.7 / 98.4 / 98.4 %, AUROC 0.981, R2 0.509
    seed 1:             96.9 / 97.7 / 96.9 %, AUROC 0.997, R2 0.514
    seed 2:             98.4 / 99.2 / 99.2 %, AUROC 0.991, R2 0.511
    seed 3:             99.2 / 99.2 / 98.4 %, AUROC 0.989, R2 0.511
    seed 4:             97.7 / 97.7 / 97.7 %, AUROC 0.984, R2 0.503

The test pins torch to one thread (restored afterwards): on a loaded machine a multi-threaded
run slows down far more than in proportion, as its threads wait for each other.
"""

from dataclasses import replace

import pytest
import torch

from usae.activations.sources import open_arrays
from usae.config import SAEConfig, TrainConfig
from usae.planted.activations import PlantedConfig, generate_planted
from usae.planted.scoring import evaluate_recovery
from usae.sae.model import USAE

pytestmark = pytest.mark.slow

SAE = SAEConfig(n_latents=512, k=8, aux_k=64, dead_tokens=2_000, decode="sparse")
TRAIN = TrainConfig(epochs=20, batch_tokens=512, buffer_tokens=65_536, lr=5e-3, warmup=0.02, log_every=100,
                    checkpoint_every=10_000, device="cpu", scheme="paper", seed=0, read_threads=1)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    data = generate_planted(PlantedConfig(widths=(64, 96, 128), n_shared=128, n_private=32, n_tokens=60_000,
                                          active_shared=4.0, active_private=2.0, seed=0))
    return data, data.save(tmp_path_factory.mktemp("planted"))


def trained_recovery(planted, out_dir, train: TrainConfig):
    from usae.training.loop import train_usae

    data, paths = planted
    result = train_usae(open_arrays({n: paths[n] for n in data.names}), SAE, train, out_dir)
    return evaluate_recovery(data, USAE.load(result.model_dir))


@pytest.fixture(scope="module")
def paper_recovery(planted, tmp_path_factory, one_thread):
    return trained_recovery(planted, tmp_path_factory.mktemp("paper"), TRAIN)


def test_paper_scheme_recovers_planted_shared_concepts(paper_recovery):
    rec = paper_recovery
    for name, share in rec.shared_recovered.items():
        assert share >= 0.9, f"{name}: only {share:.1%} of shared atoms recovered at cosine >= 0.9"
    assert rec.entropy_auroc >= 0.95, f"firing-entropy AUROC {rec.entropy_auroc:.3f}"
    # Cross-model reconstruction works: every off-diagonal R2 is clearly positive.
    assert (rec.r2 > 0.3).all(), rec.r2


def test_sparc_recovers_shared_atoms_at_least_as_well_as_paper(planted, paper_recovery, tmp_path, one_thread):
    """SPARC's shared-index TopK on the same data. Every model is a source every step, so 7 epochs
    (820 steps) give each encoder about the updates of the paper scheme's 20 epochs (2340 steps,
    one source a step); about 25 s. Measured (shared atoms recovered per model, AUROC, smallest
    off-diagonal R2 with each model encoding alone): seed 0 (this test) 100 / 100 / 100 %, AUROC
    0.878, R2 0.423; seed 1: 100 / 100 / 100 %, 0.970, 0.422 (paper: 100 %, 1.000, 0.515). SPARC
    finds the shared atoms as well; it separates private from shared concepts less well (fewer
    private atoms recovered) and its cross-model R2 is lower. Recovery is a count over 128 atoms:
    one atom of slack keeps the comparison from hinging on the float summation order of a platform.
    """
    rec = trained_recovery(planted, tmp_path / "sparc", replace(TRAIN, scheme="sparc", epochs=7))
    for name, share in rec.shared_recovered.items():
        assert share >= 0.9, f"{name}: only {share:.1%} of shared atoms recovered at cosine >= 0.9"
        paper = paper_recovery.shared_recovered[name]
        assert share >= paper - 1 / 128, f"{name}: SPARC recovers {share:.1%} of shared atoms, paper {paper:.1%}"
    assert rec.entropy_auroc >= 0.8, f"firing-entropy AUROC {rec.entropy_auroc:.3f}"
    assert (rec.r2 > 0.3).all(), rec.r2
