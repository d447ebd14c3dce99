"""Coordinated activation maximisation speed: optimised images per second, per model, against a
plain forward and backward of the same backbone at the same batch (the floor no MACO step can beat).

    python benchmarks/bench_maco.py [--config config.yaml] [--device cpu|cuda] [--quick]

For each model of the config (real weights, read from the weights cache: run
``usae weights -c <config>`` first), with a USAE of the config's ``sae`` shape (random
weights: speed does not depend on them) and the config's ``maco`` settings:

1. ``maco_step``: one step of :func:`usae.maco.optimize.maximise`'s loop (phase -> image, random
   crops and noise, the model's preprocessing, backbone, SAE pre-codes, objective, backward,
   NAdam), for ``batch_concepts`` concepts x ``crops`` crops;
2. ``backbone_fwd_bwd``: the backbone alone on the same number of input-sized images, forward and
   backward to the pixels.

``ratio`` = backbone_fwd_bwd time / maco_step time (1.0 = no overhead). ``--quick`` uses two tiny
random ViTs instead of the config's models. Results: ``benchmarks/results/maco_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from usae.backbones.registry import create_backbone
from usae.config import BackboneSpec, SAEConfig, load_config
from usae.config.maco import MacoConfig
from usae.device import resolve_device
from usae.maco.image import PhaseImage, random_crops
from usae.maco.objective import ConceptReader, mean_over_tokens
from usae.maco.spectrum import ImageSpectrum, one_over_f, random_phase
from usae.sae.model import USAE

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    specs, sae, maco = setup(args)
    spectrum = one_over_f(maco.image_size)  # speed does not depend on the exact spectrum
    rows = []
    for name, spec in specs.items():
        backbone = create_backbone(spec).to(device)
        usae = USAE({name: backbone.layout.d_model}, sae, seed=0).to(device)
        reader = ConceptReader(name, backbone, usae).to(device)
        maco_ms = time_it(lambda: maco_step(reader, spectrum, maco, device), args.repeats, device)
        n = maco.batch_concepts * maco.crops
        plain_ms = time_it(lambda: backbone_step(backbone, n, device), args.repeats, device)
        rows.append({"model": name, "images_per_step": n, "maco_step_ms": maco_ms, "backbone_fwd_bwd_ms": plain_ms,
                     "maco_images_per_s": 1000 * n / maco_ms, "ratio": plain_ms / maco_ms})
        print(f"{name:12s} {n:3d} images/step  maco {maco_ms:8.1f} ms  backbone fwd+bwd {plain_ms:8.1f} ms  "
              f"{1000 * n / maco_ms:6.2f} images/s  ratio {plain_ms / maco_ms:.2f}", flush=True)
    out = args.out or HERE / "results" / f"maco_{device.type}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(maco, k) for k in ("image_size", "crops", "batch_concepts", "steps")}
    out.write_text(json.dumps({"device": str(device), "threads": args.threads, "settings": settings, "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def setup(args: argparse.Namespace) -> tuple[dict[str, BackboneSpec], SAEConfig, MacoConfig]:
    if args.quick:
        tiny = {"depth": 2, "embed_dim": 48, "num_heads": 2}
        specs = {f"vit{i}": BackboneSpec(key=f"vit{i}", name="vit_small_patch16_224", pretrained=False, image_size=64,
                                         kwargs=tiny) for i in (1, 2)}
        return specs, SAEConfig(n_latents=256, k=8), MacoConfig(image_size=80, batch_concepts=2, crops=1)
    pipe = load_config(yaml.safe_load(Path(args.config).read_text()))
    return dict(pipe.models), pipe.sae, MacoConfig(**yaml.safe_load(Path(args.config).read_text()).get("maco") or {})


def maco_step(reader: ConceptReader, spectrum: ImageSpectrum, cfg: MacoConfig, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    phase = random_phase(cfg.batch_concepts, spectrum, generator).to(device).requires_grad_(True)
    concepts = torch.arange(cfg.batch_concepts, device=device).repeat_interleave(cfg.crops)
    crops = random_crops(PhaseImage(spectrum, device)(phase), n_crops=cfg.crops, box=(cfg.crop_min, cfg.crop_max),
                         out_size=reader.input_size, noise=cfg.noise, generator=generator)
    score = mean_over_tokens(reader(crops, concepts)).sum()
    (-score).backward()
    torch.optim.NAdam([phase], lr=cfg.lr).step()


def backbone_step(backbone, n: int, device: torch.device) -> None:
    size = backbone.preprocessing.image_size
    pixels = torch.rand(n, 3, size, size, device=device, requires_grad=True)
    _, patches = backbone.forward_tokens(pixels)
    patches.float().mean().backward()


def time_it(step, repeats: int, device: torch.device) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="models, sae shape and maco settings")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--quick", action="store_true", help="two tiny random ViTs (smoke test)")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
