"""Training from the stores: tokens/s of the whole training loop, and of its token loader alone.

    python benchmarks/bench_from_disk.py [--device cuda] [--images 3072] [--steps 400] [--quick]

Writes three aligned stores as ``prepare`` writes them (float16, the paper's widths
384/768/768, 196 tokens an image; ``bench_loader.write_stores``), then measures in one run:

1. **Loader**: ``TokenLoader`` batches (pinned memory on CUDA, each copied to the device and
   widened to float32 as the loop does) for ``read_threads`` 1, 4 and 8: tokens/s served
   over 2 epochs, start-up included. This is the most a training run from these stores can
   reach, whatever the step costs.
2. **Training**: ``train_from_stores`` (the pipeline's training stage: loader, start-up, steps,
   logging, checkpoints) at the paper's shapes (m 6144, K 32, AuxK 256, paper scheme) for
   several batch sizes, precisions and read-thread counts, each run over the tokens of
   ``--steps`` paper-sized steps (a larger batch takes fewer steps). Its rate is the loop's own
   (``tokens_per_s`` of each log window, which ends in a device sync): the median over the
   windows after the first, whose start-up it would include. ``cold`` runs drop the page
   cache first (root on Linux; skipped elsewhere), so their first epoch is read from disk.

The paper's 30-epoch ImageNet run is 7.5 G tokens: 3 hours on one GPU needs 0.7 M tokens/s.
Prints a table and writes ``benchmarks/results/from_disk_<device>[_quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

# A script's own folder is first on sys.path: the other benchmarks' helpers.
from bench_loader import BATCH, TOKENS, WIDTHS, write_stores
from bench_train_step import describe_device, git_state, load_average, machine

HERE = Path(__file__).resolve().parent
TARGET = 0.7e6  # tokens/s: the paper's 30 ImageNet epochs (7.5 G tokens) in 3 hours

RUNS = [  # (batch_tokens, precision, read_threads, cold page cache)
    (BATCH, "fp32", 1, False), (BATCH, "fp32", 4, False), (BATCH, "bf16", 4, False), (BATCH, "bf16", 8, False),
    (4 * BATCH, "bf16", 4, False), (4 * BATCH, "fp32", 4, False), (BATCH, "bf16", 4, True),
]


def loader_rate(paths: dict[str, Path], device, read_threads: int, epochs: int = 2) -> dict:
    """Tokens/s of ``epochs`` epochs of batches, each on ``device`` as float32 (the loop's copy)."""
    import torch

    from usae.activations.loader import TokenLoader
    from usae.activations.sources import open_aligned

    loader = TokenLoader(open_aligned(paths), BATCH, 2**20, seed=0, read_threads=read_threads,
                         pin_memory=device.type == "cuda")
    n = sum(loader.steps_in_epoch(e) for e in range(epochs))
    start = time.perf_counter()
    stream = loader.batches()
    for _ in range(n):
        batch = {k: t.to(device, non_blocking=True).float() for k, t in next(stream).items()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    stream.close()
    del batch
    return {"read_threads": read_threads, "tokens": n * BATCH, "seconds": seconds, "tokens_per_s": n * BATCH / seconds}


def drop_page_cache() -> bool:
    """Write back and drop Linux's page cache (needs root); False where that is not possible."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def train_rate(paths: dict[str, Path], folder: Path, device: str, *, batch: int, precision: str, read_threads: int,
               cold: bool, steps: int) -> dict:
    """One ``train_from_stores`` run; its log windows' tokens/s."""
    import pandas as pd

    from usae.config import SAEConfig, TrainConfig
    from usae.training.loop import train_from_stores

    dropped = drop_page_cache() if cold else False
    if cold and not dropped:
        return {"skipped": "could not drop the page cache (needs root on Linux)"}
    sae = SAEConfig(n_latents=6144, k=32, aux_k=256, dead_tokens="auto", decode="auto")
    cfg = TrainConfig(max_steps=steps, batch_tokens=batch, buffer_tokens=2**20, device=device, precision=precision,
                      read_threads=read_threads, log_every=max(10, steps // 8), checkpoint_every=10**9)
    run_dir = folder / f"run_{batch}_{precision}_{read_threads}_{'cold' if cold else 'warm'}"
    start = time.perf_counter()
    result = train_from_stores({n: str(p) for n, p in paths.items()}, sae, cfg, run_dir)
    seconds = time.perf_counter() - start
    windows = pd.read_parquet(result.log_path)["tokens_per_s"].tolist()
    steady = windows[1:] or windows
    return {"seconds": seconds, "steps": steps, "window_tokens_per_s": windows,
            "tokens_per_s": statistics.median(steady), "dropped_page_cache": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--images", type=int, default=3072, help="training images in each store (196 tokens each)")
    parser.add_argument("--steps", type=int, default=400, help="steps of each training run")
    parser.add_argument("--quick", action="store_true", help="128 images, 16 steps, two runs: a smoke test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    images, steps = (128, 16) if args.quick else (args.images, args.steps)
    runs = RUNS[:1] + RUNS[-1:] if args.quick else RUNS
    if device.type == "cpu":  # bf16 autocasts on CUDA only
        runs = [(b, "fp32", t, c) for b, _, t, c in runs]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"device {describe_device(device)}, {threads} CPU threads, torch {torch.__version__}; "
          f"{images} images x {TOKENS} tokens x widths {list(WIDTHS.values())} (float16 stores)", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("USAE_BENCH_TMP")) as tmp:
        start = time.perf_counter()
        paths = write_stores(Path(tmp), images)
        print(f"stores written in {time.perf_counter() - start:.1f} s", flush=True)
        loaders = [loader_rate(paths, device, t) for t in ((1, 4) if args.quick else (1, 4, 8))]
        for row in loaders:
            print(f"loader read_threads {row['read_threads']}: {row['tokens_per_s'] / 1e6:.3f} M tokens/s", flush=True)
        trains = []
        for batch, precision, read_threads, cold in runs:
            row = {"batch_tokens": batch, "precision": precision, "read_threads": read_threads, "cold": cold,
                   **train_rate(paths, Path(tmp), args.device, batch=batch, precision=precision,
                                read_threads=read_threads, cold=cold, steps=max(8, steps * BATCH // batch))}
            trains.append(row)
            rate = f"{row['tokens_per_s'] / 1e6:.3f} M tokens/s" if "tokens_per_s" in row else row["skipped"]
            print(f"train batch {batch} {precision} read_threads {read_threads}{' cold' if cold else ''}: {rate}",
                  flush=True)
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(device, threads), "git": git_state(), "images": images, "tokens_per_image": TOKENS,
              "widths": WIDTHS, "store_dtype": "float16", "target_tokens_per_s": TARGET,
              "load_average_1min": load_average(), "loader": loaders, "training": trains}
    out = args.out or HERE / "results" / f"from_disk_{device.type}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
