"""Stage 2: run one backbone over one part of the manifest and store its tokens as float16 Zarr.

Jobs are split by (backbone, part): models of a config that differ only in ``layer`` are
one job (:func:`usae.config.extraction_groups`), whose store holds a group a layer. Each
part is its own store, so parts run side by side on a cluster and a failed job loses one
part at most.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from usae.activations.parts import create_part_layer
from usae.activations.store import ChunkWriter, ResumableStore, base_attrs, reopen_array, write_array
from usae.backbones import Preprocessing
from usae.backbones.layer_set import LayerSet, distinct_layers
from usae.config import BackboneSpec, ExtractConfig, part_settings, spec_settings, to_dict
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


def extract_activations(manifest_path: str | Path, specs: BackboneSpec | Sequence[BackboneSpec], cfg: ExtractConfig,
                        part: int, out_path: str | Path) -> ExtractResult:
    """Extract the tokens of ``specs`` (one model, one or more layers) for manifest part ``part``
    into the store ``out_path``.

    Layers of one model share the forward pass where the family allows
    (:class:`usae.backbones.layer_set.LayerSet`); the store holds one group a layer
    (``docs/stores.md``). It is written at a hidden ``.partial`` sibling and renamed when
    complete. A killed job leaves the partial store with its committed chunks; rerunning
    the same job (same settings, manifest and code) resumes after them and writes exactly
    the store an uninterrupted job writes (batches start at the same images, so every
    forward pass sees the same inputs).

    Args:
        manifest_path: manifest Parquet from stage 1.
        specs: which model and layer(s); models that differ in more than ``layer`` are refused.
        cfg: batch size, workers, device, chunking, codec.
        part: which of ``cfg.n_parts`` contiguous parts of the usable images.
        out_path: the store to write (published atomically).

    Returns:
        A summary with images/s over the images computed by this call.
    """
    specs = (specs,) if isinstance(specs, BackboneSpec) else tuple(specs)
    keys = {s.key: s.layer_tag for s in specs}
    specs = distinct_layers(specs)  # two keys of one layer share its group
    label = "+".join(keys)
    logger.info("extract %s part %d/%d: specs=%s cfg=%s", label, part, cfg.n_parts, [to_dict(s) for s in specs],
                to_dict(cfg))
    table = read_manifest(manifest_path)
    rows = part_rows(table, part, cfg.n_parts)
    device = resolve_device(cfg.device, "extract.device")
    layers = LayerSet(specs).to(device)
    n = len(rows)
    attrs = base_attrs(stage="extract", models=keys, manifest_hash=manifest_hash(table),
                       part=part, n_parts=cfg.n_parts, n_images=n, dtype="float16", device=str(device))
    store = ResumableStore(out_path, _resume_key(attrs, layers, cfg, device, rows))
    attrs["config"] = part_settings(cfg)  # in the key already; the aligned store carries it on (staleness check)
    arrays = _part_arrays(store, attrs, rows, layers, cfg)
    # Resume where both the chunk grid and the batch grid restart, so batches match an uninterrupted run.
    step = math.lcm(cfg.batch_size, cfg.images_per_chunk)
    first = store.rows_done // step * step
    failures = {int(i): tuple(v) for i, v in (store.progress or {}).get("failures", {}).items() if int(i) < first}
    if first:
        logger.info("%s part %d: resuming a killed job at image %d of %d (%d were committed)",
                    label, part, first, n, store.rows_done)
    writers = [{k: ChunkWriter(a, start=first) for k, a in layer.items()} for layer in arrays]
    start = time.perf_counter()
    _run(layers, rows, cfg, device, writers, first, failures, store)
    elapsed = time.perf_counter() - start
    rate = (n - first) / elapsed if elapsed > 0 else float("nan")
    failed = _publish(store, n, failures, rate, first)
    if failed:
        listing = "\n".join(f"  {path}: {why}" for path, why in failed.items())
        logger.warning("%s part %d: %d image(s) could not be read and are marked invalid:\n%s",
                       label, part, len(failed), listing)
    logger.info("%s part %d: %d images computed in %.1f s (%.1f images/s) -> %s", label, part, n - first,
                elapsed, rate, out_path)
    return ExtractResult(path=Path(out_path), n_images=n, n_failed=len(failed), images_per_s=rate)


def _part_arrays(store: ResumableStore, attrs: dict, rows: pd.DataFrame, layers: LayerSet,
                 cfg: ExtractConfig) -> list[dict]:
    """The token arrays of each layer's group of a part store: created in a new store, reopened in a resumed one."""
    root = store.group
    tags = [spec.layer_tag for spec in layers.specs]
    if store.progress is not None:
        names = ["patches", "prefix"] if cfg.keep_prefix else ["patches"]
        return [{k: reopen_array(root[tag], k) for k in names} for tag in tags]
    root.attrs.update(attrs)
    write_array(root, "rows", rows["index"].to_numpy(np.int64))
    return [create_part_layer(root, tag, {"model": layers.describe(i), "spec": spec_settings(layers.specs[i]),
                                          **layout.to_dict(), "preprocessing": layers.preprocessing.to_dict()},
                              len(rows),
                              prefix=cfg.keep_prefix, chunk_rows=cfg.images_per_chunk, compressor=cfg.compressor)
            for i, (tag, layout) in enumerate(zip(tags, layers.layouts))]


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


