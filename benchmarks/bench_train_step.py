"""Training-step speed: our USAE step vs the reference code's, against the encoder-GEMM bound.

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--precision fp32|bf16] [--images N] [--quick]

Measures in one run, on random seeded activations already on the device (no I/O):

1. Our optimiser step: ``usae.training.step.optimizer_step``, the function the training loop
   runs each step (zero_grad -> losses -> backward -> decoder-gradient projection -> grad-norm
   clip -> optimizer step -> decoder renormalisation -> dead-latent update), with the loop's
   optimiser (``make_optimizer``) and settings (default ``TrainConfig``: Adam, lr 3e-4, clip
   1.0, fp32), paper scheme, one source, loss mse, aux_k 256; AuxK idle (no latent dead) and
   live (10% dead), decoding sparse and dense, and with the encoder's dense gradient (the path
   before the sparse one). Each row says ``aux_live`` and ``default`` (what the default
   configuration runs: sparse gradient, the faster decoding, as ``sae.decode: auto`` picks).
2. The reference code's step (``benchmarks/reference_step.py``).
3. The encoder-GEMM bound: the time of the two dense matmuls no TopK SAE step can avoid,
   the encoder forward (n x d) @ (d x m) and its weight gradient (d x n) @ (n x m), in the
   step's precision (fp32, or bf16 for ``--precision bf16``), at the exact shapes, timed on
   this device in this run.

``--precision bf16`` (CUDA only) runs our step as ``train.precision: bf16`` does (bf16 autocast,
fp32 weights and optimiser); the reference step stays fp32, as the reference code runs.
``--images`` sets the batch (default 32 images x 196 tokens, the paper's).

Each step uses one source model; sources go round-robin so each model is the source equally
often (the expectation of the paper's uniform draw). A variant's ms/step is the mean over
sources of the median time of that source's steps, after warm-up steps for every source.
Results are printed as a table and written to
``benchmarks/results/train_step_<device>[_bf16][_<images>img][_quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# A script's own folder is first on sys.path, so the reference imports from benchmarks/.
from reference_step import PATCH_GRID_MODELS, ReferenceTrainer, interpolate_patch_tokens

from usae.config import SAEConfig, TrainConfig
from usae.registry import SCHEMES
from usae.sae.model import USAE
from usae.training.dead import DeadLatents
from usae.training.step import make_optimizer, optimizer_step

HERE = Path(__file__).resolve().parent

SEED = 0
MODELS = {"DinoV2": 384, "SigLIP": 768, "ViT": 768}
"""The paper's three models: DINOv2 ViT-S/14 (16x16 patch grid), SigLIP and ViT-B/16 (14x14)."""

FULL = {"images": 32, "grid": 14, "grid_dino": 16, "n_latents": 6144, "k": 32, "aux_k": 256,
        "warmup": 1, "repeats": 3, "gemm_repeats": 3}
