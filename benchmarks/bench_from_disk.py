"""Training from the stores: tokens/s of the whole training loop, and of its token loader alone.

    python benchmarks/bench_from_disk.py [--device cuda] [--images 3072] [--steps 400] [--loop|--threads|--gather]
        [--quick]

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

``--loop`` runs ``LOOP_RUNS`` instead: buffer sizes, and the loop alone on one fixed batch; each
run also reports the host time of ``optimizer_step`` (launching a step's kernels; on a GPU
it waits only when the launch queue is full) and the time the loop waited for batches.

The paper's 30-epoch ImageNet run is 7.5 G tokens: 3 hours on one GPU needs 0.7 M tokens/s.
Prints each run's rate and writes ``benchmarks/results/from_disk_<device>[_loop][_quick].json``.
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
from bench_train_step import available_cores, describe_device, git_state, load_average, machine, sync

HERE = Path(__file__).resolve().parent
TARGET = 0.7e6  # tokens/s: the paper's 30 ImageNet epochs (7.5 G tokens) in 3 hours

FIELDS = ("batch", "precision", "read_threads", "buffer", "cold", "fixed", "gather")
RUNS = [  # FIELDS: batch tokens, train.precision, train.read_threads, train.buffer_tokens, cold cache, fixed batch,
    # train.gather
    (BATCH, "fp32", 1, 2**20, False, False, "host"), (BATCH, "fp32", 4, 2**20, False, False, "host"),
    (BATCH, "bf16", 4, 2**20, False, False, "host"), (BATCH, "bf16", 8, 2**20, False, False, "host"),
    (4 * BATCH, "bf16", 4, 2**20, False, False, "host"), (4 * BATCH, "fp32", 4, 2**20, False, False, "host"),
    (BATCH, "bf16", 4, 2**20, True, False, "host"),
]
LOOP_RUNS = [
    (BATCH, "bf16", 1, 2**20, False, False, "host"), (BATCH, "bf16", 1, 2**18, False, False, "host"),
    (BATCH, "bf16", 1, 2**17, False, False, "host"), (BATCH, "bf16", 2, 2**18, False, False, "host"),
    (BATCH, "fp32", 1, 2**18, False, False, "host"), (BATCH, "bf16", 1, 2**20, False, True, "host"),
    (4 * BATCH, "bf16", 1, 2**18, False, False, "host"),
]
"""``--loop``: where a step's time goes besides the step. A batch is gathered piece by piece (one
``np.take`` per chunk of the buffer it draws from, each taking the GIL from the loop's thread):
smaller buffers mean fewer pieces. "fixed" runs train on the first batch over and over with
the loader's threads stopped, which times the loop alone."""
THREAD_RUNS = 2 * ([(BATCH, "bf16", t, 2**20, False, False, "host") for t in (1, 2, 4)]
                   + [(BATCH, "bf16", 2, 2**18, False, False, "host")])
"""``--threads``: ``train.read_threads`` 1, 2 and 4 at the default buffer, and 2 at a quarter of it; two rounds."""
GATHER_RUNS = 2 * [(BATCH, "bf16", 1, 2**18, False, False, gather) for gather in ("host", "device")] + [
    (BATCH, "bf16", 2, 2**18, False, False, "device"), (BATCH, "bf16", 1, 2**20, False, False, "device"),
    (BATCH, "fp32", 1, 2**18, False, False, "device"), (4 * BATCH, "bf16", 1, 2**18, False, False, "device"),
    (BATCH, "bf16", 1, 2**18, False, True, "host")]
"""``--gather``: ``train.gather: device`` (shuffle buffers on the GPU, one ``index_select`` a batch) against
``host`` at the paper preset's buffer (two rounds), then other settings with ``device``, and the loop alone on a
fixed batch."""


