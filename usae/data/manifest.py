"""Stage 1: the image manifest, one row per image with a stable id, split, label and status.

Sources: a folder tree (class subfolders become labels; ``train``/``val`` top folders
become splits), a CSV/Parquet list, or the built-in generated set with planted factors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from usae.atomic import atomic_path
from usae.fingerprint import file_sha256
from usae.config import ManifestConfig, to_dict
from usae.data.images import IMAGE_SUFFIXES, ImageReadError, check_image
from usae.progress import progress_bar

logger = logging.getLogger(__name__)

COLUMNS = ("index", "image_id", "path", "split", "label", "width", "height", "status", "reason")
SPLITS = ("train", "val")
SETTINGS_ATTR = "dataset"
"""Table attribute (kept in the Parquet file) holding the ``dataset`` settings it was built with."""
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "val"}


def build_manifest(cfg: ManifestConfig, out_path: str | Path, *, workers: int = 4) -> pd.DataFrame:
    """Build, check and write the manifest of ``cfg``'s image source.

    Every image is decoded once and its bytes hashed; unreadable ones stay in the table
    with ``status="unreadable"`` and the reason; of byte-identical files the one with the
    shortest file name is kept (ties: the first ``image_id``) and the others get
    ``status="duplicate"`` and ``reason="same content as <image_id>"``; both kinds are
    excluded downstream and listed in the log.

    Args:
        cfg: dataset settings.
        out_path: the Parquet file to write (written atomically).
        workers: threads decoding images during the check.

    Returns:
        The manifest table (columns ``COLUMNS``), sorted by ``image_id``.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: the source holds no usable image, or its list file is malformed
            (e.g. repeated image ids; the message names them and the list).
    """
    out_path = Path(out_path)
    logger.info("manifest: %s", to_dict(cfg))
    rows = _list_source(cfg, out_path.parent)
    if rows.empty:
        raise ValueError(f"no image files found in {_where(cfg)} (looked for {sorted(IMAGE_SUFFIXES)})")
    _refuse_repeated_ids(rows, cfg)
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    rows = _assign_splits(rows, cfg)
    table = _check_all(rows, workers)
    n_bad = int((table["status"] != "ok").sum())
    if n_bad == len(table):
        raise ValueError(f"none of the {n_bad} files in {_where(cfg)} is a readable image; "
                         f"first reason: {table['path'].iloc[0]}: {table['reason'].iloc[0]}")
    for status, what in (("unreadable", "unreadable"), ("duplicate", "byte-identical copies of an earlier image")):
        bad = table[table["status"] == status]
        if len(bad):
            listing = "\n".join(f"  {p}: {r}" for p, r in zip(bad["path"], bad["reason"]))
            logger.warning("%d of %d images are %s and excluded:\n%s", len(bad), len(table), what, listing)
    counts = table[table["status"] == "ok"]["split"].value_counts().to_dict()
    logger.info("manifest: %d usable images (%s), %d excluded", len(table) - n_bad, counts, n_bad)
    table.attrs[SETTINGS_ATTR] = to_dict(cfg)  # lets the driver trust this manifest's counts (usae.data.sizes)
    _write_atomic(table, out_path)
    return table


def manifest_hash(table: pd.DataFrame) -> str:
    """SHA-256 of what defines the data (ids, splits, labels, status), not of file locations."""
    keys = table[["image_id", "split", "label", "status"]].astype("string").fillna("<NA>")
    payload = "\n".join("\t".join(row) for row in keys.itertuples(index=False, name=None))
    return hashlib.sha256(payload.encode()).hexdigest()


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`build_manifest`, checking its columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist; run `usae manifest` first")
    table = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not a usae manifest: missing columns {missing}")
    return table


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that extraction uses: readable images, in manifest order."""
    return table[table["status"] == "ok"]


def _where(cfg: ManifestConfig) -> str:
    return "the generated image set" if cfg.source == "synthetic" else f"{cfg.source} source {cfg.path}"


def _refuse_repeated_ids(rows: pd.DataFrame, cfg: ManifestConfig, shown: int = 10) -> None:
    """Image ids must be unique: name every repeated id with its rows in the source."""
    repeated = rows["image_id"][rows["image_id"].duplicated(keep=False)]
    if repeated.empty:
        return
    positions = pd.Series(range(len(rows)), index=rows.index)[repeated.index].groupby(repeated.values).agg(list)
    listing = [f"{image_id!r} (rows {', '.join(str(p + 1) for p in pos)})" for image_id, pos in positions.items()]
    more = f" and {len(listing) - shown} more" if len(listing) > shown else ""
    hint = (" (rows counted from 1, header excluded); give each row its own image_id, or remove the repeated rows"
            if cfg.source == "list" else "")
    raise ValueError(f"{len(listing)} duplicate image id(s) in {_where(cfg)}: {'; '.join(listing[:shown])}{more}"
                     f"{hint}")


def _list_source(cfg: ManifestConfig, out_dir: Path) -> pd.DataFrame:
    if cfg.source == "synthetic":
        return _list_synthetic(cfg, out_dir)
    path = Path(cfg.path)
    if not path.exists():
        raise FileNotFoundError(f"dataset.path {path} does not exist (dataset.source = {cfg.source})")
    return _list_folder(path) if cfg.source == "folder" else _list_file(path)