"""Paper shapes: 32 images x 196 tokens = 6,272 tokens a step, m = 6144, K = 32. On a 2-core
CPU a reference step takes ~10 s, so the run keeps to 1 warm-up step and 3 timed steps per
source (about 3 minutes on a lightly loaded machine); on a GPU steps are cheap and CUDA_STEPS applies."""
CUDA_STEPS = {"warmup": 6, "repeats": 10, "gemm_repeats": 10}
QUICK = {**FULL, "images": 4, "n_latents": 1536, "warmup": 3, "repeats": 2}
"""Smoke test: 784 tokens, m = 1536 (same widths, K, grids)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = run_shape(args)
    device = torch.device(args.device)
    threads = available_cores()
    torch.set_num_threads(threads)
    seed_everything(SEED)
    n_tokens = shape["images"] * shape["grid"] ** 2
    print(f"device {describe_device(device)}, {threads} threads, torch {torch.__version__}, "
          f"precision {args.precision}")
    print(f"shapes: models {MODELS}, m = {shape['n_latents']}, K = {shape['k']}, {n_tokens} tokens a step "
          f"({shape['images']} images x {shape['grid']}x{shape['grid']}); "
          f"{shape['warmup']} warm-up step(s), then {shape['repeats']} timed steps per source model")

    started = time.perf_counter()
    load_before = load_average()
    if device.type == "cpu" and load_before is not None and load_before > 0.25 * threads:
        print(f"warning: load average {load_before:.2f} on {threads} cores; other processes will skew the timings")
    rows, gemm = run_variants(shape, device, n_tokens, args.precision)
    bound = encoder_bound(gemm, n_tokens, shape["n_latents"])
    ref_ms = rows[0]["ms_per_step"]
    for row in rows:
        row["tokens_per_s"] = n_tokens / (row["ms_per_step"] / 1e3)
        # Each figure at the median step, and over the spread of steps (slowest, fastest).
        for key, ms in (("ratio_vs_reference", ref_ms), ("share_of_encoder_gemm_bound", bound["ms_per_step"])):
            row[key] = ms / row["ms_per_step"]
            row[f"{key}_min"] = ms / row["max_ms_per_step"]
            row[f"{key}_max"] = ms / row["min_ms_per_step"]
    print()
    print_table(rows, bound)
    print(f"(total {time.perf_counter() - started:.0f} s)")

    out = args.out or HERE / "results" / result_name(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device, threads),
        "load_average_1min": {"before": load_before, "after": load_average()},
        "git": git_state(),
        "quick": args.quick,
        "precision": args.precision,
        "shapes": {"models": MODELS, "n_tokens": n_tokens, **shape},
        "timing": "ms_per_step = mean over source models of the median of that source's timed steps",
        "gemm": gemm,
        "encoder_gemm_bound": bound,
        "variants": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test (< 30 s)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="our step's train.precision (bf16: CUDA only) and the GEMM bound's dtype")
    parser.add_argument("--images", type=int, help="images a step, 196 tokens each (default: 32, the paper's)")
    parser.add_argument("--repeats", type=int, help="timed steps per source model (default: cpu 3, cuda 10)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, sources in turn (default: cpu 1, cuda 6)")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/train_step_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.precision == "bf16" and args.device != "cuda":
        parser.error("--precision bf16 is CUDA's (train.precision: bf16 autocasts on CUDA only)")
    return args


def result_name(args: argparse.Namespace) -> str:
    parts = [f"train_step_{args.device}"] + (["bf16"] if args.precision == "bf16" else [])
    parts += [f"{args.images}img"] if args.images is not None else []
    return "_".join(parts + (["quick"] if args.quick else [])) + ".json"


def run_shape(args: argparse.Namespace) -> dict:
    """FULL or QUICK, with CUDA_STEPS on a GPU and the command line's step counts."""
    shape = dict(QUICK if args.quick else FULL)
    if args.device == "cuda":
        shape.update(CUDA_STEPS)
    if args.repeats is not None:
        shape["repeats"] = args.repeats
    if args.warmup is not None:
        shape["warmup"] = args.warmup
    if args.images is not None:
        shape["images"] = args.images
    return shape


