"""Peak memory (and time) of evaluation over many validation tokens at the paper's sizes.

    python benchmarks/bench_evaluate_memory.py [--tokens 1000000] [--quick]

Widths 384/768/768, m = 6144, K = 32, 196 tokens per image. Tokens are generated on the
fly by a lazy array (seeded, per block), so the data itself takes no memory: what is
measured is the evaluator's own footprint. Target of the evaluation issue: under 2 GB peak
RSS for 1M tokens. Prints the peak RSS, the baseline RSS before evaluating (Python, torch
and the model), and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from usae.activations.sources import TokenSource
from usae.config import EvaluateConfig, SAEConfig
from usae.evaluation.evaluate import evaluate_sources
from usae.sae.model import USAE

WIDTHS = {"dinov2": 384, "siglip": 768, "vit": 768}
TOKENS_PER_IMAGE = 196


class LazyTokens:
    """A read-only (images, tokens, d) float16 array whose rows are generated when read."""

    def __init__(self, n_images: int, d: int, seed: int) -> None:
        self.shape = (n_images, TOKENS_PER_IMAGE, d)
        self.dtype = np.dtype(np.float16)
        self.seed = seed

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.shape[0])
        rng = np.random.default_rng([self.seed, start])
        return rng.standard_normal((stop - start,) + self.shape[1:], np.float32).astype(np.float16)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20k tokens (smoke test)")
    args = parser.parse_args()
    n_tokens = 20_000 if args.quick else args.tokens
    n_images = -(-n_tokens // TOKENS_PER_IMAGE)
    torch.manual_seed(0)
    model = USAE(WIDTHS, SAEConfig(n_latents=6144, k=32, aux_k=0)).eval()
    sources = {name: TokenSource(name, LazyTokens(n_images, d, seed=i), chunk_rows=32)
               for i, (name, d) in enumerate(WIDTHS.items())}
    baseline = rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate_sources(model, sources, EvaluateConfig(device="cpu", top_n=8, batch_images=32),
                                   Path(tmp) / "eval", device=torch.device("cpu"))
    wall = time.perf_counter() - start
    peak = rss_mb()
    result = {"tokens": metrics["n_tokens"], "images": metrics["n_images"], "n_latents": 6144, "k": 32,
              "widths": WIDTHS, "baseline_rss_mb": round(baseline), "peak_rss_mb": round(peak),
              "wall_s": round(wall, 1), "tokens_per_s": round(metrics["n_tokens"] / wall)}
    print(json.dumps(result, indent=2))
    print(f"peak RSS {peak / 1024:.2f} GB for {metrics['n_tokens']:,} tokens "
          f"({'under' if peak < 2048 else 'OVER'} the 2 GB target); baseline {baseline / 1024:.2f} GB")
    out = Path(__file__).parent / "results" / ("evaluate_memory_quick.json" if args.quick else "evaluate_memory.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