def _resume_key(attrs: dict, layers: LayerSet, cfg: ExtractConfig, device: torch.device,
                rows: pd.DataFrame) -> str:
    """Everything the stored values depend on: the part's settings (:func:`usae.config.part_settings`), but of
    the device its type only (``cuda:1`` stores what ``cuda:0`` does)."""
    settings = {k: v for k, v in part_settings(cfg).items() if k != "device"}
    payload = {"attrs": {k: v for k, v in attrs.items() if k != "device"},
               "layers": [layers.describe(i) for i in range(len(layers.specs))],
               "specs": [to_dict(s) for s in layers.specs], "cfg": settings, "device_type": device.type,
               "rows": rows["index"].tolist()}
    return fingerprint(payload)


def _run(layers: LayerSet, rows: pd.DataFrame, cfg: ExtractConfig, device: torch.device,
         writers: list[dict[str, ChunkWriter]], first: int, failures: dict[int, tuple[str, str]],
         store: ResumableStore) -> None:
    """Extract rows ``first:`` into each layer's ``writers``, committing progress after every written chunk."""
    paths = rows["path"].tolist()
    loader = DataLoader(ImageDataset(paths[first:], layers.preprocessing), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    prep = layers.preprocessing
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    seen, committed = first, first
    with torch.inference_mode(), progress_bar(total=len(paths), initial=first, desc=f"extract {layers.name}",
                                              unit="img") as bar:
        for pixels, ok, why in loader:
            pixels = (pixels.to(device, non_blocking=True).float() - mean) / std
            with autocast:
                tokens = layers(pixels)
            for spec, (prefix, patches), layer_writers in zip(layers.specs, tokens, writers, strict=True):
                outputs = {"patches": patches.to(torch.float16), "prefix": prefix.to(torch.float16)}
                _check_finite(outputs["patches"], spec.key, paths[seen])
                for key, writer in layer_writers.items():
                    writer.write(outputs[key].cpu().numpy())
            ok_np = ok.numpy()
            failures.update({seen + int(i): (paths[seen + int(i)], why[int(i)]) for i in np.flatnonzero(~ok_np)})
            seen += len(ok_np)
            bar.update(len(ok_np))
            written = min(w.position for layer_writers in writers for w in layer_writers.values())
            if written > committed:
                store.commit(written, failures={i: v for i, v in failures.items() if i < written})
                committed = written
    for layer_writers in writers:
        for writer in layer_writers.values():
            writer.close()


def _check_finite(tokens: torch.Tensor, key: str, first_path: str) -> None:
    if not torch.isfinite(tokens).all():
        raise FloatingPointError(f"{key}: non-finite activations (overflow past float16?) in the batch "
                                 f"starting at {first_path}")
