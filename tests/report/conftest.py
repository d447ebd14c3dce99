"""A real tiny evaluated run for the report tests, built once per session and never modified by a test
(a test that changes it works on a copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usae import paths
from usae.config import (
    BackboneSpec,
    EvaluateConfig,
    ExtractConfig,
    ManifestConfig,
    PrepareConfig,
    SAEConfig,
    TrainConfig,
)

MODELS = {
    "p16": BackboneSpec(key="p16", name="vit_small_patch16_224", pretrained=False, image_size=32,
                        kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2}),
    "p8": BackboneSpec(key="p8", name="vit_small_patch16_224", pretrained=False, image_size=32,
                       kwargs={"depth": 1, "embed_dim": 24, "num_heads": 2, "patch_size": 8}),
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Manifest -> extraction -> aligned stores -> training -> evaluation, on a folder with bad files.

    The folder holds 14 readable images, an empty file, a text file named .jpg, a byte-identical
    copy of one image, and one image deleted after the manifest was built.
    """
    from usae.activations.extract import extract_activations
    from usae.activations.prepare import prepare_activations
    from usae.data.manifest import build_manifest
    from usae.evaluation.run import evaluate_run
    from usae.training.loop import train_from_stores

    base = tmp_path_factory.mktemp("report_run")
    images = base / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4)):
        folder = images / split / "things"
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{split}_{i:02d}.png")
    (images / "train" / "things" / "empty.jpg").write_bytes(b"")
    (images / "val" / "things" / "notes.jpg").write_text("not a picture\n")
    shutil.copyfile(images / "train" / "things" / "train_03.png", images / "val" / "things" / "val_copy.png")
    root = base / "results"
    manifest = paths.stage_path(paths.MANIFEST, root, dataset="bad")
    build_manifest(ManifestConfig(name="bad", source="folder", path=str(images)), manifest)
    deleted = images / "train" / "things" / "train_05.png"
    deleted.unlink()

    extract = ExtractConfig(n_parts=2, batch_size=4, num_workers=0, device="cpu", images_per_chunk=4,
                            keep_prefix=False)
    stores = {}
    for key, spec in MODELS.items():
        fields = {"dataset": "bad", "model": key, "layer": spec.layer_tag}
        parts = [paths.stage_path(paths.EXTRACT_PART, root, part=k, dataset="bad", backbone=key)
                 for k in range(extract.n_parts)]
        for k, part in enumerate(parts):
            extract_activations(manifest, spec, extract, k, part)
        stores[key] = paths.stage_path(paths.ALIGNED, root, **fields)
        prepare_activations(parts, manifest, PrepareConfig(grid=2, stats_images=8, images_per_chunk=4), stores[key],
                            paths.stage_path(paths.ALIGNED_STATS, root, **fields))
    run_dir = paths.stage_path(paths.RUN_DIR, root, run="usae")
    train_from_stores(stores, SAEConfig(n_latents=16, k=2, aux_k=4, dead_tokens=100, decode="sparse"),
                      TrainConfig(max_steps=4, batch_tokens=16, buffer_tokens=64, device="cpu", log_every=2,
                                  checkpoint_every=10, read_threads=1), run_dir)
    evaluate_run(run_dir / "model", stores, EvaluateConfig(tau=0.1, top_n=2, batch_images=4, device="cpu"),
                 run_dir / "eval")
    return {"run": run_dir, "manifest": manifest, "images": images, "deleted": deleted}


COMPARED = {"usae": ("a", "b"), "slow": ("a", "b"), "solo_a": ("a",)}
"""Runs of :func:`compared_runs`: their models. ``slow`` differs from ``usae`` by train.lr only."""


@pytest.fixture(scope="session")
def compared_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three trained and evaluated runs on planted activations, in a results tree (``results/runs/<run>``).

    ``usae`` and ``slow`` span models a and b (train.lr 0.003 and 0.001), ``solo_a`` model a alone.
    """
    from usae.arrays import evaluate_arrays, train_arrays
    from usae.config.arrays import settings_from_overrides
    from usae.planted.activations import PlantedConfig, generate_planted

    base = tmp_path_factory.mktemp("compared")
    data = generate_planted(PlantedConfig(widths=(12, 16), names=("a", "b"), n_shared=12, n_private=4,
                                          n_tokens=1200, active_shared=2.0, active_private=1.0)).save(base / "acts")
    common = ["sae.n_latents=32", "sae.k=3", "sae.aux_k=8", "sae.dead_tokens=400", "sae.decode=sparse",
              "train.max_steps=24", "train.batch_tokens=100", "train.buffer_tokens=400", "train.log_every=4",
              "train.device=cpu", "train.read_threads=1", "evaluate.device=cpu", "evaluate.batch_images=2"]
    lrs = {"usae": 0.003, "slow": 0.001, "solo_a": 0.003}
    runs = {}
    for name, models in COMPARED.items():
        settings = settings_from_overrides([*common, f"train.lr={lrs[name]}"])
        runs[name] = paths.stage_path(paths.RUN_DIR, base / "results", run=name)
        train_arrays({m: data[m] for m in models}, settings, runs[name])
        evaluate_arrays(runs[name], settings.evaluate)
    return runs