def run_variants(shape: dict, device: torch.device, n_tokens: int, precision: str = "fp32") -> tuple[list[dict], dict]:
    """The reference step, then ours with AuxK idle and live (see :func:`bench_ours`); and the
    encoder GEMMs, timed before and after the steps (the faster of the two per matmul)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gemm_before = measure_gemm(device, n_tokens, shape["n_latents"], shape["gemm_repeats"], dtype)
    rows = []
    ref_batch, our_batch = make_batches(shape, device)
    rows.append(bench_reference(ref_batch, shape, device))
    print_row(rows[-1])
    for live in (False, True):
        for decode, sparse_grad in (("sparse", True), ("dense", True), ("sparse", False)):
            rows.append(bench_ours(our_batch, shape, device, aux_k=shape["aux_k"], live=live, decode=decode,
                                   sparse_grad=sparse_grad, precision=precision))
            print_row(rows[-1])
    mark_default(rows)
    del ref_batch, our_batch
    gemm = best_gemm(gemm_before, measure_gemm(device, n_tokens, shape["n_latents"], shape["gemm_repeats"], dtype))
    return rows, gemm


def mark_default(rows: list[dict]) -> None:
    """``default``: the variants the default configuration runs (AuxK idle or live), i.e. the
    sparse encoder gradient with the faster decoding, which is what ``sae.decode: auto`` picks
    by timing both at start-up."""
    for row in rows:
        row["default"] = False
    for live in (False, True):
        ours = [r for r in rows if r.get("aux_live") is live and r.get("sparse_grad")]
        min(ours, key=lambda r: r["ms_per_step"])["default"] = True


def encoder_bound(gemm: dict, n_tokens: int, m: int) -> dict:
    """The step time no TopK SAE step can beat: the encoder's forward and weight-gradient GEMMs."""
    bound_ms = statistics.fmean(g["fwd_ms"] + g["wgrad_ms"] for g in gemm["per_width"].values())
    print(f"GEMM: peak {gemm['peak_gflops']:.1f} GFLOP/s; encoder bound {bound_ms:.1f} ms/step")
    flops_per_token = statistics.fmean(4 * d * m for d in MODELS.values())
    return {"ms_per_step": bound_ms, "tokens_per_s": n_tokens / (bound_ms / 1e3),
            "flops_per_token": flops_per_token,
            "tokens_per_s_at_peak_gflops": gemm["peak_gflops"] * 1e9 / flops_per_token,
            "definition": "mean over source widths d of the measured time of (n x d)@(d x m) plus "
                          f"(d x n)@(n x m) in {gemm['dtype']}: the encoder forward and weight gradient"}


# -- measuring ----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def spread(values: list[float]) -> dict:
    """min / median / max of repeated measurements, with the values themselves (the benchmarks' summary)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": list(values)}


def available_cores() -> int:
    """Cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[str], torch.Tensor], sources: list[str], device: torch.device, warmup: int,
               repeats: int) -> tuple[dict[str, list[float]], float]:
    """Per source, the seconds of each timed step; and the last step's loss (checked finite).

    ``warmup`` untimed steps come first, with the sources in turn.
    """
    loss = None
    for i in range(warmup):
        loss = step(sources[i % len(sources)])
    sync(device)
    times: dict[str, list[float]] = {s: [] for s in sources}
    for _ in range(repeats):
        for source in sources:
            sync(device)
            start = time.perf_counter()
            loss = step(source)
            sync(device)
            times[source].append(time.perf_counter() - start)
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value}")
    return times, value


def summarise(name: str, description: str, times: dict[str, list[float]], loss: float) -> dict:
    medians = {s: 1e3 * statistics.median(t) for s, t in times.items()}
    return {"variant": name, "description": description, "ms_per_step": statistics.fmean(medians.values()),
            "min_ms_per_step": statistics.fmean(1e3 * min(t) for t in times.values()),
            "max_ms_per_step": statistics.fmean(1e3 * max(t) for t in times.values()),
            "median_ms_by_source": medians, "all_ms_by_source": {s: [1e3 * x for x in t] for s, t in times.items()},
            "last_loss": loss}


def _gemm_width(device: torch.device, gen: torch.Generator, n: int, d: int, m: int, repeats: int,
                dtype: torch.dtype) -> dict:
    """Median ms and GFLOP/s of the encoder's forward and weight-gradient matmuls at width ``d`` (its tensors are
    freed on return, before the next width's)."""
    x = torch.randn(n, d, device=device, generator=gen).to(dtype)
    w = torch.randn(d, m, device=device, generator=gen).to(dtype)
    g = torch.randn(n, m, device=device, generator=gen).to(dtype)
    out = torch.empty(n, m, device=device, dtype=dtype)
    wgrad = torch.empty(d, m, device=device, dtype=dtype)
    entry = {}
    for label, fn in (("fwd", lambda: torch.mm(x, w, out=out)), ("wgrad", lambda: torch.mm(x.t(), g, out=wgrad))):
        fn()
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        entry[f"{label}_ms"] = 1e3 * seconds
        entry[f"{label}_gflops"] = 2 * n * d * m / seconds / 1e9
    return entry


