"""Disk a run keeps per image, by category, against the reference's fp32 npz per image of the same models.

    python benchmarks/bench_disk.py [--results results] [--images 320] [--out benchmarks/results/disk.json]

The reference (YorkUCVIL/UniversalSAE) trains from one uncompressed ``np.savez`` per image that
holds every model's float32 tokens at its native grid, CLS/register tokens included
(``combine_cached_acts.py``). Its size is measured here by writing one such file, of the shapes
read from the stores, in the same run; nothing is a hard-coded ratio.

- ``--results DIR``: a finished run's results folder (read only). Every file is put in one
  category: ``acts`` (extraction parts), ``aligned`` (aligned stores and their statistics),
  ``runs/models`` (models, training logs), ``checkpoints`` (the newest two of each run, kept
  to resume), ``eval``, ``report`` (reports and the comparison page), ``maco``, ``images``
  (generated images) and ``other`` (manifests, job logs and benchmarks). Per image = bytes / images in the aligned stores (all datasets). The reference's
  shapes come from the aligned stores' recorded source layout (``model.layout``).
- paper widths, always: DINOv2 ViT-S/14 (CLS + 16 x 16 x 384), SigLIP (14 x 14 x 768, no CLS) and
  ViT-B/16 (CLS + 14 x 14 x 768) on ``--images`` seeded images (a fifth in ``val``): their
  extraction parts are written as ``usae extract`` writes them (default ``extract`` settings,
  one part each) and prepared to the paper's 14 x 14 grid by ``prepare_activations`` itself
  (default ``prepare`` settings), then counted as above. Zarr stores a split's last, partial
  chunk at full size; at the default 320 images both splits are whole chunks (256 and 64
  images), as good as ImageNet's 1.28 M images, where one partial chunk is nothing.

Prints each category per image and as a share of the reference, the total with the parts and
without them (``extract.keep: false`` deletes them), and writes it all as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from usae.activations.prepare import prepare_activations
from usae.activations.parts import create_part_layer
from usae.activations.store import atomic_store, base_attrs, open_store, write_array
from usae.config import ExtractConfig, PrepareConfig
from usae.data.manifest import COLUMNS, manifest_hash

CATEGORIES = ("acts", "aligned", "runs/models", "checkpoints", "eval", "report", "maco", "images", "other")
RUN_FILES = {"model": "runs/models", "checkpoints": "checkpoints", "train_log.parquet": "runs/models",
             "report": "report", "maco": "maco"}
DATASET_FILES = {"acts": "acts", "aligned": "aligned", "synthetic": "images", "maco_spectrum.npz": "maco"}
PAPER = {"dinov2": {"n_prefix": 1, "grid": [16, 16], "d_model": 384},
         "siglip": {"n_prefix": 0, "grid": [14, 14], "d_model": 768},
         "vit": {"n_prefix": 1, "grid": [14, 14], "d_model": 768}}


def category(rel: PurePath) -> str:
    """The category of a file at ``rel`` inside a results folder (the layout of ``usae.paths``)."""
    top, rest = rel.parts[0], rel.parts[1:]
    if top == "runs" and len(rest) > 1:
        return "eval" if rest[1].startswith("eval") else RUN_FILES.get(rest[1], "other")
    if top == "compare":
        return "report"
    if top in ("logs", "benchmarks") or not rest:
        return "other"
    return DATASET_FILES.get(rest[0], "other")


def bytes_by_category(results: Path) -> dict[str, dict[str, int]]:
    """Apparent bytes (file sizes) and allocated bytes (what ``du`` counts) of every file, by category."""
    sizes = {"apparent": defaultdict(int), "allocated": defaultdict(int)}
    for folder, _, files in os.walk(results):
        for name in files:
            path = Path(folder) / name
            st = path.lstat()
            kind = category(path.relative_to(results))
            sizes["apparent"][kind] += st.st_size
            sizes["allocated"][kind] += st.st_blocks * 512
    return {key: {c: int(table[c]) for c in CATEGORIES} for key, table in sizes.items()}


def aligned_stores(results: Path) -> list[Path]:
    return sorted(p for p in results.glob("*/aligned/*/*.zarr") if (p / "zarr.json").is_file())


def dataset_images(results: Path) -> tuple[int, dict[str, dict]]:
    """Images in the aligned stores, summed over datasets, and each model's native layout (from its aligned store)."""
    images, layouts = {}, {}
    for path in aligned_stores(results):
        group = open_store(path)
        images[path.parts[-4]] = sum(group[s]["rows"].shape[0] for s in ("train", "val"))
        layouts[group.attrs["model"]["key"]] = group.attrs["model"]["layout"]
    if not images:
        raise FileNotFoundError(f"no aligned store under {results}/<dataset>/aligned/: not a finished results folder")
    return sum(images.values()), layouts


