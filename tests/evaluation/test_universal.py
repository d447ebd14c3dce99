"""Universal-concept counts: known answers on a concept table, and on a dictionary planted to have universal,
co-firing, energetic and factor-tied latents, whose random-dictionary floor is counted from the random dictionary's own firing."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from usae.activations.sources import TokenSource
from usae.config import EvaluateConfig, SAEConfig
from usae.evaluation.baselines import Moments, random_dictionary
from usae.evaluation.evaluate import blocks, evaluate_sources
from usae.evaluation.run import PlantedFactors
from usae.evaluation.universal import CHANCE_ALPHA, beyond_chance, chance_cofires, cofire_test, universal_counts
from usae.sae.model import USAE

CPU = torch.device("cpu")


def test_counts_of_a_concept_table_known_answer():
    table = pd.DataFrame({"firing_entropy": [0.95, 0.91, 0.99, 0.5, np.nan, 0.9],
                          "energy_total": [10.0, 0.1, 3.0, 4.0, 0.0, 0.9],
                          "factor_auroc": [0.92, 0.99, 0.89, 0.99, np.nan, 0.9]})
    # mean energy 18 / 6 = 3: of the universal ones (0, 1, 2, 5) concepts 0 and 2 carry at least that
    assert universal_counts(table, 2) == {"universal": 4, "universal_energetic": 2,
                                          "universal_energy_share": pytest.approx(14.0 / 18.0),
                                          "universal_factor": 3}  # 0, 1, 5; concept 3 detects but is not universal
    assert universal_counts(table.drop(columns=["energy_total", "factor_auroc"]), 3) == {"universal": 4}
    cofiring = table.assign(cofires=[5, 0, 1, 9, 0, 3])  # of the universal ones 0 (5), 2 (1) and 5 (3) co-fire
    assert universal_counts(cofiring, 2, min_cofires=2)["universal_cofiring"] == 2  # 0 and 5; 3 is not universal
    assert universal_counts(cofiring, 2, min_cofires=0)["universal_cofiring"] == 3  # at least once all the same
    assert "universal_cofiring" not in universal_counts(cofiring, 2)  # no threshold: no count
    assert universal_counts(cofiring, 1, min_cofires=2) == {"universal": None, "universal_factor": None}
    assert universal_counts(table, 1) == {"universal": None, "universal_factor": None}
    assert universal_counts(table.drop(columns=["firing_entropy"]), 2) == {}
    silent = universal_counts(table.assign(energy_total=0.0), 2)
    assert silent["universal_energetic"] is None and silent["universal_energy_share"] is None
    assert "universal_beyond_chance" not in universal_counts(cofiring, 2, 2, n_tokens=100)  # no fires columns


def test_cofiring_beyond_chance_known_answers():
    # 1,000 tokens. Concept 0: each model fires it on 10, together 5: chance 1000 * 0.01 * 0.01 = 0.1 co-fires,
    # P(X >= 5) = 7.7e-8. Concept 1: fired on 600 tokens by each, together 360: exactly chance (360).
    # Concept 2: fired on 100 and 50, together 12: chance 5, P(X >= 12) = 0.0055. Concept 3: never together.
    table = pd.DataFrame({"fires_a": [10, 600, 100, 40], "fires_b": [10, 600, 50, 40], "cofires": [5, 360, 12, 0],
                          "firing_entropy": [1.0, 1.0, 0.95, 1.0]})
    assert chance_cofires(table, 1000) == pytest.approx([0.1, 360.0, 5.0, 1.6])
    poisson_tail = 1 - sum(np.exp(-5.0) * 5.0 ** i / np.prod(range(1, i + 1)) for i in range(12))
    assert poisson_tail == pytest.approx(0.00545, abs=1e-5)
    # Bonferroni over the 4 concepts: P < 0.05 / 4 = 0.0125 passes, so concept 2 does, and not at alpha 0.02.
    assert beyond_chance(table, 1000).tolist() == [True, False, True, False]
    assert beyond_chance(table, 1000, alpha=0.02).tolist() == [True, False, False, False]
    assert CHANCE_ALPHA == EvaluateConfig().chance_alpha == 0.05
    counts = universal_counts(table, 2, min_cofires=1, n_tokens=1000)
    assert (counts["universal"], counts["universal_cofiring"], counts["universal_beyond_chance"]) == (4, 3, 2)
    assert universal_counts(table, 2, min_cofires=1, n_tokens=1000, alpha=0.02)["universal_beyond_chance"] == 1
    # Floor and chance together: 10 co-fires asked leaves concept 2 (12) and 1 (360, but chance).
    assert universal_counts(table, 2, min_cofires=10, n_tokens=1000)["universal_beyond_chance"] == 1
    # Three models: chance multiplies the three shares.
    three = table.assign(fires_c=[500, 1000, 1000, 1000])
    assert chance_cofires(three, 1000) == pytest.approx([0.05, 360.0, 5.0, 1.6])
    with pytest.raises(ValueError, match="at least 2 models"):
        chance_cofires(table.drop(columns=["fires_b"]), 1000)


def test_the_cofiring_test_an_evaluation_recorded():
    metrics = {"min_cofires": 3, "n_tokens": 1000, "chance_alpha": 0.01, "tau": 0.1}
    assert cofire_test(metrics) == {"min_cofires": 3, "n_tokens": 1000, "alpha": 0.01}
    # Evaluated before evaluate.chance_alpha existed: the test they were counted with, the default.
    assert cofire_test({"min_cofires": 3, "n_tokens": 1000}) == {"min_cofires": 3, "n_tokens": 1000, "alpha": 0.05}
    assert cofire_test({}) == {"min_cofires": None, "n_tokens": None, "alpha": 0.05}


KINDS = ((0, 5.0, 5.0), (1, 5.0, 5.0), (2, 0.5, 0.5), (3, 0.5, 0.5), (4, 1.0, 0.0), (5, 1.0, 0.0), (6, 1.0, 0.0),
         (6, 0.0, 1.0))
"""Token kind j: ``(latent, its amplitude in model a, in model b)``. Latents 0-3 fire alike in both on the same
tokens (universal, co-firing), 0-1 strongly (energetic), 4-5 in model a only; latent 6 as often in each model
(universal) but never on the same token as the other; latent 7 never fires."""
FACTORS = {"F0": 0, "F1": 2, "F2": 4}
"""Planted factor -> the token kind it covers: latents 0 and 2 are universal and detect one, 4 detects one
but is not universal."""
TOKENS_PER_IMAGE = 3


def planted_sources() -> tuple[dict[str, TokenSource], np.ndarray]:
    """40 images of 3 tokens, kinds in turn, one-hot along the kind's latent; and the (40, 3, 3) factor labels."""
    kind = np.arange(40 * TOKENS_PER_IMAGE) % len(KINDS)
    acts = {name: np.zeros((kind.size, 8), dtype=np.float32) for name in ("a", "b")}
    for i, name in enumerate(acts):
        acts[name][np.arange(kind.size), [KINDS[k][0] for k in kind]] = [KINDS[k][1 + i] for k in kind]
    labels = np.stack([kind == k for k in FACTORS.values()], axis=1).reshape(40, TOKENS_PER_IMAGE, len(FACTORS))
    return {n: TokenSource(n, x.reshape(40, TOKENS_PER_IMAGE, 8), chunk_rows=8) for n, x in acts.items()}, labels


