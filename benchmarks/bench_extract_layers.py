"""Extraction of several layers of one backbone: one shared job against one job a layer, same images, same run.

    python benchmarks/bench_extract_layers.py [--config presets/depth.yaml] [--images 128] [--repeats 3]
                                              [--threads 2] [--out benchmarks/results/extract_layers_cpu.json]

Models of a config that differ only in ``layer`` are one extraction job
(:func:`usae.config.extraction_groups`), whose backbone computes every layer from one forward
pass a batch where its family can (:class:`usae.backbones.layer_set.LayerSet`). Before, each
(model, layer) was its own job. For every backbone of the config with two or more layers
(presets/depth.yaml: MobileNetV2 at 4 torchvision nodes, DINOv2 ViT-S/14 at 4 ONNX tensors),
this times ``extract_activations`` over ``--images`` generated images (the config's synthetic
dataset, one part, the config's batch size, ``--threads`` torch threads, no loader processes):

- ``separate``: one call a layer (what the jobs did before), summed;
- ``shared``: one call for all the layers (what the job does now).

Rounds alternate the order of the two. Reported per backbone: wall and CPU seconds of each,
and ``separate / shared`` (min / median / max over the rounds, each a ratio within its round).
Every layer's stored tokens are compared between the two: ``identical`` says whether they are
equal bit for bit (the speed-up must not change a single value).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from usae.activations.extract import extract_activations
from usae.activations.parts import open_part_layer
from usae.config import extraction_groups
from usae.config.files import load_config_file
from usae.data.manifest import build_manifest

# A script's own folder is first on sys.path: the shared helpers of the step benchmark.
from bench_train_step import spread


def timed(call) -> tuple[float, float]:
    """Wall and process CPU seconds of ``call()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def one_round(manifest: Path, specs: list, extract_cfg, scratch: Path, order: tuple[str, str]) -> dict:
    """Both ways once, in ``order``, each into fresh stores; their times and whether every layer's tokens agree."""
    runs = {
        "separate": lambda: [extract_activations(manifest, s, extract_cfg, 0, scratch / "separate" / f"{s.key}.zarr")
                             for s in specs],
        "shared": lambda: extract_activations(manifest, specs, extract_cfg, 0, scratch / "shared" / "part.zarr"),
    }
    times = {}
    for mode in order:
        shutil.rmtree(scratch / mode, ignore_errors=True)
        times[mode] = timed(runs[mode])
    identical = all(np.array_equal(open_part_layer(scratch / "separate" / f"{s.key}.zarr").patches[:],
                                   open_part_layer(scratch / "shared" / "part.zarr", s.layer_tag).patches[:])
                    for s in specs)
    return {"order": list(order), "wall_s": {m: t[0] for m, t in times.items()},
            "cpu_s": {m: t[1] for m, t in times.items()}, "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("presets/depth.yaml"))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/extract_layers_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config_file(args.config)
    extract_cfg = dataclasses.replace(cfg.extract, n_parts=1, num_workers=0, device="cpu")
    report = {"config": str(args.config), "images": args.images, "threads": args.threads, "backbones": {}}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        dataset = dataclasses.replace(cfg.dataset, synthetic=dataclasses.replace(cfg.dataset.synthetic,
                                                                                 n_images=args.images))
        manifest = scratch / "data" / "manifest.parquet"
        build_manifest(dataset, manifest)
        for name, keys in extraction_groups(cfg.models).items():
            if len(keys) < 2:
                continue
            specs = [cfg.models[k] for k in keys]
            work = scratch / name
            work.mkdir()
            rounds = [one_round(manifest, specs, extract_cfg, work,
                                ("separate", "shared") if r % 2 == 0 else ("shared", "separate"))
                      for r in range(args.repeats)]
            report["backbones"][name] = summarise(keys, specs, rounds)
            show(name, report["backbones"][name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def summarise(keys, specs, rounds: list[dict]) -> dict:
    return {
        "models": list(keys), "library": specs[0].library, "name": specs[0].name,
        "layers": [s.layer_tag for s in specs], "rounds": rounds,
        "separate_over_shared_wall": spread([r["wall_s"]["separate"] / r["wall_s"]["shared"] for r in rounds]),
        "separate_over_shared_cpu": spread([r["cpu_s"]["separate"] / r["cpu_s"]["shared"] for r in rounds]),
        "identical": all(r["identical"] for r in rounds),
    }


def show(name: str, result: dict) -> None:
    wall, cpu = result["separate_over_shared_wall"], result["separate_over_shared_cpu"]
    median = {m: statistics.median(r["wall_s"][m] for r in result["rounds"]) for m in ("separate", "shared")}
    print(f"{name} ({result['library']} {result['name']}, {len(result['layers'])} layers): separate "
          f"{median['separate']:.1f} s, shared {median['shared']:.1f} s (median wall); separate / shared wall "
          f"{wall['min']:.2f} / {wall['median']:.2f} / {wall['max']:.2f}, CPU {cpu['min']:.2f} / {cpu['median']:.2f} / "
          f"{cpu['max']:.2f} (min / median / max); tokens identical: {result['identical']}")


if __name__ == "__main__":
    main()
