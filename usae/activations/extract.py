"""Stage 2: run one backbone over one part of the manifest and store its tokens as float16 Zarr.

Jobs are split by (model, layer, part); each writes its own store, so parts run side by
side on a cluster and a failed job loses one part at most.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from usae.activations.store import ChunkWriter, atomic_store, base_attrs, create_array
from usae.backbones import Backbone, Preprocessing, create_backbone
from usae.config import BackboneSpec, ExtractConfig, to_dict
from usae.data.images import ImageReadError, load_rgb
from usae.data.manifest import manifest_hash, read_manifest, usable
from usae.device import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """Summary of one extraction job."""

    path: Path
    n_images: int
    n_failed: int
    images_per_s: float


class ImageDataset(Dataset):
    """Decodes and resizes images to uint8 tensors; normalisation happens on the device.

    An image that cannot be read yields a blank tensor and ``ok=False`` instead of
    stopping the job, so one bad file costs one row, which is marked invalid.
    """

    def __init__(self, paths: list[str], preprocessing: Preprocessing) -> None:
        self.paths = paths
        self.size = preprocessing.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool, str]:
        try:
            img = load_rgb(self.paths[i]).resize((self.size, self.size), Image.Resampling.BICUBIC)
        except ImageReadError as err:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False, str(err)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), True, ""


def part_rows(table: pd.DataFrame, part: int, n_parts: int) -> pd.DataFrame:
    """Contiguous slice ``part`` of the usable rows, as even as possible."""
    if not 0 <= part < n_parts:
        raise ValueError(f"part {part} is outside 0..{n_parts - 1}")
    rows = usable(table)
    bounds = np.linspace(0, len(rows), n_parts + 1).round().astype(int)
    return rows.iloc[bounds[part]:bounds[part + 1]]


def extract_activations(manifest_path: str | Path, spec: BackboneSpec, cfg: ExtractConfig,
                        part: int, out_path: str | Path) -> ExtractResult:
    """Extract ``spec``'s tokens for manifest part ``part`` into the store ``out_path``.

    Args:
        manifest_path: manifest Parquet from stage 1.
        spec: which model and layer.
        cfg: batch size, workers, device, chunking, codec.
        part: which of ``cfg.n_parts`` contiguous parts of the usable images.
        out_path: the store to write (published atomically).

    Returns:
        A summary with images/s over the whole job.
    """
    logger.info("extract %s part %d/%d: spec=%s cfg=%s", spec.key, part, cfg.n_parts, to_dict(spec), to_dict(cfg))
    table = read_manifest(manifest_path)
    rows = part_rows(table, part, cfg.n_parts)
    device = resolve_device(cfg.device, "extract.device")
    backbone = create_backbone(spec).to(device)
    layout = backbone.layout
    n = len(rows)
    attrs = base_attrs(
        stage="extract", model=backbone.describe(), layer=spec.layer_tag, grid=list(layout.grid),
        d_model=layout.d_model, n_prefix=layout.n_prefix, preprocessing=backbone.preprocessing.to_dict(),
        manifest_hash=manifest_hash(table), part=part, n_parts=cfg.n_parts, n_images=n,
        dtype="float16", device=str(device),
    )
    start = time.perf_counter()
    with atomic_store(out_path) as group:
        group.attrs.update(attrs)
        arrays = {"patches": create_array(group, "patches", (n, layout.n_patches, layout.d_model),
                                          dtype="float16", chunk_rows=cfg.images_per_chunk,
                                          compressor=cfg.compressor)}
        if cfg.keep_prefix:
            arrays["prefix"] = create_array(group, "prefix", (n, layout.n_prefix, layout.d_model),
                                            dtype="float16", chunk_rows=cfg.images_per_chunk,
                                            compressor=cfg.compressor)
        group.create_array("rows", data=rows["index"].to_numpy(np.int64))
        valid, failures = _run(backbone, rows, cfg, device, {k: ChunkWriter(a) for k, a in arrays.items()})
        group.create_array("valid", data=valid)
        elapsed = time.perf_counter() - start
        rate = n / elapsed if elapsed > 0 else float("nan")
        group.attrs.update({"failed": failures, "images_per_s": rate})
    if failures:
        listing = "\n".join(f"  {path}: {why}" for path, why in failures.items())
        logger.warning("%s part %d: %d image(s) could not be read and are marked invalid:\n%s",
                       spec.key, part, len(failures), listing)
    logger.info("%s part %d: %d images in %.1f s (%.1f images/s) -> %s", spec.key, part, n, elapsed, rate, out_path)
    return ExtractResult(path=Path(out_path), n_images=n, n_failed=len(failures), images_per_s=rate)


def _run(backbone: Backbone, rows: pd.DataFrame, cfg: ExtractConfig, device: torch.device,
         writers: dict[str, ChunkWriter]) -> tuple[np.ndarray, dict[str, str]]:
    paths = rows["path"].tolist()
    loader = DataLoader(ImageDataset(paths, backbone.preprocessing), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    prep = backbone.preprocessing
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    valid = np.zeros(len(paths), dtype=bool)
    failures: dict[str, str] = {}
    seen = 0
    with torch.inference_mode(), tqdm(total=len(paths), desc=f"extract {backbone.spec.key}", unit="img",
                                      mininterval=2.0) as bar:
        for pixels, ok, why in loader:
            pixels = (pixels.to(device, non_blocking=True).float() - mean) / std
            with autocast:
                prefix, patches = backbone.forward_tokens(pixels)
            outputs = {"patches": patches.to(torch.float16), "prefix": prefix.to(torch.float16)}
            _check_finite(outputs["patches"], backbone.spec.key, paths[seen])
            for key, writer in writers.items():
                writer.write(outputs[key].cpu().numpy())
            ok_np = ok.numpy()
            valid[seen:seen + len(ok_np)] = ok_np
            failures.update({paths[seen + i]: why[i] for i in np.flatnonzero(~ok_np)})
            seen += len(ok_np)
            bar.update(len(ok_np))
    for writer in writers.values():
        writer.close()
    return valid, failures


def _check_finite(tokens: torch.Tensor, key: str, first_path: str) -> None:
    if not torch.isfinite(tokens).all():
        raise FloatingPointError(f"{key}: non-finite activations (overflow past float16?) in the batch "
                                 f"starting at {first_path}")
