"""Each model of a config as the pipeline runs it, against the same model without each speed-up, same run.

    python benchmarks/bench_backbone_kernels.py [--config config.yaml] [--batch 16] [--repeats 5] [--threads 2]
                                                [--device cpu|cuda] [--out PATH]
                                                [--models NAME ...]

(default ``--out``: ``benchmarks/results/backbone_kernels_<device>.json``)

Two speed-ups change how a backbone computes, not what:

- ``unfused`` (ONNX models): the exported LayerNorm, GELU, attention and bias chains left as
  onnx2torch converts them, without :func:`usae.backbones.onnx_fusion.fuse_onnx_graph`;
- ``contiguous`` (backbones with ``Backbone.channels_last``: torchvision's, onnx's, and the
  convolutional networks of timm and transformers): 4-D weights in the default (NCHW) order instead of channels-last.

For every model of the config, the backbone as built (``as_run``) and each variant that
applies to it are timed on one seeded batch of ``--batch`` images at the model's input size:

- ``forward``: one pass under ``inference_mode`` (what extraction does a batch);
- ``backward``: one pass and the gradient to the pixels (what MACO does a step).

Rounds rotate which backbone goes first; round 0 is a warm-up. Reported per model, variant and
pass: seconds of each (min / median / max over ``--repeats`` rounds) and ``variant / as_run``
(each round's ratio), the fused chain counts, and the largest absolute difference of the
variant's tokens from the as-run tokens (the speed-ups may change them by float rounding only).
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

# A script's own folder is first on sys.path: the shared helpers of the step benchmark.
from bench_train_step import spread


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


def unfused(spec):
    """The backbone built without fusing its ONNX chains."""
    real = onnx_backbone.fuse_onnx_graph
    onnx_backbone.fuse_onnx_graph = lambda graph: {}
    try:
        return create_backbone(spec)
    finally:
        onnx_backbone.fuse_onnx_graph = real


def variants(spec) -> dict:
    """``as_run`` and each variant without one speed-up that applies to ``spec``'s family."""
    built = {"as_run": create_backbone(spec)}
    if spec.library == "onnx":
        built["unfused"] = unfused(spec)
    if built["as_run"].channels_last:
        built["contiguous"] = create_backbone(spec).to(memory_format=torch.contiguous_format)
    return built


def largest_difference(a, b, pixels: torch.Tensor) -> float:
    with torch.inference_mode():
        return max((x - y).abs().max().item() for x, y in
                   zip(a.forward_tokens(pixels), b.forward_tokens(pixels), strict=True)
                   if x.numel())  # (a model without prefix tokens gives an empty prefix)


def bench_model(spec, args, device: torch.device) -> dict:
    built = {name: backbone.to(device) for name, backbone in variants(spec).items()}
    size = spec.image_size
    pixels = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    names = list(built)
    seconds = {name: {"forward": [], "backward": []} for name in names}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            for kind, call in passes(built[name], pixels, device).items():
                took = timed(call)
                if round_:
                    seconds[name][kind].append(took)
    result = {"fused_chains": getattr(built["as_run"], "fused", None), "variants": {}}
    for name in names[1:]:
        entry = {"max_abs_token_difference": largest_difference(built[name], built["as_run"], pixels)}
        for kind in ("forward", "backward"):
            base, other = seconds["as_run"][kind], seconds[name][kind]
            ratios = [o / b for o, b in zip(other, base, strict=True)]
            entry[kind] = {"as_run_s": spread(base), "variant_s": spread(other), "variant_over_as_run": spread(ratios)}
            print(f"{spec.key:10s} {kind:8s} as run {statistics.median(base):.3f} s  {name} "
                  f"{statistics.median(other):.3f} s  {name}/as run {min(ratios):.2f} / "
                  f"{statistics.median(ratios):.2f} / {max(ratios):.2f}", flush=True)
        result["variants"][name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--models", nargs="+", metavar="NAME", help="only these models of the config")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = load_config_file(args.config).models
    if unknown := set(args.models or ()) - set(models):
        parser.error(f"--models: {sorted(unknown)} not in {args.config} (it has {sorted(models)})")
    specs = [spec for name, spec in models.items() if args.models is None or name in args.models]
    report = {"config": str(args.config), "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "device": args.device, "torch": torch.__version__,
              "models": {spec.key: bench_model(spec, args, device) for spec in specs}}
    out = args.out or Path(f"benchmarks/results/backbone_kernels_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