def planted_dictionary() -> USAE:
    """The identity dictionary: latent j is dimension j in both models, so a token fires its kind's latent."""
    model = USAE({"a": 8, "b": 8}, SAEConfig(n_latents=8, k=1, aux_k=0), seed=0)
    with torch.no_grad():
        for name in model.names:
            model.W_enc[name].copy_(torch.eye(8))
            model.W_dec[name].copy_(torch.eye(8))
    model.meta = {"train": {"seed": 2}}
    return model


def test_planted_dictionary_counts_and_its_random_floor(tmp_path):
    sources, labels = planted_sources()
    model = planted_dictionary()
    factors = PlantedFactors(list(FACTORS), labels, model.names, 8, min_auroc=0.75)
    cfg = EvaluateConfig(top_n=2, batch_images=4, device="cpu")
    evaluate_sources(model, sources, cfg, tmp_path / "eval", device=CPU, factors=factors, baseline_sources=sources)
    out = json.loads((tmp_path / "eval" / "baselines.json").read_text())
    rows = {row["method"]: row for row in out["table"]}
    counts = ("universal", "universal_cofiring", "universal_beyond_chance", "universal_energetic", "universal_factor")
    # Latents 0-3 fire on the same 15 of 120 tokens in both models (1.9 co-fires by chance): beyond chance.
    assert [rows["usae"][key] for key in counts] == [5, 4, 4, 2, 2]
    assert [rows["pca"][key] for key in counts] == [None, None, None, None, None]
    # The floor is the random dictionary's own: evaluated on its own as if trained, it counts the same.
    moments = {n: Moments.empty(8, CPU) for n in model.names}
    for _, block in blocks(sources, cfg.batch_images, 40, spread=True):
        for n in model.names:
            moments[n].update(torch.from_numpy(block[n].reshape(-1, 8)))
    rand = random_dictionary(model.dims, model.cfg, {n: m.mean().float() for n, m in moments.items()}, seed=2)
    evaluate_sources(rand, sources, cfg, tmp_path / "rand", device=CPU, factors=factors.fresh())
    rand_metrics = json.loads((tmp_path / "rand" / "metrics.json").read_text())
    own = universal_counts(pd.read_parquet(tmp_path / "rand" / "concepts.parquet"), 2, rand_metrics["min_cofires"],
                           rand_metrics["n_tokens"])
    assert [rows["random_dictionary"][key] for key in counts] == [own[key] for key in counts]
    assert out["random_dictionary"]["universal_factor"] == own["universal_factor"]
    assert [own[key] for key in counts] != [5, 4, 4, 2, 2], own  # not the trained dictionary's


