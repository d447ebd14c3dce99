"""Stage 3: align one model's patch grid to the common grid, standardise, write per split.

Input: one layer of the extraction parts of a model. Output: one aligned store whose
``train`` and ``val`` groups hold (images, grid*grid, d) float16 tokens in manifest order,
identical in row order for every model, plus the statistics as JSON beside the store.
A test set's store takes the training data's statistics and holds every image in ``val``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from usae.activations.align import resize_grid
from usae.activations.parts import PartLayer, delete_parts_once_prepared, open_part_layer
from usae.activations.standardize import Standardization, compute_standardization, sample_images
from usae.activations.store import ChunkWriter, atomic_store, base_attrs, create_array, write_array
from usae.atomic import atomic_path
from usae.config import PrepareConfig, to_dict
from usae.data.manifest import SPLITS, manifest_hash, read_manifest
from usae.progress import progress_bar

logger = logging.getLogger(__name__)


def open_parts(part_paths: list[str | Path], layer: str | None = None,
               expected_hash: str | None = None) -> list[PartLayer]:
    """Open layer ``layer`` (None: the only one) of every extraction part of one model and check that they
    belong together.

    Raises:
        FileNotFoundError: listing every missing part.
        ValueError: parts from different manifests, models, layers or part counts, or a gap.
    """
    missing = [str(p) for p in part_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError("missing extraction part(s): " + ", ".join(missing))
    parts = [open_part_layer(p, layer) for p in part_paths]
    attrs = [p.attrs for p in parts]
    for key in ("manifest_hash", "layer", "grid", "d_model", "n_parts"):
        values = {json.dumps(a.get(key)) for a in attrs}
        if len(values) > 1:
            raise ValueError(f"extraction parts disagree on {key}: {sorted(values)} ({part_paths})")
    if {json.dumps(a["model"]) for a in attrs}.__len__() > 1:
        raise ValueError(f"extraction parts come from different models: {part_paths}")
    numbers = sorted(a["part"] for a in attrs)
    if numbers != list(range(attrs[0]["n_parts"])):
        raise ValueError(f"extraction parts {numbers} do not cover 0..{attrs[0]['n_parts'] - 1}")
    if expected_hash is not None and attrs[0]["manifest_hash"] != expected_hash:
        raise ValueError(f"extraction parts were made from another manifest "
                         f"({attrs[0]['manifest_hash'][:12]} != {expected_hash[:12]}); rerun extraction")
    return sorted(parts, key=lambda p: p.attrs["part"])


def prepare_activations(part_paths: list[str | Path], manifest_path: str | Path, cfg: PrepareConfig,
                        out_path: str | Path, stats_path: str | Path, *, layer: str | None = None,
                        num_workers: int = 1, reference_stats: str | Path | None = None, keep_parts: bool = True,
                        sharing: list[str | Path] = ()) -> Standardization:
    """Align, standardise and write one model's tokens; return the statistics used.

    Args:
        part_paths: all extraction parts of the model, any order.
        manifest_path: the manifest they were extracted from.
        cfg: common grid, standardisation kind, sample size, seed, chunking.
        out_path: the aligned store to write (published atomically).
        stats_path: JSON file for the statistics (written after the store).
        layer: the model's layer tag (the group of the parts to read); None: the parts' only layer.
        num_workers: threads for dask reads and reductions.
        reference_stats: a test set's case: the training data's statistics file of the same
            model (``stats_path`` of its own preparation). Its statistics are applied instead of
            this data's own, so a trained model sees the scale it was trained on, and every image
            goes to the ``val`` group (a test set has no split). Recorded as ``standardized_with``.
        keep_parts: False (``extract.keep: false``): delete the extraction parts once the store
            and the statistics are published, not before, so a failed job leaves them to retry with.
        sharing: the statistics files of the other layers the parts hold (models that share the
            extraction): the parts are deleted only once every one of them exists too. Each job
            checks after publishing its own, so the last of them to finish deletes the parts.
    """
    logger.info("prepare %s: cfg=%s", out_path, to_dict(cfg))
    table = read_manifest(manifest_path)
    parts = open_parts(part_paths, layer, expected_hash=manifest_hash(table))
    head = parts[0].attrs
    src_grid, dst_grid = _grids(head, cfg.grid)
    patches = da.concatenate([da.from_zarr(p.patches, chunks=p.patches.chunks) for p in parts])
    rows, valid = np.concatenate([p.rows for p in parts]), np.concatenate([p.valid for p in parts])

    def aligned(x: np.ndarray) -> np.ndarray:
        return resize_grid(x, src_grid, dst_grid).numpy()

    if reference_stats is None:
        splits, extra = table.set_index("index")["split"].loc[rows].to_numpy(), {}
        stats = _fit_statistics(patches, splits, valid, aligned, cfg, head, part_paths, num_workers)
    else:  # a test set: every image in val, at the training data's scale
        splits = np.full(len(rows), "val", dtype=object)
        stats, standardized_with = reference_standardization(reference_stats, head, cfg.grid)
        extra = {"standardized_with": standardized_with}
    logger.info("statistics (%s over %d images): mean %s, std %.5f", stats.kind, stats.n_images,
                np.round(stats.mean, 5) if stats.mean.ndim == 0 else f"vector of {stats.mean.size}", stats.std)

    attrs = base_attrs(stage="prepare", model=head["model"], layer=head["layer"], grid=list(dst_grid),
                       source_grid=list(src_grid), d_model=head["d_model"], manifest_hash=head["manifest_hash"],
                       standardization=stats.to_dict(), config=to_dict(cfg), extract=head.get("config"),
                       spec=head.get("spec"), dtype="float16", finite_checked=True, failed=_failed_images(parts),
                       **extra)
    with atomic_store(out_path) as group:
        group.attrs.update(attrs)
        for split in SPLITS:
            positions = np.flatnonzero(splits == split)
            _write_split(group.create_group(split), patches, positions, rows, valid, aligned, stats, cfg,
                         label=f"{head['model']['key']} {split}")
    _write_json_atomic(stats_path, {"store": str(out_path), **attrs, "complete": True})
    if not keep_parts:
        delete_parts_once_prepared(part_paths, sharing)
    return stats


def _failed_images(parts: list[PartLayer]) -> dict[str, str]:
    """``{path: reason}`` of the images unreadable at extraction, merged from the parts."""
    return {path: why for part in parts for path, why in (part.attrs.get("failed") or {}).items()}


def _grids(head: dict, grid: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The parts' patch grid and the common one, which may not be larger."""
    src_grid = tuple(head["grid"])
    if grid > min(src_grid):
        raise ValueError(f"prepare.grid = {grid} is larger than {head['model']['key']}'s patch grid "
                         f"{src_grid[0]}x{src_grid[1]}; choose prepare.grid <= {min(src_grid)}")
    return src_grid, (grid, grid)


