"""Tests of the synthetic image generator with planted factors and of patch factor coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usae.planted import images as si
from usae.planted.images import (
    COLOURS,
    FACTORS,
    SHADE,
    SyntheticImageSet,
    generate_images,
    load_object_map,
    patch_factor_coverage,
)

N, SIZE, MAX_OBJ = 12, 64, 4


@pytest.fixture(scope="module")
def image_set(tmp_path_factory: pytest.TempPathFactory) -> SyntheticImageSet:
    return generate_images(tmp_path_factory.mktemp("syn") / "set", N, image_size=SIZE, max_objects=MAX_OBJ, seed=3)


def _bytes(s: SyntheticImageSet) -> list[bytes]:
    return [p.read_bytes() for p in s.paths]


def test_layout_and_table(image_set: SyntheticImageSet) -> None:
    root = image_set.object_map_path.parent
    assert [p.name for p in image_set.paths] == [f"img_{i:06d}.png" for i in range(N)]
    assert all(p.parent == root / "images" for p in image_set.paths)
    assert (root / "objects.parquet").is_file()
    df = image_set.objects
    assert list(df.columns) == ["image_index", "object", "shape", "colour", "texture", "cx", "cy", "size"]
    counts = df.groupby("image_index").size()
    assert list(counts.index) == list(range(N)) and counts.between(1, MAX_OBJ).all()
    for _, g in df.groupby("image_index"):
        assert list(g["object"]) == list(range(1, len(g) + 1))
    for factor, values in FACTORS.items():
        assert set(df[factor]) <= set(values)
    half = df["size"] // 2
    assert (df["cx"] - half >= 0).all() and (df["cx"] - half + df["size"] <= SIZE).all()
    assert (df["cy"] - half >= 0).all() and (df["cy"] - half + df["size"] <= SIZE).all()
    for p in image_set.paths:
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)


def test_object_map_metadata(image_set: SyntheticImageSet) -> None:
    arr = load_object_map(image_set.object_map_path)
    assert arr.shape == (N, SIZE, SIZE) and arr.dtype == np.uint8
    assert arr.metadata.zarr_format == 3
    assert arr.chunks[1:] == (SIZE, SIZE)
    assert "zstd" in type(arr.compressors[0]).__name__.lower()
    attrs = dict(arr.attrs)
    assert attrs["seed"] == 3 and attrs["image_size"] == SIZE
    assert attrs["factors"] == {k: list(v) for k, v in FACTORS.items()}


def test_determinism(tmp_path: Path, image_set: SyntheticImageSet) -> None:
    again = generate_images(tmp_path / "again", N, image_size=SIZE, max_objects=MAX_OBJ, seed=3)
    assert _bytes(again) == _bytes(image_set)
    pd.testing.assert_frame_equal(again.objects, image_set.objects)
    np.testing.assert_array_equal(load_object_map(again.object_map_path)[:],
                                  load_object_map(image_set.object_map_path)[:])
    other = generate_images(tmp_path / "other", N, image_size=SIZE, max_objects=MAX_OBJ, seed=4)
    assert all(a != b for a, b in zip(_bytes(other), _bytes(image_set)))
    # image i depends only on (seed, i): a shorter set is a prefix of a longer one
    short = generate_images(tmp_path / "short", 3, image_size=SIZE, max_objects=MAX_OBJ, seed=3)
    assert _bytes(short) == _bytes(image_set)[:3]


def test_object_map_agrees_with_table(image_set: SyntheticImageSet) -> None:
    omap = load_object_map(image_set.object_map_path)[:]
    n_per_image = image_set.objects.groupby("image_index").size()
    for i in range(N):
        labels = set(np.unique(omap[i]).tolist()) - {0}
        assert labels <= set(range(1, n_per_image[i] + 1))
        # the topmost object is never occluded
        assert n_per_image[i] in labels
    for row in image_set.objects.itertuples():
        x0, y0 = row.cx - row.size // 2, row.cy - row.size // 2
        ys, xs = np.nonzero(omap[row.image_index] == row.object)
        if len(ys):  # visible pixels stay inside the object's bounding box
            assert ys.min() >= y0 and ys.max() < y0 + row.size
            assert xs.min() >= x0 and xs.max() < x0 + row.size


def test_planted_colours(image_set: SyntheticImageSet) -> None:
    omap = load_object_map(image_set.object_map_path)[:]
    palette = np.array(list(COLOURS.values()), dtype=float)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    full_share: dict[str, list[float]] = {t: [] for t in FACTORS["texture"]}
    for row in image_set.objects.itertuples():
        rgb = np.asarray(Image.open(image_set.paths[row.image_index]))
        pix = rgb[omap[row.image_index] == row.object].astype(int)
        if not len(pix):
            continue
        full = np.array(COLOURS[row.colour])
        shade = np.round(SHADE * full)
        is_full = (pix == full).all(axis=1)
        is_shade = (pix == shade).all(axis=1)
        assert (is_full | is_shade).all(), "object pixels must be its colour or its colour's shade"
        if row.texture == "solid":
            assert is_full.all()
        mean = pix.mean(axis=0)
        nearest = list(COLOURS)[int(np.argmax(palette @ (mean / np.linalg.norm(mean))))]
        assert nearest == row.colour
        full_share[row.texture].append(is_full.mean())
    bg = np.asarray(Image.open(image_set.paths[0]))[omap[0] == 0].astype(float)
    assert np.ptp(bg.mean(axis=0)) < 20 and bg.std() < 25  # grey-ish and low contrast
    assert np.mean(full_share["stripes"]) > 0.5 and np.mean(full_share["dots"]) > 0.5
    assert np.mean(full_share["checker"]) > 0.3


def test_coverage_sums(image_set: SyntheticImageSet) -> None:
    omap = load_object_map(image_set.object_map_path)[:]
    for grid in (1, 5, 7, 8):  # 5 and 7 do not divide 64
        cov = patch_factor_coverage(omap, image_set.objects, grid)
        assert set(cov) == {*FACTORS, "object"}
        for factor, values in FACTORS.items():
            assert cov[factor].shape == (N, grid, grid, len(values)) and cov[factor].dtype == np.float32
            np.testing.assert_allclose(cov[factor].sum(-1), cov["object"][..., 0], atol=1e-6)
        assert cov["object"].shape == (N, grid, grid, 1)
    whole = patch_factor_coverage(omap, image_set.objects, 1)["object"][:, 0, 0, 0]
    np.testing.assert_allclose(whole, (omap > 0).mean(axis=(1, 2)), atol=1e-6)


def test_coverage_hand_checked() -> None:
    omap = np.array([[[0, 1, 2, 2],
                      [1, 1, 2, 0],
                      [0, 0, 0, 0],
                      [3, 0, 0, 1]]], dtype=np.uint8)
    objects = pd.DataFrame({
        "image_index": [0, 0, 0], "object": [1, 2, 3],
        "shape": ["circle", "square", "circle"], "colour": ["red", "blue", "red"],
        "texture": ["solid", "dots", "checker"], "cx": [0, 0, 0], "cy": [0, 0, 0], "size": [8, 8, 8]})
    cov = patch_factor_coverage(omap, objects, 2)
    red, blue = FACTORS["colour"].index("red"), FACTORS["colour"].index("blue")
    np.testing.assert_array_equal(cov["object"][0, :, :, 0], [[0.75, 0.75], [0.25, 0.25]])
    np.testing.assert_array_equal(cov["colour"][0, :, :, red], [[0.75, 0.0], [0.25, 0.25]])
    np.testing.assert_array_equal(cov["colour"][0, :, :, blue], [[0.0, 0.75], [0.0, 0.0]])
    circle = FACTORS["shape"].index("circle")
    np.testing.assert_array_equal(cov["shape"][0, :, :, circle], [[0.75, 0.0], [0.25, 0.25]])
    checker = FACTORS["texture"].index("checker")
    np.testing.assert_array_equal(cov["texture"][0, :, :, checker], [[0.0, 0.0], [0.25, 0.0]])
    # 3 rows, grid 2: rows {0, 1} -> cell 0 (floor(y*2/3)), row {2} -> cell 1
    cov3 = patch_factor_coverage(np.array([[[1], [0], [1]]], dtype=np.uint8), objects, 1)
    np.testing.assert_allclose(cov3["object"][0, 0, 0, 0], 2 / 3)
    cov3 = patch_factor_coverage(np.array([[[1, 1], [0, 0], [1, 1]]], dtype=np.uint8), objects, 2)
    np.testing.assert_array_equal(cov3["object"][0, :, :, 0], [[0.5, 0.5], [1.0, 1.0]])


def test_coverage_errors() -> None:
    objects = pd.DataFrame({"image_index": [0], "object": [1], "shape": ["circle"], "colour": ["red"],
                            "texture": ["solid"], "cx": [0], "cy": [0], "size": [2]})
    omap = np.array([[[1, 2], [0, 0]]], dtype=np.uint8)
    with pytest.raises(ValueError, match="no row"):
        patch_factor_coverage(omap, objects, 1)
    with pytest.raises(ValueError, match="grid"):
        patch_factor_coverage(omap[:, :, :1] * 0, objects, 3)
    with pytest.raises(ValueError, match="colour"):
        patch_factor_coverage(np.ones((1, 2, 2), np.uint8), objects.assign(colour="purple"), 1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_images": 0}, "n_images"), ({"image_size": 31}, "image_size"),
    ({"max_objects": 0}, "max_objects"), ({"seed": -1}, "seed")])
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_images": 2, "image_size": 32, "max_objects": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        generate_images(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_reuse_and_leftover_cleanup(tmp_path: Path) -> None:
    out = tmp_path / "set"
    first = generate_images(out, 4, image_size=32, max_objects=2, seed=1)
    stamps = [p.stat().st_mtime_ns for p in first.paths]
    leftover = tmp_path / ".set.tmp-424242"
    (leftover / "images").mkdir(parents=True)
    (leftover / "images" / "img_000000.png").write_bytes(b"junk")
    second = generate_images(out, 4, image_size=32, max_objects=2, seed=1)
    assert not leftover.exists()
    assert second.paths == first.paths and _bytes(second) == _bytes(first)
    assert [p.stat().st_mtime_ns for p in second.paths] == stamps  # reused, not rewritten
    pd.testing.assert_frame_equal(second.objects, first.objects)
    third = generate_images(out, 5, image_size=32, max_objects=2, seed=1)  # other args: replaced
    assert len(third.paths) == 5 and _bytes(third)[:4] == _bytes(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = si._render

    def failing(seed: int, index: int, *args: int) -> tuple:
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, *args)

    monkeypatch.setattr(si, "_render", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_images(tmp_path / "set", 4, image_size=32, seed=0)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(si, "_render", real)
    done = generate_images(tmp_path / "set", 4, image_size=32, seed=0)
    assert all(p.is_file() for p in done.paths)


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_images(out, 2, image_size=32)
    assert (out / "notes.txt").read_text() == "keep me"