def _list_synthetic(cfg: ManifestConfig, out_dir: Path) -> pd.DataFrame:
    from usae.planted.images import generate_images

    syn = cfg.synthetic
    image_set = generate_images(out_dir / "synthetic", n_images=syn.n_images, image_size=syn.image_size,
                                max_objects=syn.max_objects, seed=cfg.seed, min_objects=syn.min_objects,
                                factor_weights=syn.factor_weights)
    paths = [Path(p).resolve() for p in image_set.paths]
    return pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths],
                         "split": None, "label": None})


def _list_folder(root: Path) -> pd.DataFrame:
    if not root.is_dir():
        raise ValueError(f"dataset.path {root} is not a folder (dataset.source = folder)")
    top_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    with_splits = bool(top_dirs) and all(d.name.lower() in _SPLIT_ALIASES for d in top_dirs)
    records = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            file = Path(dirpath) / name
            if name.startswith(".") or file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = file.relative_to(root)
            parts = rel.parts[1:] if with_splits else rel.parts
            split = _SPLIT_ALIASES[rel.parts[0].lower()] if with_splits else None
            label = parts[0] if len(parts) > 1 else None
            records.append({"image_id": rel.as_posix(), "path": str(file.resolve()),
                            "split": split, "label": label})
    return pd.DataFrame(records, columns=["image_id", "path", "split", "label"])


def _list_file(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path)
    elif path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    else:
        raise ValueError(f"dataset.path {path}: a list must be .csv or .parquet")
    if "path" not in table.columns:
        raise ValueError(f"{path} has no 'path' column (columns: {list(table.columns)})")
    base = path.parent
    files = [Path(p) if Path(p).is_absolute() else (base / p) for p in table["path"].astype(str)]
    ids = table["image_id"].astype(str) if "image_id" in table.columns else table["path"].astype(str)
    split = table["split"] if "split" in table.columns else None
    if split is not None:
        given = split.notna()  # blank cells: no split given, the seeded hash decides
        split = split.astype(str).str.lower().where(given)
        unknown = sorted(set(split[given]) - set(_SPLIT_ALIASES))
        if unknown:
            raise ValueError(f"{path}: unknown split value(s) {unknown}; use train or val")
        split = split.map(_SPLIT_ALIASES)
    label = table["label"].astype("string") if "label" in table.columns else None
    return pd.DataFrame({"image_id": ids.values, "path": [str(f.resolve()) for f in files],
                         "split": split.values if split is not None else None,
                         "label": label.values if label is not None else None})


def _assign_splits(rows: pd.DataFrame, cfg: ManifestConfig) -> pd.DataFrame:
    """Keep the source's split; else a seeded hash of the id decides, stable as images are added."""
    rows = rows.copy()
    missing = rows["split"].isna()
    rows.loc[missing, "split"] = [hashed_split(image_id, cfg) for image_id in rows.loc[missing, "image_id"]]
    return rows


def hashed_split(image_id: str, cfg: ManifestConfig) -> str:
    """The split of an image its source gives none: ``val`` for a seeded hash below ``val_fraction``."""
    digest = hashlib.sha256(f"{cfg.seed}:{image_id}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < cfg.val_fraction else "train"


def _check_all(rows: pd.DataFrame, workers: int) -> pd.DataFrame:
    def check(path: str) -> tuple[int, int, str, str, str]:
        try:
            info = check_image(path)
            return info.width, info.height, "ok", "", file_sha256(path)
        except ImageReadError as err:
            return -1, -1, "unreadable", err.reason, ""
        except OSError as err:  # the hash's read failed after the check's succeeded
            return -1, -1, "unreadable", f"corrupt or truncated: {err}", ""

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(progress_bar(pool.map(check, rows["path"]), total=len(rows), desc="checking images",
                                    unit="img"))
    table = rows.copy()
    checked = pd.DataFrame(results, index=table.index, columns=["width", "height", "status", "reason", "content"])
    table[["width", "height", "status", "reason"]] = checked[["width", "height", "status", "reason"]]
    _mark_duplicates(table, checked["content"])
    table.insert(0, "index", range(len(table)))
    table["label"] = table["label"].astype("string")
    table["split"] = table["split"].astype("string")
    return table[list(COLUMNS)]


def _mark_duplicates(table: pd.DataFrame, content: pd.Series) -> None:
    """Of readable images with the same bytes, keep the one :func:`_original_first` puts first;
    every other copy -> duplicate."""
    readable = table["status"] == "ok"
    order = _original_first(table[readable])
    keeper = table.loc[order, "image_id"].groupby(content[order].values).transform("first")
    copies = keeper[keeper != table.loc[order, "image_id"]]
    table.loc[copies.index, "status"] = "duplicate"
    table.loc[copies.index, "reason"] = "same content as " + copies


def _original_first(rows: pd.DataFrame) -> pd.Index:
    """Rows ordered so that an original comes before its copies: shortest file name first,
    then ``image_id``. Copies usually get longer names (``x (1).jpg``, ``Copy of x.jpg``,
    ``x-copy.jpg``), and the rule depends on names only, so every copy of a folder keeps the same one."""
    name_length = rows["path"].map(lambda p: len(Path(p).name))
    return rows.assign(_len=name_length).sort_values(["_len", "image_id"], kind="stable").index


def _write_atomic(table: pd.DataFrame, out_path: Path) -> None:
    with atomic_path(out_path) as tmp:
        table.to_parquet(tmp, index=False)
