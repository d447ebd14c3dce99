"""Where a training step's time goes: torch.profiler over the default step at paper shapes.

    python benchmarks/profile_train_step.py [--threads 1 2] [--device cpu|cuda] [--precision fp32|bf16] [--quick]

Profiles ``usae.training.step.optimizer_step`` as ``bench_train_step.py`` times it, in the
variant the default configuration runs (sparse decode, sparse encoder gradient; paper scheme,
loss mse, aux_k 256, Adam), AuxK idle and live (a tenth of the latents dead), for each thread
count asked: after warm-up steps, one profiled step per source model. Ops are aten ops grouped
by name and input shapes, ranked by self CPU time, each with its share of the total self time
(which, ops being timed on the calling thread, is the profiled steps' time). On CUDA they are
ranked by self device time (the kernels each op launched), the GPU's share of a step. Written to
``benchmarks/results/train_step_profile_<device>[_bf16][_quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch
from bench_train_step import FULL, HERE, QUICK, git_state, load_average, machine, make_batches, our_step, sync
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

TOP = 25
"""Ops kept per profile, by self CPU time."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, sources in turn")
    parser.add_argument("--quick", action="store_true", help="the benchmark's small shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="train.precision (bf16: CUDA)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    shape = dict(QUICK if args.quick else FULL)
    device = torch.device(args.device)
    _, batch = make_batches(shape, device)
    profiles = []
    for threads in args.threads:
        for live in (False, True):
            profiles.append(profile_step(batch, shape, device, threads=threads, live=live, warmup=args.warmup,
                                         precision=args.precision))
            print_profile(profiles[-1])
    name = f"train_step_profile_{device.type}{'_bf16' if args.precision == 'bf16' else ''}"
    out = args.out or HERE / "results" / f"{name}{'_quick' if args.quick else ''}.json"
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(device, max(args.threads)), "load_average_1min": load_average(),
              "git": git_state(), "quick": args.quick, "shapes": shape, "precision": args.precision,
              "grouping": f"aten ops by name and input shapes; ms_per_step = self {clock(device)} time / profiled "
                          f"steps; share = self {clock(device)} time / all ops' self {clock(device)} time",
              "profiles": profiles}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def clock(device: torch.device) -> str:
    """Whose time ops are ranked by: the host's on a CPU, the kernels' on a GPU."""
    return "device" if device.type == "cuda" else "CPU"


def profile_step(batch: dict[str, torch.Tensor], shape: dict, device: torch.device, *, threads: int, live: bool,
                 warmup: int, precision: str = "fp32") -> dict:
    """The default step's top ops, one profiled step per source after ``warmup`` steps."""
    torch.set_num_threads(threads)
    step, names = our_step(batch, shape, device, aux_k=shape["aux_k"], live=live, decode="sparse", sparse_grad=True,
                           precision=precision)
    for i in range(warmup):
        step(names[i % len(names)])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities, record_shapes=True) as prof:
        for name in names:
            step(name)
        sync(device)
    wall_ms = 1e3 * (time.perf_counter() - start) / len(names)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # An op's device time is its kernels': the total counts the kernels alone, so nothing twice.
    counted = [e for e in prof.key_averages() if device.type != "cuda" or e.device_type == DeviceType.CUDA]
    total = sum(getattr(e, key) for e in counted)
    return {"threads": threads, "aux_live": live, "sources": names, "precision": precision, "ranked_by": key,
            "profiled_ms_per_step": wall_ms, "self_ms_per_step": total / 1e3 / len(names),
            "ops": top_ops(prof.key_averages(group_by_input_shape=True), total, len(names), key),
            "ops_by_name": top_ops(prof.key_averages(), total, len(names), key)}


def top_ops(events: list, total: float, steps: int, key: str = "self_cpu_time_total") -> list[dict]:
    """The TOP events by ``key`` (self CPU or self device time): per step, and as a share of ``total``."""
    ranked = sorted(events, key=lambda e: -getattr(e, key))[:TOP]
    return [{"op": e.key, "input_shapes": str(e.input_shapes) if e.input_shapes else "",
             "calls_per_step": e.count / steps, "ms_per_step": getattr(e, key) / 1e3 / steps,
             "share": getattr(e, key) / total if total else 0.0} for e in ranked]


def print_profile(p: dict) -> None:
    print(f"\n{p['threads']} thread(s), AuxK {'live' if p['aux_live'] else 'idle'}: "
          f"{p['profiled_ms_per_step']:.0f} ms/step profiled (self time {p['self_ms_per_step']:.0f} ms)")
    for op in p["ops_by_name"][:12]:
        print(f"  {op['ms_per_step']:7.1f} ms {100 * op['share']:5.1f}%  x{op['calls_per_step']:<4.3g} {op['op']}")
    print("  by input shapes:")
    for op in p["ops"]:
        print(f"  {op['ms_per_step']:7.1f} ms {100 * op['share']:5.1f}%  x{op['calls_per_step']:<4.3g} "
              f"{op['op']:<45.45} {op['input_shapes'][:70]}")


if __name__ == "__main__":
    sys.exit(main())
