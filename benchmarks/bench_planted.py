"""Planted-truth benchmark: train the USAE with each scheme on the same planted activations.

    python benchmarks/bench_planted.py [--quick] [--schemes paper all_sources sparc] [--threads N]

Setting of the training issue: 3 models of widths 64/96/128, 128 shared + 32 private atoms
each, about 6 active per token. Prints, per scheme: share of shared atoms recovered at
cosine >= 0.9 per model, AUROC of firing entropy for shared vs private concepts, the R2
matrix (per-dimension form), tokens/s and wall time, and the same for the random-dictionary
baseline (the USAE untrained, its floor); writes benchmarks/results/planted.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from usae.activations.sources import open_arrays
from usae.config import SAEConfig, TrainConfig
from usae.evaluation.baselines import random_dictionary
from usae.planted.scoring import Recovery, evaluate_recovery
from usae.registry import SCHEMES
from usae.sae.model import USAE
from usae.planted.activations import PlantedConfig, generate_planted
from usae.training.loop import train_usae

SAE = SAEConfig(n_latents=512, k=8, aux_k=64, dead_tokens=20_000, decode="sparse")
TRAIN = TrainConfig(epochs=60, batch_tokens=1024, buffer_tokens=65_536, lr=3e-3, warmup=0.02, log_every=100,
                    checkpoint_every=100_000, device="cpu", seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps (smoke test)")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES.names()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = generate_planted(PlantedConfig(n_tokens=60_000, seed=0))
    means = {n: torch.from_numpy(data.acts[n].mean(axis=0)) for n in data.names}
    floor = random_dictionary({n: data.acts[n].shape[1] for n in data.names}, SAE, means, seed=TRAIN.seed)
    results = {"random_dictionary": {"steps": 0, "wall_s": 0.0, "tokens_per_s": 0.0,
                                     **_figures(evaluate_recovery(data, floor))}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = data.save(Path(tmp) / "data")
        for scheme in args.schemes:
            cfg = replace(TRAIN, scheme=scheme, device=args.device, epochs=6 if args.quick else TRAIN.epochs)
            start = time.perf_counter()
            result = train_usae(open_arrays({n: paths[n] for n in data.names}), SAE, cfg, Path(tmp) / scheme)
            wall = time.perf_counter() - start
            model = USAE.load(result.model_dir)
            results[scheme] = {"steps": result.steps, "wall_s": wall, "tokens_per_s": result.tokens_per_s,
                               **_figures(evaluate_recovery(data, model))}
            if SCHEMES.get(scheme).encode is not None:  # also scored with the codes it was trained on
                shared = evaluate_recovery(data, model, shared_index=True)
                results[scheme]["r2_shared_index"] = shared.r2.round(3).tolist()
    for scheme, r in results.items():
        print(f"\n== {scheme}: {r['steps']} steps in {r['wall_s']:.0f} s ({r['tokens_per_s']:.0f} tokens/s)")
        print("shared atoms recovered (cos >= 0.9):", {k: f"{v:.1%}" for k, v in r["shared_recovered"].items()})
        print("private atoms recovered (cos >= 0.9):", {k: f"{v:.1%}" for k, v in r["private_recovered"].items()})
        auroc = r["entropy_auroc"]
        auroc = "undefined (no concept matches a planted atom)" if auroc is None else f"{auroc:.3f}"
        print(f"firing-entropy AUROC shared vs private: {auroc}")
        print("R2 (row: source, column: target):\n", np.array(r["r2"]))
        if "r2_shared_index" in r:
            print("R2, paired tokens encoded together (shared indices):\n", np.array(r["r2_shared_index"]))
    out = Path(__file__).parent / "results" / ("planted_quick.json" if args.quick else "planted.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")


def _figures(rec: Recovery) -> dict:
    return {"shared_recovered": rec.shared_recovered, "shared_mean_cos": rec.shared_mean_cos,
            "private_recovered": rec.private_recovered,
            "entropy_auroc": None if np.isnan(rec.entropy_auroc) else rec.entropy_auroc, "r2": rec.r2.round(3).tolist()}


if __name__ == "__main__":
    main()
