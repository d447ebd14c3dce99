"""ONNX models with their exported operator chains fused against the same models unfused, same run.

    python benchmarks/bench_onnx_fusion.py [--config config.yaml] [--batch 16] [--repeats 5] [--threads 2]
                                           [--device cpu|cuda] [--out benchmarks/results/onnx_fusion_<device>.json]

For every ``library: onnx`` model of the config, two backbones are built from the same file:
``fused`` (what the pipeline runs: :func:`usae.backbones.onnx_fusion.fuse_onnx_graph` applied
after conversion) and ``unfused`` (onnx2torch's graph as converted). On one seeded batch of
``--batch`` images at the model's input size, each is timed for

- ``forward``: one pass under ``inference_mode`` (what extraction does a batch);
- ``backward``: one pass and the gradient to the pixels (what MACO does a step).

Rounds alternate which backbone goes first. Reported per model and pass: seconds of each
(min / median / max over ``--repeats`` rounds) and ``unfused / fused`` (each round's ratio),
the fused chain counts, and the largest absolute difference of the tokens (fusion must change
them by float rounding only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import usae.backbones.onnx_backbone as onnx_backbone
from usae.backbones import create_backbone
from usae.config.files import load_config_file


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def passes(backbone, pixels: torch.Tensor, device: torch.device) -> dict:
    """The two timed passes of ``backbone`` (synchronised on CUDA)."""
    def forward() -> None:
        with torch.inference_mode():
            backbone.forward_tokens(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def backward() -> None:
        x = pixels.clone().requires_grad_(True)
        torch.autograd.grad(backbone.forward_tokens(x)[1].square().mean(), x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return {"forward": forward, "backward": backward}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def bench_model(spec, args, device: torch.device) -> dict:
    fused = create_backbone(spec).to(device)
    real = onnx_backbone.fuse_onnx_graph
    onnx_backbone.fuse_onnx_graph = lambda graph: {}
    try:
        unfused = create_backbone(spec).to(device)
    finally:
        onnx_backbone.fuse_onnx_graph = real
    size = spec.image_size
    pixels = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        difference = max((a - b).abs().max().item() for a, b in
                          zip(fused.forward_tokens(pixels), unfused.forward_tokens(pixels), strict=True)
                          if a.numel())  # (a model without prefix tokens gives an empty prefix)
    calls = {"fused": passes(fused, pixels, device), "unfused": passes(unfused, pixels, device)}
    seconds = {name: {"fused": [], "unfused": []} for name in ("forward", "backward")}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for which in (("fused", "unfused") if round_ % 2 else ("unfused", "fused")):
            for name, call in calls[which].items():
                took = timed(call)
                if round_:
                    seconds[name][which].append(took)
    result = {"fused_chains": fused.fused, "max_abs_token_difference": difference}
    for name, times in seconds.items():
        ratios = [u / f for u, f in zip(times["unfused"], times["fused"], strict=True)]
        result[name] = {"fused_s": spread(times["fused"]), "unfused_s": spread(times["unfused"]),
                        "unfused_over_fused": spread(ratios)}
        print(f"{spec.key:10s} {name:8s} fused {statistics.median(times['fused']):.3f} s  unfused "
              f"{statistics.median(times['unfused']):.3f} s  unfused/fused {min(ratios):.2f} / "
              f"{statistics.median(ratios):.2f} / {max(ratios):.2f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = [spec for spec in load_config_file(args.config).models.values() if spec.library == "onnx"]
    if not specs:
        raise SystemExit(f"{args.config} has no library: onnx model")
    report = {"config": str(args.config), "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "device": args.device, "torch": torch.__version__,
              "models": {spec.key: bench_model(spec, args, device) for spec in specs}}
    out = args.out or Path(f"benchmarks/results/onnx_fusion_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