def _fit_statistics(patches: da.Array, splits: np.ndarray, valid: np.ndarray, aligned, cfg: PrepareConfig,
                    head: dict, part_paths: list, num_workers: int) -> Standardization:
    """This data's statistics, from a seeded sample of its valid training images."""
    train_pos = np.flatnonzero((splits == "train") & valid)
    if len(train_pos) == 0:
        raise ValueError(f"no valid training image in {part_paths}; check dataset.val_fraction")
    sample = train_pos[sample_images(len(train_pos), cfg.stats_images, cfg.seed)]
    sampled = patches[sample].rechunk((cfg.images_per_chunk, -1, -1))
    sampled = sampled.map_blocks(aligned, chunks=(sampled.chunks[0], (cfg.grid * cfg.grid,), sampled.chunks[2]),
                                 dtype=np.float32)
    return compute_standardization(sampled, cfg.standardize, seed=cfg.seed, num_workers=num_workers,
                                   source=head["model"]["key"],
                                   remedy=f"rerun its extraction ({', '.join(str(p) for p in part_paths)})")


def reference_standardization(stats_path: str | Path, head: dict, grid: int) -> tuple[Standardization, dict]:
    """The training data's statistics of the model in extraction attrs ``head``, and where they come from.

    Raises:
        FileNotFoundError: no statistics file (prepare the training data first).
        ValueError: the file is of another model, layer, width or grid.
    """
    path = Path(stats_path)
    if not path.is_file():
        raise FileNotFoundError(f"training statistics {path} not found; prepare the training data's stores first")
    ref = json.loads(path.read_text())
    mine = {"model": head["model"]["key"], "layer": head["layer"], "d_model": head["d_model"], "grid": [grid, grid]}
    theirs = {"model": ref["model"]["key"], "layer": ref["layer"], "d_model": ref["d_model"], "grid": ref["grid"]}
    if mine != theirs:
        raise ValueError(f"training statistics {path} are of {theirs}, not of these activations {mine}; "
                         "rerun prepare for the training data with the current settings")
    return Standardization.from_dict(ref["standardization"]), {"stats": str(path),
                                                               "manifest_hash": ref["manifest_hash"]}


def _write_split(group: zarr.Group, patches: da.Array, positions: np.ndarray, rows: np.ndarray,
                 valid: np.ndarray, aligned, stats: Standardization, cfg: PrepareConfig, label: str) -> None:
    n, d = len(positions), patches.shape[2]
    tokens = create_array(group, "tokens", (n, cfg.grid * cfg.grid, d), dtype="float16",
                          chunk_rows=cfg.images_per_chunk, compressor=cfg.compressor)
    write_array(group, "rows", rows[positions].astype(np.int64))
    write_array(group, "valid", valid[positions])
    writer = ChunkWriter(tokens)
    step = cfg.images_per_chunk
    for start in progress_bar(range(0, n, step), desc=f"prepare {label}", unit="chunk"):
        block_pos = positions[start:start + step]
        block = stats.apply(aligned(patches[block_pos].compute(scheduler="threads")))
        block[~valid[block_pos]] = 0.0
        with np.errstate(over="ignore"):  # overflow is checked just below, with the image named
            block = block.astype(np.float16)
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            first = int(rows[block_pos[np.flatnonzero(~finite)[0]]])
            raise ValueError(f"{label}: standardised tokens of manifest index {first} are NaN or inf "
                             "(beyond float16's range?); check the extraction or use prepare.standardize: scalar")
        writer.write(block)
    writer.close()


def _write_json_atomic(path: str | Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