def loader_rate(paths: dict[str, Path], device, read_threads: int, epochs: int = 2, gather: str = "host",
                buffer: int = 2**20) -> dict:
    """Tokens/s of ``epochs`` epochs of batches, each on ``device`` as float32 (the loop's copy); ``gather``
    as ``train.gather``."""
    from usae.activations.loader import TokenLoader
    from usae.activations.sources import open_aligned

    loader = TokenLoader(open_aligned(paths), BATCH, buffer, seed=0, read_threads=read_threads,
                         pin_memory=device.type == "cuda" and gather == "host")
    n = sum(loader.steps_in_epoch(e) for e in range(epochs))
    start = time.perf_counter()
    stream = loader.batches(device=device if gather == "device" else None)
    for _ in range(n):
        batch = {k: t.to(device, non_blocking=True).float() for k, t in next(stream).items()}
    sync(device)
    seconds = time.perf_counter() - start
    stream.close()
    del batch
    return {"read_threads": read_threads, "gather": gather, "buffer": buffer, "tokens": n * BATCH,
            "seconds": seconds, "tokens_per_s": n * BATCH / seconds}


def drop_page_cache() -> bool:
    """Write back and drop Linux's page cache (needs root); False where that is not possible."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


class FixedBatches:
    """A stand-in for ``usae.training.loop.RunStream`` that yields the run's first batch forever
    and stops the loader once it has it, so the loop runs with no loader thread beside it."""

    def __init__(self, batches) -> None:
        self.first = next(batches)
        batches.close()

    def peek(self):
        return self.first

    def __iter__(self):
        return self

    def __next__(self):
        return self.first

    def close(self) -> None:
        pass


def timed_stream(base: type) -> type:
    """``base`` (a batch stream class) counting the seconds its ``next()`` waits, in ``.waited``."""
    class Timed(base):
        waited = 0.0

        def __next__(self):
            start = time.perf_counter()
            batch = super().__next__()
            Timed.waited += time.perf_counter() - start
            return batch
    return Timed


def train_rate(paths: dict[str, Path], folder: Path, device: str, *, batch: int, precision: str, read_threads: int,
               buffer: int, cold: bool, fixed: bool, gather: str, steps: int) -> dict:
    """One ``train_from_stores`` run; its log windows' tokens/s, and its host time per step."""
    import pandas as pd

    import usae.training.loop as loop
    from usae.config import SAEConfig, TrainConfig
    from usae.training.loop import train_from_stores

    dropped = drop_page_cache() if cold else False
    if cold and not dropped:
        return {"skipped": "could not drop the page cache (needs root on Linux)"}
    sae = SAEConfig(n_latents=6144, k=32, aux_k=256, dead_tokens="auto", decode="auto")
    cfg = TrainConfig(max_steps=steps, batch_tokens=batch, buffer_tokens=buffer, device=device, precision=precision,
                      read_threads=read_threads, gather=gather, log_every=max(10, steps // 8), checkpoint_every=10**9)
    # A folder of its own: a repeated run must not resume the finished one's checkpoints.
    run_dir = Path(tempfile.mkdtemp(prefix=f"run_{batch}_{precision}_{read_threads}_{buffer}_{gather}_", dir=folder))
    stream, step = loop.RunStream, loop.optimizer_step
    loop.RunStream = timed_stream(FixedBatches if fixed else stream)
    host = []  # seconds each optimizer_step call held the host (launching; it waits for the GPU only when full)

    def timed_step(*args, **kwargs):
        begin = time.perf_counter()
        out = step(*args, **kwargs)
        host.append(time.perf_counter() - begin)
        return out
    loop.optimizer_step = timed_step
    start = time.perf_counter()
    try:
        result = train_from_stores({n: str(p) for n, p in paths.items()}, sae, cfg, run_dir)
    finally:
        waited = loop.RunStream.waited
        loop.RunStream, loop.optimizer_step = stream, step
    seconds = time.perf_counter() - start
    windows = pd.read_parquet(result.log_path)["tokens_per_s"].tolist()
    steady = windows[1:] or windows
    return {"seconds": seconds, "steps": steps, "window_tokens_per_s": windows,
            "tokens_per_s": statistics.median(steady), "dropped_page_cache": dropped,
            "step_host_ms_median": 1e3 * statistics.median(host[1:] or host),
            "batch_wait_ms_mean": 1e3 * waited / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--images", type=int, default=3072, help="training images in each store (196 tokens each)")
    parser.add_argument("--steps", type=int, default=400, help="steps of each training run")
    parser.add_argument("--quick", action="store_true", help="128 images, 16 steps, two runs: a smoke test")
    parser.add_argument("--loop", action="store_true", help="LOOP_RUNS instead: the loop's own cost, buffer sizes")
    parser.add_argument("--threads", action="store_true", help="THREAD_RUNS instead: read_threads 1, 2, 4")
    parser.add_argument("--gather", action="store_true", help="GATHER_RUNS instead: train.gather device vs host")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    images, steps = (128, 16) if args.quick else (args.images, args.steps)
    chosen = LOOP_RUNS if args.loop else THREAD_RUNS if args.threads else GATHER_RUNS if args.gather else RUNS
    runs = [dict(zip(FIELDS, run)) for run in chosen]
    runs = runs[:1] + runs[-1:] if args.quick else runs
    if device.type == "cpu":  # bf16 autocasts on CUDA only
        runs = [{**run, "precision": "fp32"} for run in runs]
    threads = available_cores()
    print(f"device {describe_device(device)}, {threads} CPU threads, torch {torch.__version__}; "
          f"{images} images x {TOKENS} tokens x widths {list(WIDTHS.values())} (float16 stores)", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("USAE_BENCH_TMP")) as tmp:
        start = time.perf_counter()
        paths = write_stores(Path(tmp), images)
        print(f"stores written in {time.perf_counter() - start:.1f} s", flush=True)
        if args.gather:
            loaders = [loader_rate(paths, device, 1, gather=g, buffer=2**18) for g in ("host", "device")]
        else:
            loaders = [loader_rate(paths, device, t) for t in ((1, 4) if args.quick or args.loop or args.threads
                                                               else (1, 4, 8))]
        for row in loaders:
            print(f"loader read_threads {row['read_threads']}, gather {row['gather']}, buffer {row['buffer']}: "
                  f"{row['tokens_per_s'] / 1e6:.3f} M tokens/s", flush=True)
        trains = [train_row(paths, Path(tmp), args.device, run, steps) for run in runs]
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(device, threads), "git": git_state(), "images": images, "tokens_per_image": TOKENS,
              "widths": WIDTHS, "store_dtype": "float16", "target_tokens_per_s": TARGET,
              "load_average_1min": load_average(), "loader": loaders, "training": trains}
    kind = "_loop" if args.loop else "_threads" if args.threads else "_gather" if args.gather else ""
    name = f"from_disk_{device.type}{kind}{'_quick' if args.quick else ''}.json"
    out = args.out or HERE / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def train_row(paths: dict[str, Path], folder: Path, device: str, run: dict, steps: int) -> dict:
    """One training run of ``run``'s settings over the tokens of ``steps`` paper-sized steps; printed."""
    try:
        row = {**run, **train_rate(paths, folder, device, **run, steps=max(8, steps * BATCH // run["batch"]))}
    except Exception as err:  # noqa: BLE001 - one failed run must not lose the others' figures
        row = {**run, "error": repr(err)}
    rate = (f"{row['tokens_per_s'] / 1e6:.3f} M tokens/s (optimizer_step on the host {row['step_host_ms_median']:.1f} "
            f"ms, waiting for batches {row['batch_wait_ms_mean']:.1f} ms a step)" if "tokens_per_s" in row
            else row.get("skipped") or f"failed: {row['error']}")
    settings = ", ".join(f"{k} {v}" for k, v in run.items())
    print(f"train {settings}: {rate}", flush=True)
    return row


if __name__ == "__main__":
    main()