def reference_npz_bytes(layouts: dict[str, dict], folder: Path) -> dict[str, int]:
    """One reference file per image: every model's float32 tokens (prefix + native grid) in one np.savez."""
    arrays = {key: np.zeros((lay["n_prefix"] + int(np.prod(lay["grid"])), lay["d_model"]), np.float32)
              for key, lay in sorted(layouts.items())}
    path = folder / "reference_image.npz"
    np.savez(path, **arrays)
    st = path.stat()
    return {"apparent": st.st_size, "allocated": st.st_blocks * 512}


def measure(results: Path, scratch: Path) -> dict:
    """Per-image bytes by category and their shares of the reference's npz, with and without the parts."""
    n_images, layouts = dataset_images(results)
    reference = reference_npz_bytes(layouts, scratch)
    out = {"results": str(results), "images": n_images, "models": layouts, "reference_bytes_per_image": reference}
    for key, table in bytes_by_category(results).items():
        per_image = {c: b / n_images for c, b in table.items()}
        total = sum(per_image.values())
        out[key] = {"bytes_per_image": per_image, "share_of_reference": {c: v / reference[key]
                                                                         for c, v in per_image.items()},
                    "total_share": total / reference[key],
                    "total_share_without_acts": (total - per_image["acts"]) / reference[key]}
    return out


def write_paper_run(root: Path, n_images: int) -> Path:
    """A results folder with the paper's three models: parts as extraction writes them, aligned stores by prepare."""
    dataset = root / "paper"
    dataset.mkdir(parents=True)
    table = pd.DataFrame({"index": range(n_images), "image_id": [f"im{i:05d}" for i in range(n_images)],
                          "path": [f"/images/{i}.png" for i in range(n_images)],
                          "split": ["val" if i % 5 == 0 else "train" for i in range(n_images)], "label": None,
                          "width": 224, "height": 224, "status": "ok", "reason": ""})[list(COLUMNS)]
    manifest = dataset / "manifest.parquet"
    table.to_parquet(manifest)
    extract, prepare = ExtractConfig(n_parts=1), PrepareConfig(grid=14)
    rng = np.random.default_rng(0)
    for key, layout in PAPER.items():
        part = dataset / "acts" / key / "part0.zarr"
        write_part(part, key, layout, manifest_hash(table), n_images, extract, rng)
        aligned = dataset / "aligned" / key / "final.zarr"
        prepare_activations([part], manifest, prepare, aligned, aligned.with_suffix(".stats.json"))
    return root


def write_part(path: Path, key: str, layout: dict, manifest: str, n: int, cfg: ExtractConfig,
               rng: np.random.Generator) -> None:
    """The arrays and attributes ``extract_activations`` writes for one part (tokens seeded, not computed)."""
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(stage="extract", models={key: "final"}, manifest_hash=manifest, part=0,
                                      n_parts=1, n_images=n, dtype="float16"))
        arrays = create_part_layer(group, "final", {"model": {"key": key, "layout": layout}, **layout}, n,
                                   prefix=cfg.keep_prefix, chunk_rows=cfg.images_per_chunk, compressor=cfg.compressor)
        for array in arrays.values():
            array[:] = rng.standard_normal(array.shape, dtype=np.float32).astype(np.float16)
        write_array(group, "rows", np.arange(n, dtype=np.int64))
        write_array(group, "valid", np.ones(n, dtype=bool))


def show(title: str, result: dict) -> None:
    ref = result["reference_bytes_per_image"]["apparent"]
    print(f"{title}: {result['images']} images; reference npz {ref / 1e3:.1f} kB per image "
          f"({', '.join(sorted(result['models']))})")
    table = result["apparent"]
    for c in CATEGORIES:
        print(f"  {c:12s} {table['bytes_per_image'][c] / 1e3:9.1f} kB/image  {table['share_of_reference'][c]:6.3f}x")
    print(f"  total        {sum(table['bytes_per_image'].values()) / 1e3:9.1f} kB/image  {table['total_share']:6.3f}x"
          f"   without acts/ (extract.keep: false): {table['total_share_without_acts']:.3f}x")
    allocated = result["allocated"]
    print(f"  allocated on disk (du): total {allocated['total_share']:.3f}x, without acts/ "
          f"{allocated['total_share_without_acts']:.3f}x of the reference file's own allocation")


def git_commit() -> dict:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": run("git", "rev-parse", "HEAD"), "dirty": bool(run("git", "status", "--porcelain"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="a finished run's results folder (read only)")
    parser.add_argument("--images", type=int, default=320, help="images of the paper-widths run (default 320)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/disk.json"))
    args = parser.parse_args()
    report = {"git": git_commit()}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.results is not None:
            report["results"] = measure(args.results.resolve(), scratch)
            show(f"results {args.results}", report["results"])
        paper = write_paper_run(scratch / "paper_results", args.images)
        report["paper_widths"] = measure(paper, scratch)
        report["paper_widths"]["results"] = "paper widths, written by this run"
        show("paper widths (grid 14, float16)", report["paper_widths"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
