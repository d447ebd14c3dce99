"""The generated image set (``dataset.source: synthetic``): deterministic RGB images with planted factors.

Each object has a shape, colour, texture and position; every object's factors and its visible
pixels are recorded, so learned concepts can be checked against a known truth.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from PIL import Image, ImageDraw
from zarr.codecs import ZstdCodec

from usae.planted.factors import FACTORS, factor_probabilities
from usae.progress import progress_bar

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
"""Fixed RGB of each colour; the 'off' pixels of a texture use the shade ``SHADE * rgb``."""

SHADE = 0.45
GENERATOR = "usae.data.synthetic_images"
"""Generator name recorded in a set's attributes: this module's former path, kept so that sets
generated before the move to ``usae.planted`` still match and are reused, not regenerated."""
GENERATOR_VERSION = 1
_CHUNK_IMAGES = 64


@dataclass(frozen=True, eq=False)
class SyntheticImageSet:
    """A generated image set on disk.

    Attributes:
        paths: PNG path of each image, in image-index order.
        objects: One row per object: ``image_index, object`` (1-based), ``shape, colour,
            texture`` and ``cx, cy, size`` in pixels. The object covers at most its bounding box
            ``[cx - size // 2, cx - size // 2 + size)`` on both axes; it always lies inside the image.
        object_map_path: The zarr array of visible object labels (see :func:`load_object_map`).
    """

    paths: list[Path]
    objects: pd.DataFrame
    object_map_path: Path


def _shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean ``(s, s)`` mask of ``shape`` filling a box of side ``s``."""
    img = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(img)
    c, r = (s - 1) / 2, (s - 1) / 2
    if shape == "circle":
        draw.ellipse((0, 0, s - 1, s - 1), fill=1)
    elif shape == "square":
        draw.rectangle((0, 0, s - 1, s - 1), fill=1)
    elif shape == "triangle":
        draw.polygon([(c, 0), (s - 1, s - 1), (0, s - 1)], fill=1)
    elif shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        draw.polygon([(float(c + q * np.cos(a)), float(c + q * np.sin(a))) for q, a in zip(rad, ang)], fill=1)
    elif shape == "cross":
        a, b = round(s / 3), round(2 * s / 3) - 1
        draw.rectangle((0, a, s - 1, b), fill=1)
        draw.rectangle((a, 0, b, s - 1), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {list(FACTORS['shape'])}")
    return np.asarray(img, dtype=bool)


def _texture_on(texture: str, s: int) -> np.ndarray:
    """Boolean ``(s, s)`` pattern: True where the full colour shows, False where its shade does."""
    yy, xx = np.mgrid[0:s, 0:s]
    p = max(4, s // 4)
    if texture == "solid":
        return np.ones((s, s), dtype=bool)
    if texture == "stripes":  # diagonal stripes, 60% full colour
        return (xx + yy) % p < int(np.ceil(0.6 * p))
    if texture == "dots":  # shaded dots (~28% of the area) on a full-colour ground
        dy, dx = (yy % p) - (p - 1) / 2, (xx % p) - (p - 1) / 2
        return dy**2 + dx**2 >= (0.3 * p) ** 2
    if texture == "checker":
        h = max(2, p // 2)
        return (yy // h + xx // h) % 2 == 0
    raise ValueError(f"unknown texture {texture!r}; choose one of {list(FACTORS['texture'])}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey-ish, low-contrast ``(size, size, 3)`` float background: gradient, tint and noise."""
    base = rng.uniform(90.0, 170.0)
    theta = rng.uniform(0.0, 2 * np.pi)
    amp = rng.uniform(5.0, 20.0)
    tint = rng.uniform(-6.0, 6.0, size=3)
    t = (np.arange(size) + 0.5) / size - 0.5
    ramp = amp * (np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None])
    noise = rng.normal(0.0, 3.0, size=(size, size))
    return base + (ramp + noise)[:, :, None] + tint[None, None, :]


def _render(seed: int, index: int, image_size: int, max_objects: int, min_objects: int = 1,
            probabilities: dict[str, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Render image ``index``: its RGB uint8 array, its object map and its object rows.

    ``probabilities`` (:func:`usae.planted.factors.factor_probabilities`) skews the factor
    draws; a factor without (None) is drawn as the original generator did, rng call for call.
    """
    probabilities = probabilities or {}
    rng = np.random.default_rng([seed, index])  # per-image stream: image i does not depend on n_images
    rgb = _background(rng, image_size)
    omap = np.zeros((image_size, image_size), dtype=np.uint8)
    lo = max(8, round(0.12 * image_size))
    hi = max(lo, round(0.4 * image_size))
    rows = []
    for k in range(1, int(rng.integers(min_objects, max_objects + 1)) + 1):
        shape, colour, texture = (str(rng.choice(FACTORS[f], p=probabilities.get(f))) for f in FACTORS)
        s = int(rng.integers(lo, hi + 1))
        cx = int(rng.integers(s // 2, image_size - s + s // 2 + 1))
        cy = int(rng.integers(s // 2, image_size - s + s // 2 + 1))
        x0, y0 = cx - s // 2, cy - s // 2
        mask = _shape_mask(shape, s)
        full = np.asarray(COLOURS[colour], dtype=np.float64)
        pix = np.where(_texture_on(texture, s)[:, :, None], full, np.round(SHADE * full))
        box = (slice(y0, y0 + s), slice(x0, x0 + s))
        rgb[box][mask] = pix[mask]
        omap[box][mask] = k
        rows.append(dict(image_index=index, object=k, shape=shape, colour=colour, texture=texture,
                         cx=cx, cy=cy, size=s))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), omap, rows


def _attrs(n_images: int, image_size: int, max_objects: int, seed: int, min_objects: int = 1,
           factor_weights: dict[str, dict[str, float]] | None = None) -> dict:
    attrs = {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "n_images": n_images,
        "image_size": image_size, "max_objects": max_objects, "seed": seed,
        "factors": {k: list(v) for k, v in FACTORS.items()},
        "colours_rgb": {k: list(v) for k, v in COLOURS.items()}, "shade": SHADE,
        "labels": "0 = background, k = object k (1-based, as in objects.parquet) visible after occlusion",
    }
    # Recorded only when set, so sets made before these options existed still match and are reused.
    if min_objects != 1:
        attrs["min_objects"] = min_objects
    if factor_weights:
        attrs["factor_weights"] = {f: {v: float(w) for v, w in sorted(ws.items())}
                                   for f, ws in sorted(factor_weights.items())}
    return attrs


def image_ids(n_images: int) -> list[str]:
    """The ids the manifest gives a set's images (their file stems), known without generating them."""
    return [f"img_{i:06d}" for i in range(n_images)]


def _image_paths(root: Path, n_images: int) -> list[Path]:
    return [root / "images" / f"{image_id}.png" for image_id in image_ids(n_images)]


def _load_set(out_dir: Path, attrs: dict) -> SyntheticImageSet | None:
    """The set in ``out_dir`` if it is complete and was made with ``attrs``; else None."""
    try:
        if dict(load_object_map(out_dir / "object_map.zarr").attrs) != attrs:
            return None
        paths = _image_paths(out_dir, attrs["n_images"])
        if not all(p.is_file() for p in paths):
            return None
        objects = pd.read_parquet(out_dir / "objects.parquet")
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
        return None
    return SyntheticImageSet(paths=paths, objects=objects, object_map_path=out_dir / "object_map.zarr")


def _check_arguments(n_images: int, image_size: int, max_objects: int, seed: int, min_objects: int = 1) -> None:
    if n_images < 1:
        raise ValueError(f"n_images = {n_images} must be >= 1")
    if image_size < 32:
        raise ValueError(f"image_size = {image_size} must be >= 32")
    if not 1 <= max_objects <= 255:
        raise ValueError(f"max_objects = {max_objects} must be in 1..255 (object map is uint8)")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"min_objects = {min_objects} must be in 1..max_objects = {max_objects}")
    if seed < 0:
        raise ValueError(f"seed = {seed} must be >= 0")


def _existing_set(out_dir: Path, attrs: dict) -> SyntheticImageSet | None:
    """Remove leftovers of interrupted runs; the reusable set in ``out_dir``, or None to (re)generate.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder that is not a set made by this module.
    """
    for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        logger.warning("removing leftover temporary folder %s of an interrupted run", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    if not out_dir.exists():
        return None
    existing = _load_set(out_dir, attrs)
    if existing is not None:
        logger.info("reusing complete synthetic image set in %s", out_dir)
        return existing
    if any(out_dir.iterdir()) and not (out_dir / "object_map.zarr").exists():
        raise FileExistsError(f"{out_dir} exists and is not a synthetic image set; refusing to replace it")
    return None


def _write_set(root: Path, attrs: dict) -> int:
    """Render every image of ``attrs`` into ``root`` (PNGs, object map, objects table); the object count."""
    n_images, image_size = attrs["n_images"], attrs["image_size"]
    (root / "images").mkdir(parents=True)
    chunk = min(n_images, _CHUNK_IMAGES)
    arr = zarr.create_array(store=str(root / "object_map.zarr"), shape=(n_images, image_size, image_size),
                            chunks=(chunk, image_size, image_size), dtype="uint8", fill_value=0,
                            compressors=ZstdCodec(level=5), attributes=attrs, zarr_format=3)
    rows: list[dict] = []
    buf = np.zeros((chunk, image_size, image_size), dtype=np.uint8)
    probabilities = factor_probabilities(attrs.get("factor_weights"))
    for i, path in enumerate(progress_bar(_image_paths(root, n_images), desc="synthetic images", unit="img")):
        rgb, buf[i % chunk], obj_rows = _render(attrs["seed"], i, image_size, attrs["max_objects"],
                                              attrs.get("min_objects", 1), probabilities)
        Image.fromarray(rgb).save(path, format="PNG", compress_level=1)  # fast; bytes stay deterministic
        rows.extend(obj_rows)
        if i % chunk == chunk - 1 or i == n_images - 1:
            start = i - i % chunk
            arr[start:i + 1] = buf[: i + 1 - start]
    pd.DataFrame(rows).to_parquet(root / "objects.parquet", index=False)
    return len(rows)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``out_dir``, replacing an older set there."""
    if out_dir.exists():
        trash = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-old"
        out_dir.rename(trash)
        tmp.rename(out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def generate_images(out_dir: Path, n_images: int, image_size: int = 224, max_objects: int = 3,
                    seed: int = 0, *, min_objects: int = 1,
                    factor_weights: dict[str, dict[str, float]] | None = None) -> SyntheticImageSet:
    """Generate (or reuse) a synthetic image set with planted factors.

    Writes ``images/img_{i:06d}.png``, ``objects.parquet`` and ``object_map.zarr`` into a
    temporary folder beside ``out_dir`` and renames it into place when done, so ``out_dir``
    is either absent or complete. A complete set made with the same arguments is reused as is;
    one made with other arguments is replaced. Leftover temporary folders of earlier,
    interrupted runs are removed (do not generate into the same ``out_dir`` concurrently).

    Args:
        out_dir: Folder of the set.
        n_images: Number of images (>= 1).
        image_size: Side of the square images in pixels (>= 32).
        max_objects: Each image holds 1..max_objects objects (1..255).
        seed: Non-negative seed; image ``i`` depends only on ``(seed, i)`` and the other arguments.
        min_objects: Fewest objects per image (1..max_objects).
        factor_weights: Relative frequency of factor values, ``{"shape": {"circle": 3, "star": 1}}``:
            a factor named draws only the values it lists; one left out stays uniform
            (:func:`usae.planted.factors.factor_probabilities`). The default set (1 object at
            least, no weights) is byte-identical to the one made before these options.

    Returns:
        The set on disk. The same arguments always give byte-identical PNGs.

    Raises:
        ValueError: On an out-of-range argument.
        FileExistsError: If ``out_dir`` exists, is not empty and is not a set made by this module.
    """
    _check_arguments(n_images, image_size, max_objects, seed, min_objects)
    factor_probabilities(factor_weights)  # refuse unknown factors or values before any work
    out_dir = Path(out_dir)
    attrs = _attrs(n_images, image_size, max_objects, seed, min_objects, factor_weights)
    existing = _existing_set(out_dir, attrs)
    if existing is not None:
        return existing
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        n_objects = _write_set(tmp, attrs)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d synthetic images (%d objects) to %s", n_images, n_objects, out_dir)
    return SyntheticImageSet(paths=_image_paths(out_dir, n_images), objects=pd.read_parquet(
        out_dir / "objects.parquet"), object_map_path=out_dir / "object_map.zarr")


def load_object_map(path: Path | str) -> zarr.Array:
    """Open an ``object_map.zarr`` read-only: ``(n_images, H, W)`` uint8, 0 = background, k = object k."""
    return zarr.open_array(str(path), mode="r")


def patch_factor_coverage(object_map: np.ndarray, objects: pd.DataFrame, grid: int) -> dict[str, np.ndarray]:
    """Fraction of each patch covered by visible pixels of objects with each factor value.

    The image is cut into ``grid x grid`` cells by pixel assignment: pixel ``(y, x)`` belongs to
    cell ``(floor(y * grid / H), floor(x * grid / W))``, and a fraction is counted over the
    pixels of the cell (cells differ by at most one pixel row/column when ``grid`` does not
    divide the side).

    Args:
        object_map: ``(n, H, W)`` labels as in ``object_map.zarr`` (any array-like).
        objects: Object table with ``image_index, object`` and the factor columns; ``image_index``
            refers to the first axis of ``object_map``.
        grid: Cells per side, ``1 <= grid <= min(H, W)``.

    Returns:
        For each factor of :data:`FACTORS` a float32 ``(n, grid, grid, n_values)`` array in
        value order, and ``"object"``: ``(n, grid, grid, 1)``, the fraction covered by any object.

    Raises:
        ValueError: On a bad grid, an unknown factor value, or a label with no object row.
    """
    labels = np.asarray(object_map)
    if labels.ndim != 3:
        raise ValueError(f"object_map must be (n, H, W), got shape {labels.shape}")
    n, h, w = labels.shape
    if not 1 <= grid <= min(h, w):
        raise ValueError(f"grid = {grid} must be in 1..{min(h, w)}")
    counts = _cell_label_counts(labels, grid)
    frac = counts / counts.sum(axis=-1, keepdims=True)
    keep = _known(objects, counts)
    image, label = _object_keys(objects, counts, keep)
    out: dict[str, np.ndarray] = {}
    for factor, values in FACTORS.items():
        onehot = np.zeros((n, counts.shape[-1], len(values)))
        onehot[image, label, _value_codes(objects, factor)[keep]] = 1.0
        out[factor] = np.einsum("nabl,nlv->nabv", frac, onehot).astype(np.float32)
    out["object"] = (1.0 - frac[..., :1]).astype(np.float32)
    return out


def _cell_label_counts(labels: np.ndarray, grid: int) -> np.ndarray:
    """``(n, grid, grid, n_labels)`` pixel counts of each label in each cell (pixel-to-cell rule above)."""
    n, h, w = labels.shape
    n_labels = int(labels.max(initial=0)) + 1
    cell = ((np.arange(h) * grid) // h)[:, None] * grid + ((np.arange(w) * grid) // w)[None, :]
    flat = (np.arange(n)[:, None, None] * grid * grid + cell[None]) * n_labels + labels.astype(np.int64)
    return np.bincount(flat.ravel(), minlength=n * grid * grid * n_labels).reshape(n, grid, grid, n_labels)


def _known(objects: pd.DataFrame, counts: np.ndarray) -> np.ndarray:
    """Rows of ``objects`` naming an image and a label that exist in ``counts``."""
    n, n_labels = counts.shape[0], counts.shape[-1]
    idx = objects["image_index"].to_numpy(dtype=np.int64)
    obj = objects["object"].to_numpy(dtype=np.int64)
    return (idx >= 0) & (idx < n) & (obj >= 1) & (obj < n_labels)


def _object_keys(objects: pd.DataFrame, counts: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image_index, label)`` of the object rows ``keep``; every visible label must have a row.

    Raises:
        ValueError: A label visible in the map has no row in ``objects``.
    """
    idx = objects["image_index"].to_numpy(dtype=np.int64)[keep]
    obj = objects["object"].to_numpy(dtype=np.int64)[keep]
    known = np.zeros((counts.shape[0], counts.shape[-1]), dtype=bool)
    known[idx, obj] = True
    present = counts.sum(axis=(1, 2)) > 0
    present[:, 0] = False
    if (missing := np.argwhere(present & ~known)).size:
        i, k = missing[0]
        raise ValueError(f"object_map label {k} of image {i} has no row in objects")
    return idx, obj


def _value_codes(objects: pd.DataFrame, factor: str) -> np.ndarray:
    """Index of each object's ``factor`` value in ``FACTORS[factor]``.

    Raises:
        ValueError: A value is not one of ``FACTORS[factor]``.
    """
    values = FACTORS[factor]
    codes = pd.Index(values).get_indexer(objects[factor].astype(str)).astype(np.int64)
    if (codes < 0).any():
        bad = sorted(set(objects[factor].astype(str)[codes < 0]))
        raise ValueError(f"unknown {factor} values {bad}; expected {list(values)}")
    return codes
