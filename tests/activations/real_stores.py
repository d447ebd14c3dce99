"""Real activation stores for tests: an extraction part of a tiny random ViT over generated images, and the
aligned store `prepare` makes from it."""

from pathlib import Path

import numpy as np
from PIL import Image

from usae.activations.extract import extract_activations
from usae.activations.prepare import prepare_activations
from usae.config import BackboneSpec, ExtractConfig, ManifestConfig, PrepareConfig
from usae.data.manifest import build_manifest

SPEC = BackboneSpec(key="tiny", name="vit_small_patch16_224", pretrained=False, image_size=64,
                    kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
N_IMAGES = 12


def build(root: Path, compressor: str) -> dict[str, Path]:
    """Images, manifest, part ``acts/tiny/part0.zarr`` and aligned store ``aligned/tiny/final.zarr`` under
    ``root``; the parts are kept."""
    rng = np.random.default_rng(0)
    folder = root / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    manifest = root / "manifest.parquet"
    build_manifest(ManifestConfig(source="folder", path=str(root / "imgs"), val_fraction=0.3), manifest)
    part = root / "acts" / "tiny" / "part0.zarr"
    extract_activations(manifest, SPEC, ExtractConfig(n_parts=1, batch_size=4, num_workers=0, device="cpu",
                                                      images_per_chunk=2, compressor=compressor), 0, part)
    aligned = root / "aligned" / "tiny" / "final.zarr"
    prepare_activations([part], manifest, PrepareConfig(grid=2, images_per_chunk=2, compressor=compressor),
                        aligned, aligned.with_suffix(".stats.json"))
    return {"root": root, "manifest": manifest, "part": part, "aligned": aligned}
