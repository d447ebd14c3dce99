"""Tests of the image manifest: sources, splits, unreadable files, hashing and the Parquet file."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usae.config import ManifestConfig, SyntheticImagesConfig
from usae.data.manifest import COLUMNS, build_manifest, manifest_hash, read_manifest, usable

SIDE = 16


def _img(path: Path, w: int = SIDE, h: int = SIDE, seed: int | None = None) -> Path:
    """A random image; by default its pixels depend on its path, so no two files are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(str(path).encode()).digest()[:8], "big")
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _truncated_jpeg(path: Path) -> Path:
    """A real JPEG cut to half its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def _folder_cfg(root: Path, **kw) -> ManifestConfig:
    return ManifestConfig(name="t", source="folder", path=str(root), **kw)


def _list_cfg(path: Path, **kw) -> ManifestConfig:
    return ManifestConfig(name="t", source="list", path=str(path), **kw)


def _splits(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["image_id"], table["split"]))


# --- folder source with train/val folders ----------------------------------------------


@pytest.fixture
def imagenet_tree(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    _img(root / "train" / "n01_cat" / "b.jpg", 20, 10)
    _img(root / "train" / "n01_cat" / "a.jpg", 16, 16)
    _img(root / "train" / "n02_dog" / "c.jpg", 24, 12)
    _img(root / "val" / "n01_cat" / "d.jpg", 16, 32)
    _img(root / "val" / "n02_dog" / "e.jpg", 16, 16)
    return root


def test_folder_with_split_folders(imagenet_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "manifest.parquet"
    table = build_manifest(_folder_cfg(imagenet_tree, val_fraction=0.0), out)
    assert list(table.columns) == list(COLUMNS)
    assert table["image_id"].tolist() == [
        "train/n01_cat/a.jpg", "train/n01_cat/b.jpg", "train/n02_dog/c.jpg",
        "val/n01_cat/d.jpg", "val/n02_dog/e.jpg",
    ]
    assert table["index"].tolist() == list(range(5))
    assert table["split"].tolist() == ["train", "train", "train", "val", "val"]
    assert table["label"].tolist() == ["n01_cat", "n01_cat", "n02_dog", "n01_cat", "n02_dog"]
    assert table["width"].tolist() == [16, 20, 24, 16, 16]
    assert table["height"].tolist() == [16, 10, 12, 32, 16]
    assert (table["status"] == "ok").all()
    assert (table["reason"] == "").all()
    for image_id, path in zip(table["image_id"], table["path"]):
        assert Path(path).is_absolute()
        assert Path(path) == (imagenet_tree / image_id).resolve()
    assert out.exists()


@pytest.mark.parametrize(("train_name", "val_name"), [("training", "validation"), ("Train", "VAL")])
def test_folder_split_aliases(tmp_path: Path, train_name: str, val_name: str) -> None:
    root = tmp_path / "data"
    _img(root / train_name / "x" / "a.png")
    _img(root / val_name / "x" / "b.png")
    table = build_manifest(_folder_cfg(root), tmp_path / "m.parquet")
    assert _splits(table) == {f"{train_name}/x/a.png": "train", f"{val_name}/x/b.png": "val"}
    assert table["label"].tolist() == ["x", "x"]


def test_folder_split_folders_with_hidden_folder(imagenet_tree: Path, tmp_path: Path) -> None:
    """A hidden folder (e.g. .ipynb_checkpoints) beside train/val is ignored, not taken for a class."""
    _img(imagenet_tree / ".ipynb_checkpoints" / "stray.jpg")
    (imagenet_tree / ".DS_Store").write_bytes(b"\x00\x01")
    table = build_manifest(_folder_cfg(imagenet_tree), tmp_path / "m.parquet")
    assert len(table) == 5
    assert table["split"].tolist() == ["train", "train", "train", "val", "val"]
    assert set(table["label"]) == {"n01_cat", "n02_dog"}


# --- folder source without split folders -----------------------------------------------

N_FLAT = 200


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flat") / "root"
    for i in range(N_FLAT):
        _img(root / f"class_{i % 4}" / f"img_{i:04d}.png", 8, 8, seed=i)
    return root


def test_folder_without_splits_labels_and_hash_split(flat_tree: Path, tmp_path: Path) -> None:
    p = 0.25
    table = build_manifest(_folder_cfg(flat_tree, val_fraction=p, seed=0), tmp_path / "m.parquet")
    assert len(table) == N_FLAT
    assert (table["status"] == "ok").all()
    assert table["image_id"].is_monotonic_increasing
    assert table["index"].tolist() == list(range(N_FLAT))
    assert set(table["split"]) == {"train", "val"}
    for image_id, label in zip(table["image_id"], table["label"]):
        assert image_id.split("/")[0] == label
    assert set(table["label"]) == {f"class_{k}" for k in range(4)}
    n_val = int((table["split"] == "val").sum())
    bound = 4.5 * math.sqrt(N_FLAT * p * (1 - p))  # ~4.5 sd: a fair hash never fails this
    assert abs(n_val - N_FLAT * p) <= bound, n_val


def test_hash_split_seeded(flat_tree: Path, tmp_path: Path) -> None:
    a = build_manifest(_folder_cfg(flat_tree, val_fraction=0.25, seed=0), tmp_path / "a" / "m.parquet")
    b = build_manifest(_folder_cfg(flat_tree, val_fraction=0.25, seed=0), tmp_path / "b" / "m.parquet")
    c = build_manifest(_folder_cfg(flat_tree, val_fraction=0.25, seed=1), tmp_path / "c" / "m.parquet")
    assert _splits(a) == _splits(b)
    assert manifest_hash(a) == manifest_hash(b)
    assert _splits(a) != _splits(c)
    assert manifest_hash(a) != manifest_hash(c)


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, {"train"}), (1.0, {"val"})])
def test_hash_split_extreme_fractions(flat_tree: Path, tmp_path: Path, fraction: float, expected: set) -> None:
    table = build_manifest(_folder_cfg(flat_tree, val_fraction=fraction), tmp_path / "m.parquet")
    assert set(table["split"]) == expected


def test_hash_split_stable_when_images_added(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(60):
        _img(root / f"c{i % 3}" / f"{i:03d}.png", 4, 4, seed=i)
    before = build_manifest(_folder_cfg(root, val_fraction=0.3), tmp_path / "a" / "m.parquet")
    _img(root / "c0" / "new_one.png", 4, 4)
    _img(root / "c9" / "000.png", 4, 4)  # a new class too
    after = build_manifest(_folder_cfg(root, val_fraction=0.3), tmp_path / "b" / "m.parquet")
    assert len(after) == len(before) + 2
    old, new = _splits(before), _splits(after)
    assert {k: new[k] for k in old} == old
    assert after["index"].tolist() == list(range(len(after)))


def test_folder_image_at_root_has_no_label(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _img(root / "loose.png")
    _img(root / "cls" / "a.png")
    table = build_manifest(_folder_cfg(root), tmp_path / "m.parquet")
    labels = dict(zip(table["image_id"], table["label"]))
    assert labels["cls/a.png"] == "cls"
    assert pd.isna(labels["loose.png"])


# --- unreadable and ignored files -------------------------------------------------------


@pytest.fixture
def messy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    _img(root / "cat" / "good1.png")
    _img(root / "cat" / "good2.jpg")
    _img(root / "dog" / "good3.PNG")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("not an image at all\n")
    _truncated_jpeg(root / "dog" / "cut.jpg")
    (root / "README.txt").write_text("readme")
    (root / "cat" / "notes.txt").write_text("notes")
    _img(root / "cat" / ".hidden.png")
    _img(root / ".cache" / "thumb.png")
    return root


def test_unreadable_files_listed_and_logged(messy_tree: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="usae.data.manifest")
    table = build_manifest(_folder_cfg(messy_tree), tmp_path / "m.parquet")
    status = dict(zip(table["image_id"], table["status"]))
    reason = dict(zip(table["image_id"], table["reason"]))
    assert status == {
        "cat/empty.jpg": "unreadable", "cat/good1.png": "ok", "cat/good2.jpg": "ok",
        "dog/cut.jpg": "unreadable", "dog/good3.PNG": "ok", "dog/text.jpg": "unreadable",
    }
    assert "empty" in reason["cat/empty.jpg"]
    assert "not an image" in reason["dog/text.jpg"]
    assert re.search("truncated|corrupt", reason["dog/cut.jpg"])
    for k, s in status.items():
        assert (reason[k] == "") == (s == "ok")
    bad = table[table["status"] != "ok"]
    assert (bad["width"] == -1).all() and (bad["height"] == -1).all()
    ok = table[table["status"] == "ok"]
    assert (ok["width"] == SIDE).all() and (ok["height"] == SIDE).all()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "usae.data.manifest"]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "3 of 6" in text
    for name in ("empty.jpg", "text.jpg", "cut.jpg"):
        assert name in text
    assert "good1.png" not in text


def test_usable_keeps_ok_rows_in_order(messy_tree: Path, tmp_path: Path) -> None:
    table = build_manifest(_folder_cfg(messy_tree), tmp_path / "m.parquet")
    rows = usable(table)
    assert rows["image_id"].tolist() == ["cat/good1.png", "cat/good2.jpg", "dog/good3.PNG"]
    assert rows["index"].is_monotonic_increasing
    assert (rows["status"] == "ok").all()
    assert usable(read_manifest(tmp_path / "m.parquet"))["image_id"].tolist() == rows["image_id"].tolist()


def test_no_warning_when_all_readable(imagenet_tree: Path, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="usae.data.manifest")
    build_manifest(_folder_cfg(imagenet_tree), tmp_path / "m.parquet")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- sources that give nothing ----------------------------------------------------------


def test_only_unreadable_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"")
    (root / "b.png").write_text("nope")
    out = tmp_path / "out" / "m.parquet"
    with pytest.raises(ValueError, match=re.escape(str(root))):
        build_manifest(_folder_cfg(root), out)
    assert not out.exists()


def test_folder_without_image_files(tmp_path: Path) -> None:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "README.txt").write_text("hi")
    (root / "sub" / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="no image files") as err:
        build_manifest(_folder_cfg(root), tmp_path / "m.parquet")
    assert str(root) in str(err.value)
    assert ".jpg" in str(err.value)


def test_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(root))):
        build_manifest(_folder_cfg(root), tmp_path / "m.parquet")


@pytest.mark.parametrize("source", ["folder", "list"])
def test_missing_source_path(tmp_path: Path, source: str) -> None:
    missing = tmp_path / "does_not_exist"
    cfg = ManifestConfig(name="t", source=source, path=str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_manifest(cfg, tmp_path / "m.parquet")


def test_folder_source_pointing_at_file(tmp_path: Path) -> None:
    path = _img(tmp_path / "one.png")
    with pytest.raises(ValueError, match="not a folder"):
        build_manifest(_folder_cfg(path), tmp_path / "m.parquet")


# --- list source ------------------------------------------------------------------------


@pytest.fixture
def listed_images(tmp_path: Path) -> Path:
    base = tmp_path / "listed"
    _img(base / "imgs" / "a.png", 16, 8)
    _img(base / "imgs" / "b.png")
    _img(base / "imgs" / "c.jpg")
    _img(base / "imgs" / "d.png")
    return base


def test_csv_list(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({
        "path": ["imgs/b.png", "imgs/a.png", "imgs/c.jpg", "imgs/d.png"],
        "label": ["dog", "cat", "cat", "bird"],
        "split": ["validation", "train", "TRAIN", "val"],
    }).to_csv(csv, index=False)
    table = build_manifest(_list_cfg(csv), tmp_path / "out" / "m.parquet")
    assert table["image_id"].tolist() == ["imgs/a.png", "imgs/b.png", "imgs/c.jpg", "imgs/d.png"]
    assert table["split"].tolist() == ["train", "val", "train", "val"]
    assert table["label"].tolist() == ["cat", "dog", "cat", "bird"]
    assert table["index"].tolist() == [0, 1, 2, 3]
    assert (table["width"].tolist(), table["height"].tolist()) == ([16, 16, 16, 16], [8, 16, 16, 16])
    assert [Path(p) for p in table["path"]] == [(listed_images / i).resolve() for i in table["image_id"]]
    assert (table["status"] == "ok").all()


def test_csv_list_relative_to_csv_not_cwd(listed_images: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({"path": ["imgs/a.png"]}).to_csv(csv, index=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    table = build_manifest(_list_cfg(csv), tmp_path / "m.parquet")
    assert table["status"].tolist() == ["ok"]
    assert Path(table["path"].iloc[0]) == (listed_images / "imgs" / "a.png").resolve()


def test_csv_list_image_id_column_and_hash_split(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({"path": ["imgs/a.png", "imgs/b.png"], "image_id": ["x1", "x2"]}).to_csv(csv, index=False)
    table = build_manifest(_list_cfg(csv, val_fraction=1.0), tmp_path / "m.parquet")
    assert table["image_id"].tolist() == ["x1", "x2"]
    assert table["split"].tolist() == ["val", "val"]
    assert table["label"].isna().all()


def test_csv_list_blank_split_cells_get_hash_split(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    csv.write_text("path,label,split\nimgs/a.png,cat,train\nimgs/b.png,dog,\nimgs/c.jpg,,val\n")
    table = build_manifest(_list_cfg(csv, val_fraction=1.0), tmp_path / "m.parquet")
    assert _splits(table) == {"imgs/a.png": "train", "imgs/b.png": "val", "imgs/c.jpg": "val"}
    labels = dict(zip(table["image_id"], table["label"]))
    assert labels["imgs/a.png"] == "cat"
    assert pd.isna(labels["imgs/c.jpg"])


def test_parquet_list(listed_images: Path, tmp_path: Path) -> None:
    pq = tmp_path / "list.parquet"
    pd.DataFrame({
        "path": [str(listed_images / "imgs" / "a.png"), str(listed_images / "imgs" / "c.jpg")],
        "image_id": ["a", "c"],
        "label": [3, 7],
        "split": ["train", "valid"],
    }).to_parquet(pq, index=False)
    table = build_manifest(_list_cfg(pq), tmp_path / "out" / "m.parquet")
    assert table["image_id"].tolist() == ["a", "c"]
    assert table["split"].tolist() == ["train", "val"]
    assert table["label"].tolist() == ["3", "7"]
    assert (table["status"] == "ok").all()


def test_list_missing_file_is_unreadable(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({"path": ["imgs/a.png", "imgs/gone.png"]}).to_csv(csv, index=False)
    table = build_manifest(_list_cfg(csv), tmp_path / "m.parquet")
    assert dict(zip(table["image_id"], table["status"])) == {"imgs/a.png": "ok", "imgs/gone.png": "unreadable"}
    assert "file not found" in table.set_index("image_id").loc["imgs/gone.png", "reason"]


def test_list_unknown_split(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({"path": ["imgs/a.png", "imgs/b.png"], "split": ["train", "holdout"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="holdout"):
        build_manifest(_list_cfg(csv), tmp_path / "m.parquet")


def test_list_without_path_column(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({"file": ["imgs/a.png"], "label": ["cat"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="'path'"):
        build_manifest(_list_cfg(csv), tmp_path / "m.parquet")


def test_list_wrong_suffix(listed_images: Path, tmp_path: Path) -> None:
    txt = listed_images / "list.txt"
    txt.write_text("imgs/a.png\n")
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        build_manifest(_list_cfg(txt), tmp_path / "m.parquet")


def test_list_duplicate_ids(listed_images: Path, tmp_path: Path) -> None:
    csv = listed_images / "list.csv"
    pd.DataFrame({"path": ["imgs/a.png", "imgs/a.png"]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="duplicate"):
        build_manifest(_list_cfg(csv), tmp_path / "m.parquet")


# --- synthetic source -------------------------------------------------------------------


def _synthetic_cfg(seed: int = 0) -> ManifestConfig:
    return ManifestConfig(source="synthetic", seed=seed, synthetic=SyntheticImagesConfig(n_images=12, image_size=64))


@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = tmp_path_factory.mktemp("syn")
    a = build_manifest(_synthetic_cfg(), base / "a" / "manifest.parquet")
    b = build_manifest(_synthetic_cfg(), base / "b" / "manifest.parquet")
    return a, b


def test_synthetic_rows(synthetic_pair: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    a, _ = synthetic_pair
    assert len(a) == 12
    assert (a["status"] == "ok").all()
    assert (a["width"] == 64).all() and (a["height"] == 64).all()
    assert a["image_id"].is_unique and a["image_id"].is_monotonic_increasing
    assert a["index"].tolist() == list(range(12))
    assert set(a["split"]) <= {"train", "val"}
    assert all(Path(p).is_file() for p in a["path"])


def test_synthetic_deterministic(synthetic_pair: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    a, b = synthetic_pair
    assert a["path"].tolist() != b["path"].tolist()  # different out dirs
    assert manifest_hash(a) == manifest_hash(b)
    pd.testing.assert_frame_equal(a.drop(columns="path"), b.drop(columns="path"))


def test_manifest_hash_sensitivity(synthetic_pair: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    a, _ = synthetic_pair
    h = manifest_hash(a)
    assert re.fullmatch(r"[0-9a-f]{64}", h)

    moved = a.copy()
    moved["path"] = ["/elsewhere/" + Path(p).name for p in moved["path"]]
    assert manifest_hash(moved) == h

    flipped = a.copy()
    flipped.loc[0, "split"] = "val" if flipped.loc[0, "split"] == "train" else "train"
    assert manifest_hash(flipped) != h

    relabelled = a.copy()
    relabelled.loc[3, "label"] = "something"
    assert manifest_hash(relabelled) != h

    broken = a.copy()
    broken.loc[5, "status"] = "unreadable"
    assert manifest_hash(broken) != h

    dropped = a.iloc[1:]
    assert manifest_hash(dropped) != h


# --- the Parquet file -------------------------------------------------------------------


def test_round_trip(messy_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    table = build_manifest(_folder_cfg(messy_tree), out)
    back = read_manifest(out)
    assert list(back.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert manifest_hash(back) == manifest_hash(table)
    assert back["index"].tolist() == list(range(len(back)))


def test_round_trip_synthetic(tmp_path: Path) -> None:
    cfg = ManifestConfig(source="synthetic", synthetic=SyntheticImagesConfig(n_images=3, image_size=32))
    out = tmp_path / "m.parquet"
    table = build_manifest(cfg, out)
    back = read_manifest(str(out))
    assert manifest_hash(back) == manifest_hash(table)
    assert back["label"].isna().all()


def test_read_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path / "nope.parquet")


def test_read_manifest_wrong_columns(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pd.DataFrame({"image_id": ["a"], "path": ["/x"]}).to_parquet(path)
    with pytest.raises(ValueError, match="missing columns"):
        read_manifest(path)


def test_write_is_atomic_no_leftovers(imagenet_tree: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out = out_dir / "manifest.parquet"
    build_manifest(_folder_cfg(imagenet_tree), out)
    build_manifest(_folder_cfg(imagenet_tree), out)  # overwrite in place
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.parquet"]
    assert len(read_manifest(out)) == 5


def test_failed_write_keeps_old_file(imagenet_tree: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "out"
    out = out_dir / "manifest.parquet"
    first = build_manifest(_folder_cfg(imagenet_tree), out)
    _img(imagenet_tree / "train" / "n03_fox" / "z.jpg")

    def half_write(self: pd.DataFrame, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_write)
    with pytest.raises(OSError, match="disk full"):
        build_manifest(_folder_cfg(imagenet_tree), out)
    monkeypatch.undo()
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.parquet"]
    pd.testing.assert_frame_equal(read_manifest(out), first, check_dtype=False)