def measure_gemm(device: torch.device, n: int, m: int, repeats: int, dtype: torch.dtype = torch.float32) -> dict:
    """Time of the encoder's forward and weight-gradient matmuls in ``dtype``, for each model width."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    per_width = {str(d): _gemm_width(device, gen, n, d, m, repeats, dtype) for d in sorted(set(MODELS.values()))}
    peak = max(max(e["fwd_gflops"], e["wgrad_gflops"]) for e in per_width.values())
    return {"dtype": str(dtype).removeprefix("torch."),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "per_width": per_width, "peak_gflops": peak}


def best_gemm(first: dict, second: dict) -> dict:
    """Per matmul, the faster of two measurements."""
    per_width = {}
    for d, a in first["per_width"].items():
        b = second["per_width"][d]
        per_width[d] = {}
        for label in ("fwd", "wgrad"):
            best = a if a[f"{label}_ms"] <= b[f"{label}_ms"] else b
            per_width[d][f"{label}_ms"] = best[f"{label}_ms"]
            per_width[d][f"{label}_gflops"] = best[f"{label}_gflops"]
    peak = max(max(e["fwd_gflops"], e["wgrad_gflops"]) for e in per_width.values())
    return {**first, "per_width": per_width, "peak_gflops": peak,
            "measured": "before and after the steps; the faster of the two per matmul"}


def make_batches(shape: dict, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded standard-normal activations: the reference's (images, tokens, d) layout, and ours.

    The reference reads the DINOv2-like model's 16x16 grid and resizes it each step; our
    pipeline stores tokens already aligned, so our batch holds that model's resized tokens.
    """
    gen = torch.Generator().manual_seed(SEED)
    images, grid, grid_dino = shape["images"], shape["grid"], shape["grid_dino"]
    ref = {}
    for name, d in MODELS.items():
        tokens = grid_dino**2 if name in PATCH_GRID_MODELS else grid**2
        ref[name] = torch.randn(images, tokens, d, generator=gen).to(device)
    ours = {}
    for name, acts in ref.items():
        if name in PATCH_GRID_MODELS:
            acts = interpolate_patch_tokens(acts, grid_dino, grid)
        ours[name] = acts.reshape(-1, acts.shape[-1]).contiguous()
    return ref, ours


def _reference_times(batch: dict[str, torch.Tensor], shape: dict, device: torch.device
                     ) -> tuple[dict[str, list[float]], float]:
    """The reference's step times and last loss (its trainer freed on return)."""
    seed_everything(SEED)
    dims = {n: t.shape[-1] for n, t in batch.items()}
    trainer = ReferenceTrainer(dims, shape["n_latents"], shape["k"], device=device, seed=SEED,
                               grid_in=shape["grid_dino"], grid_out=shape["grid"])
    return time_steps(lambda s: trainer.step(batch, s), list(dims), device, shape["warmup"], shape["repeats"])


def bench_reference(batch: dict[str, torch.Tensor], shape: dict, device: torch.device) -> dict:
    times, loss = _reference_times(batch, shape, device)
    row = summarise("reference", "YorkUCVIL/UniversalSAE step: BN encoder, dense TopK codes, dense decode into "
                    "every (non-detached) decoder, L1 + 0.1 x dense top-half aux, grid resize, AdamW",
                    times, loss)
    return {**row, "aux_live": False, "default": False}  # the reference has no AuxK


def bench_ours(batch: dict[str, torch.Tensor], shape: dict, device: torch.device, *, aux_k: int, live: bool,
               decode: str, sparse_grad: bool, precision: str = "fp32") -> dict:
    """``optimizer_step`` as the training loop runs it, with the loop's optimiser and default settings;
    ``live``: a tenth of the latents dead, so AuxK works; ``sparse_grad`` False: the encoder
    differentiated through its dense pre-activations (the path before the sparse gradient)."""
    step, names = our_step(batch, shape, device, aux_k=aux_k, live=live, decode=decode, sparse_grad=sparse_grad,
                           precision=precision)
    times, loss = time_steps(step, names, device, shape["warmup"], shape["repeats"])
    del step
    grad = "" if sparse_grad else " dense-grad"
    row = summarise(f"ours aux {'live' if live else 'idle'} {decode}{grad}",
                    f"usae optimizer_step (the training loop's step), paper scheme, loss mse, aux_k={aux_k} "
                    f"({'10% of latents dead' if live else 'no latent dead'}), decode {decode}, encoder gradient "
                    f"{'sparse' if sparse_grad else 'dense (before the sparse gradient)'}, full optimiser step, "
                    f"precision {precision}", times, loss)
    return {**row, "aux_k": aux_k, "aux_live": live, "decode": decode, "sparse_grad": sparse_grad,
            "precision": precision}


