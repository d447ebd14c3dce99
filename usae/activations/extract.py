"""Stage 2: run one backbone over one part of the manifest and store its tokens as float16 Zarr.

Jobs are split by (model, layer, part); each writes its own store, so parts run side by
side on a cluster and a failed job loses one part at most.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from usae.activations.store import ChunkWriter, ResumableStore, base_attrs, create_array, reopen_array, write_array
from usae.backbones import Backbone, Preprocessing, create_backbone
from usae.config import BackboneSpec, ExtractConfig, to_dict
from usae.data.images import ImageReadError, load_rgb
from usae.data.manifest import manifest_hash, read_manifest, usable
from usae.device import resolve_device
from usae.fingerprint import fingerprint
from usae.progress import progress_bar

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
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False, err.reason
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

    The store is written at a hidden ``.partial`` sibling and renamed when complete. A
    killed job leaves the partial store with its committed chunks; rerunning the same job
    (same settings, manifest and code) resumes after them and writes exactly the store an
    uninterrupted job writes (batches start at the same images, so every forward pass sees
    the same inputs).

    Args:
        manifest_path: manifest Parquet from stage 1.
        spec: which model and layer.
        cfg: batch size, workers, device, chunking, codec.
        part: which of ``cfg.n_parts`` contiguous parts of the usable images.
        out_path: the store to write (published atomically).

    Returns:
        A summary with images/s over the images computed by this call.
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
    store = ResumableStore(out_path, _resume_key(attrs, spec, cfg, device, rows))
    arrays = _part_arrays(store, attrs, rows, backbone, cfg)
    # Resume where both the chunk grid and the batch grid restart, so batches match an uninterrupted run.
    step = math.lcm(cfg.batch_size, cfg.images_per_chunk)
    first = store.rows_done // step * step
    failures = {int(i): tuple(v) for i, v in (store.progress or {}).get("failures", {}).items() if int(i) < first}
    if first:
        logger.info("%s part %d: resuming a killed job at image %d of %d (%d were committed)",
                    spec.key, part, first, n, store.rows_done)
    writers = {k: ChunkWriter(a, start=first) for k, a in arrays.items()}
    start = time.perf_counter()
    _run(backbone, rows, cfg, device, writers, first, failures, store)
    elapsed = time.perf_counter() - start
    rate = (n - first) / elapsed if elapsed > 0 else float("nan")
    failed = _publish(store, n, failures, rate, first)
    if failed:
        listing = "\n".join(f"  {path}: {why}" for path, why in failed.items())
        logger.warning("%s part %d: %d image(s) could not be read and are marked invalid:\n%s",
                       spec.key, part, len(failed), listing)
    logger.info("%s part %d: %d images computed in %.1f s (%.1f images/s) -> %s", spec.key, part, n - first,
                elapsed, rate, out_path)
    return ExtractResult(path=Path(out_path), n_images=n, n_failed=len(failed), images_per_s=rate)


def _part_arrays(store: ResumableStore, attrs: dict, rows: pd.DataFrame, backbone: Backbone,
                 cfg: ExtractConfig) -> dict:
    """The token arrays of a part store: created in a new store, reopened in a resumed one."""
    group, layout, n = store.group, backbone.layout, len(rows)
    names = ["patches", "prefix"] if cfg.keep_prefix else ["patches"]
    if store.progress is not None:
        return {k: reopen_array(group, k) for k in names}
    shapes = {"patches": (n, layout.n_patches, layout.d_model), "prefix": (n, layout.n_prefix, layout.d_model)}
    group.attrs.update(attrs)
    arrays = {k: create_array(group, k, shapes[k], dtype="float16", chunk_rows=cfg.images_per_chunk,
                              compressor=cfg.compressor) for k in names}
    write_array(group, "rows", rows["index"].to_numpy(np.int64))
    return arrays


def _publish(store: ResumableStore, n: int, failures: dict[int, tuple[str, str]], rate: float,
             first: int) -> dict[str, str]:
    """Write the validity flags and the failures, then publish the store; returns path -> reason."""
    valid = np.ones(n, dtype=bool)
    valid[list(failures)] = False
    write_array(store.group, "valid", valid)
    failed = {path: why for path, why in failures.values()}
    store.group.attrs.update({"failed": failed, "images_per_s": rate, "resumed_at": first})
    store.publish()
    return failed


def _resume_key(attrs: dict, spec: BackboneSpec, cfg: ExtractConfig, device: torch.device,
                rows: pd.DataFrame) -> str:
    """Everything the stored values depend on; worker count, the device string and whether the part is kept
    after preparation do not matter."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("num_workers", "device", "keep")}
    payload = {"attrs": {k: v for k, v in attrs.items() if k != "device"}, "spec": to_dict(spec),
               "cfg": settings, "device_type": device.type, "rows": rows["index"].tolist()}
    return fingerprint(payload)


def _run(backbone: Backbone, rows: pd.DataFrame, cfg: ExtractConfig, device: torch.device,
         writers: dict[str, ChunkWriter], first: int, failures: dict[int, tuple[str, str]],
         store: ResumableStore) -> None:
    """Extract rows ``first:`` into ``writers``, committing progress after every written chunk."""
    paths = rows["path"].tolist()
    loader = DataLoader(ImageDataset(paths[first:], backbone.preprocessing), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    prep = backbone.preprocessing
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    seen, committed = first, first
    with torch.inference_mode(), progress_bar(total=len(paths), initial=first, desc=f"extract {backbone.spec.key}",
                                              unit="img") as bar:
        for pixels, ok, why in loader:
            pixels = (pixels.to(device, non_blocking=True).float() - mean) / std
            with autocast:
                prefix, patches = backbone.forward_tokens(pixels)
            outputs = {"patches": patches.to(torch.float16), "prefix": prefix.to(torch.float16)}
            _check_finite(outputs["patches"], backbone.spec.key, paths[seen])
            for key, writer in writers.items():
                writer.write(outputs[key].cpu().numpy())
            ok_np = ok.numpy()
            failures.update({seen + int(i): (paths[seen + int(i)], why[int(i)]) for i in np.flatnonzero(~ok_np)})
            seen += len(ok_np)
            bar.update(len(ok_np))
            written = min(w.position for w in writers.values())
            if written > committed:
                store.commit(written, failures={i: v for i, v in failures.items() if i < written})
                committed = written
    for writer in writers.values():
        writer.close()


def _check_finite(tokens: torch.Tensor, key: str, first_path: str) -> None:
    if not torch.isfinite(tokens).all():
        raise FloatingPointError(f"{key}: non-finite activations (overflow past float16?) in the batch "
                                 f"starting at {first_path}")