def test_a_stricter_chance_alpha_is_recorded_and_counted(tmp_path):
    # Latents 0-3 co-fire on 15 of 120 tokens where chance gives 1.875: P(X >= 15) = 1.7e-9, beyond chance at
    # 0.05 / 8 latents, not at 1e-9 / 8.
    sources, _ = planted_sources()
    cfg = EvaluateConfig(top_n=2, batch_images=4, device="cpu", chance_alpha=1e-9)
    evaluate_sources(planted_dictionary(), sources, cfg, tmp_path / "eval", device=CPU, baseline_sources=sources)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["chance_alpha"] == 1e-9 and metrics["config"]["chance_alpha"] == 1e-9
    rows = {row["method"]: row for row in json.loads((tmp_path / "eval" / "baselines.json").read_text())["table"]}
    assert (rows["usae"]["universal_cofiring"], rows["usae"]["universal_beyond_chance"]) == (4, 0)


def test_a_concept_tied_to_a_token_position_is_chance_not_shared(tmp_path):
    """Both models fire latent 0 at the first token of every image, whatever it shows, and latent 1 on the same
    randomly drawn later tokens (a shared concept); elsewhere each fires a latent of its own."""
    rng = np.random.default_rng(0)
    shared = rng.random((40, 2)) < 0.25  # tokens 1 and 2 of each image
    acts = {name: np.zeros((40, TOKENS_PER_IMAGE, 8), dtype=np.float32) for name in ("a", "b")}
    for i, name in enumerate(acts):
        acts[name][:, 0, 0] = 1.0
        acts[name][:, 1:, 1] = shared
        acts[name][:, 1:, 2 + i] = ~shared
    sources = {n: TokenSource(n, x, chunk_rows=8) for n, x in acts.items()}
    evaluate_sources(planted_dictionary(), sources, EvaluateConfig(top_n=2, batch_images=4, device="cpu"),
                     tmp_path / "eval", device=CPU)
    table = pd.read_parquet(tmp_path / "eval" / "concepts.parquet")
    n_shared = shared.sum(axis=0)
    assert table["cofires"][:2].tolist() == [40, n_shared.sum()]
    # Position by position, chance is N * sum_t prod_i (F_i[t, k] / N): latent 0 fires at token 0 of all 40 images
    # in both, so 40 co-fires are all chance; latent 1's chance is sum_t n_t^2 / 40 (about 5), far below.
    assert table["cofires_chance"][:2].tolist() == pytest.approx([40.0, (n_shared ** 2).sum() / 40])
    assert beyond_chance(table, 120)[:2].tolist() == [False, True]
    # Pooled over the positions (120 tokens, 40 fires each: 13.3 expected) the positional one would pass as shared.
    assert chance_cofires(table.drop(columns="cofires_chance"), 120)[0] == pytest.approx(40 ** 2 / 120)
    assert beyond_chance(table.drop(columns="cofires_chance"), 120)[:2].tolist() == [True, True]


def test_no_factor_floor_where_the_usae_has_no_factor_count(tmp_path):
    sources, _ = planted_sources()
    evaluate_sources(planted_dictionary(), sources, EvaluateConfig(top_n=2, batch_images=4, device="cpu"),
                     tmp_path / "eval", device=CPU, baseline_sources=sources)
    rows = json.loads((tmp_path / "eval" / "baselines.json").read_text())["table"]
    assert all("universal_factor" not in row and "universal_energetic" in row for row in rows)
    assert "factor_auroc" not in pd.read_parquet(tmp_path / "eval" / "concepts.parquet").columns