def our_step(batch: dict[str, torch.Tensor], shape: dict, device: torch.device, *, aux_k: int, live: bool,
             decode: str, sparse_grad: bool,
             precision: str = "fp32") -> tuple[Callable[[str], torch.Tensor], list[str]]:
    """One optimiser step of a fresh seeded USAE (see :func:`bench_ours`) as ``step(source) -> loss``,
    and the model names."""
    seed_everything(SEED)
    cfg = SAEConfig(n_latents=shape["n_latents"], k=shape["k"], loss="mse", aux_k=aux_k, decode=decode,
                    dead_tokens=1_000_000)  # a fixed window: the benchmark marks latents dead itself
    train = TrainConfig(precision=precision)  # scheme paper, Adam, lr 3e-4, grad clip 1.0
    model = USAE({n: t.shape[-1] for n, t in batch.items()}, cfg, seed=SEED).to(device).train()
    model.sparse_decode = decode == "sparse"
    model.sparse_grad = sparse_grad
    optimizer = make_optimizer(model, train)
    scheme = SCHEMES.get(train.scheme, setting="train.scheme")(model.names, SEED)
    dead = DeadLatents(model.names, cfg.n_latents, device)
    if live:
        # Start with a seeded tenth of each model's latents dead, so the AuxK term is live.
        gen = torch.Generator().manual_seed(SEED)
        for name in model.names:
            idx = torch.randperm(cfg.n_latents, generator=gen)[: cfg.n_latents // 10].to(device)
            dead.since[name][idx] = cfg.dead_tokens
        dead.refresh(cfg.dead_tokens)  # the loop refreshes the dead lists every log_every steps

    def step(source: str) -> torch.Tensor:
        out = optimizer_step(model, optimizer, batch, [source], scheme=scheme, dead=dead, lr=train.lr, cfg=train)
        return out.loss.detach()

    return step, list(model.names)


# -- reporting ----------------------------------------------------------------------------------
def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}"


def machine(device: torch.device, threads: int) -> dict:
    return {"device": describe_device(device), "threads": threads, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}


def git_state() -> dict:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": run("git", "rev-parse", "HEAD"), "dirty": bool(run("git", "status", "--porcelain"))}


def print_row(row: dict) -> None:
    by_source = ", ".join(f"{s} {ms:.0f}" for s, ms in row["median_ms_by_source"].items())
    print(f"  {row['variant']:<32} {row['ms_per_step']:9.1f} ms/step  (median ms by source: {by_source})", flush=True)


def print_table(rows: list[dict], bound: dict) -> None:
    header = (f"{'variant':<32} {'ms/step':>9} {'min-max':>13} {'tokens/s':>10} {'vs reference':>13} "
              f"{'share of bound (min-max)':>25} {'aux live':>9} {'default':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        spread = f"{row['min_ms_per_step']:.0f}-{row['max_ms_per_step']:.0f}"
        share = (f"{100 * row['share_of_encoder_gemm_bound']:.1f}% ({100 * row['share_of_encoder_gemm_bound_min']:.0f}"
                 f"-{100 * row['share_of_encoder_gemm_bound_max']:.0f})")
        print(f"{row['variant']:<32} {row['ms_per_step']:9.1f} {spread:>13} {row['tokens_per_s']:10.0f} "
              f"{row['ratio_vs_reference']:12.2f}x {share:>25} {str(row['aux_live']):>9} {str(row['default']):>8}")
    print(f"{'encoder-GEMM bound':<32} {bound['ms_per_step']:9.1f} {'':>13} {bound['tokens_per_s']:10.0f}")


if __name__ == "__main__":
    sys.exit(main())
