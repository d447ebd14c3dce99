"""Bad input, one case at a time and all together: every file is built here with PIL/numpy.

For each case: what ``check_image`` (manifest time) and ``load_rgb`` (extraction time) say,
and what the manifest of a folder holding all of them records: good images ``ok``, bad ones
``unreadable`` (or ``duplicate``) with a reason saying what is wrong, a warning naming each
culprit, and the rest of the manifest built. An image deleted between the manifest and the
extraction is flagged invalid in the store, named in its ``failed`` attribute, and the other
rows are extracted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from usae.config import ManifestConfig
from usae.data import images
from usae.data.images import REASON_KINDS, ImageReadError, check_image, load_rgb, reason_kind
from usae.data.manifest import build_manifest, manifest_hash, read_manifest, usable
from usae.fingerprint import file_sha256

SIDE = 24


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (8-bit RGB) with a few bytes of data: cheap to build."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


# --- the cases ---------------------------------------------------------------------------


def make_good_jpeg(path: Path) -> Path:
    Image.fromarray(_noise(SIDE, SIDE + 8, 1)).save(path, quality=95)
    return path


def make_truncated_jpeg(path: Path) -> Path:
    Image.fromarray(_noise(64, 64, 2)).save(path, "JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def make_text_named_jpg(path: Path) -> Path:
    path.write_text("this is not a picture, just notes\n" * 20)
    return path


RGBA_PIXELS = {  # (row, col): (RGBA written, RGB expected after compositing on white)
    (0, 0): ((0, 0, 0, 0), (255, 255, 255)),  # fully transparent black -> white
    (0, 1): ((255, 0, 0, 255), (255, 0, 0)),  # opaque red stays red
    (0, 2): ((0, 0, 0, 128), (127, 127, 127)),  # half-transparent black -> mid grey
    (0, 3): ((0, 0, 255, 64), (191, 191, 255)),  # a quarter blue over white
}


def make_rgba_png(path: Path) -> Path:
    rgba = np.full((4, 6, 4), (10, 200, 30, 255), dtype=np.uint8)
    for (r, c), (written, _) in RGBA_PIXELS.items():
        rgba[r, c] = written
    Image.fromarray(rgba, "RGBA").save(path)
    return path


GREY = np.array([[0, 64, 128], [192, 254, 255]], dtype=np.uint8)


def make_grey_png(path: Path) -> Path:
    Image.fromarray(GREY, "L").save(path)
    return path


def make_cmyk_jpeg(path: Path) -> Path:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    img.paste((255, 0, 255, 0), (8, 0, 16, 16))  # green on the right half
    img.save(path, quality=95)
    return path


DEEP = np.array([[0, 1, 257, 1000], [32768, 49151, 65534, 65535]], dtype=np.uint16)


def make_16bit_png(path: Path) -> Path:
    Image.fromarray(DEEP).save(path)  # mode I;16
    return path


def make_huge_png(path: Path) -> Path:
    return _png_header_only(path, 20_000, 20_000)  # 400 million pixels, a few hundred bytes on disk


CASES: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    # file name: (builder, reason regex; None = readable)
    "good.jpg": (make_good_jpeg, None),
    "truncated.jpg": (make_truncated_jpeg, r"^corrupt or truncated: image file is truncated"),
    "empty.jpg": (make_empty, r"^empty file \(0 bytes\)$"),
    "notes.jpg": (make_text_named_jpg, r"^not an image \(unknown format; the file starts with b'this is not a pi'\)$"),
    "alpha.png": (make_rgba_png, None),
    "grey.png": (make_grey_png, None),
    "cmyk.jpg": (make_cmyk_jpeg, None),
    "deep16.png": (make_16bit_png, None),
    "huge.png": (make_huge_png,
                 r"^too large: 400,000,000 pixels exceeds the decompression-bomb guard of 178,956,970 pixels$"),
}
BAD = [name for name, (_, reason) in CASES.items() if reason is not None]
GOOD = [name for name, (_, reason) in CASES.items() if reason is None]
MODES = {"good.jpg": "RGB", "alpha.png": "RGBA", "grey.png": "L", "cmyk.jpg": "CMYK", "deep16.png": "I;16"}


def _make(tmp_path: Path, name: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return CASES[name][0](tmp_path / name)


# --- check_image and load_rgb, one case at a time ------------------------------------------


@pytest.mark.parametrize("name", BAD)
def test_check_image_names_the_file_and_the_problem(tmp_path: Path, name: str) -> None:
    path = _make(tmp_path, name)
    with pytest.raises(ImageReadError) as caught:
        check_image(path)
    err = caught.value
    assert re.search(CASES[name][1], err.reason), err.reason
    assert err.path == str(path)
    assert str(err) == f"{path}: {err.reason}"
    assert reason_kind(err.reason) in REASON_KINDS


@pytest.mark.parametrize("name", BAD)
def test_load_rgb_gives_the_same_reason(tmp_path: Path, name: str) -> None:
    """Extraction refuses what the manifest refuses, for the same reason, naming the file."""
    path = _make(tmp_path, name)
    with pytest.raises(ImageReadError) as at_manifest:
        check_image(path)
    with pytest.raises(ImageReadError) as at_extraction:
        load_rgb(path)
    assert str(at_extraction.value).startswith(f"{path}: ")
    assert reason_kind(at_extraction.value.reason) == reason_kind(at_manifest.value.reason) != "other"


@pytest.mark.parametrize("name", GOOD)
def test_good_cases_are_readable_in_both_stages(tmp_path: Path, name: str) -> None:
    path = _make(tmp_path, name)
    info = check_image(path)
    img = load_rgb(path)
    assert info.mode == MODES[name]
    assert img.mode == "RGB" and img.size == (info.width, info.height)


def test_rgba_png_is_composited_on_white(tmp_path: Path) -> None:
    out = np.asarray(load_rgb(make_rgba_png(tmp_path / "a.png"))).astype(int)
    assert out.shape == (4, 6, 3)
    for (r, c), (_, expected) in RGBA_PIXELS.items():
        assert np.abs(out[r, c] - expected).max() <= 1, ((r, c), out[r, c].tolist(), expected)
    assert out[3, 5].tolist() == [10, 200, 30]  # opaque pixels unchanged


def test_grayscale_is_replicated_to_rgb(tmp_path: Path) -> None:
    out = np.asarray(load_rgb(make_grey_png(tmp_path / "g.png")))
    assert out.shape == (*GREY.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], GREY)


def test_cmyk_jpeg_keeps_its_colours(tmp_path: Path) -> None:
    path = make_cmyk_jpeg(tmp_path / "c.jpg")
    assert Image.open(path).mode == "CMYK"
    out = np.asarray(load_rgb(path)).astype(int)
    r, g, b = out[8, 3]
    assert r > 200 and g < 60 and b < 60  # red, not inverted
    r, g, b = out[8, 12]
    assert g > 200 and r < 60 and b < 60  # green


def test_16bit_png_maps_the_full_range_to_8_bits(tmp_path: Path) -> None:
    path = make_16bit_png(tmp_path / "d.png")
    assert Image.open(path).mode == "I;16"
    out = np.asarray(load_rgb(path)).astype(int)
    expected = np.round(DEEP / 65535 * 255).astype(int)
    for channel in range(3):
        np.testing.assert_allclose(out[..., channel], expected, atol=1)
    assert out.min() == 0 and out.max() == 255
    assert out[0, 3, 0] == 4  # 1000 / 65535: dark, not clipped to white and not stretched
    assert 126 <= out[1, 0, 0] <= 129  # 32768: mid grey, not clipped to 255
    assert np.all(np.diff(out[1, :3, 0]) > 0)  # values above 255 stay distinct (PIL's convert clips them)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_truncated_jpeg_refused_wherever_it_is_cut(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.jpg"
    Image.fromarray(_noise(96, 96, 3)).save(full, quality=95)
    data = full.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * fraction)])
    for read in (check_image, load_rgb):
        with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: corrupt or truncated"):
            read(path)


def test_truncated_png_refused(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.fromarray(_noise(64, 64, 4)).save(full)
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[:-300])
    for read in (check_image, load_rgb):
        with pytest.raises(ImageReadError, match="corrupt or truncated"):
            read(path)


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    """The real guard: a file claiming 400 million pixels is refused from its header, in both stages."""
    path = make_huge_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000
    for read in (check_image, load_rgb):
        with pytest.raises(ImageReadError, match="too large: 400,000,000 pixels exceeds the decompression-bomb guard"):
            read(path)


def test_own_guard_uses_max_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under PIL's limits, ``MAX_PIXELS`` decides, from the header (the data is never decoded)."""
    path = _png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 MP: PIL itself would try to decode it
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        check_image(path)  # not refused as too large: its fake data is what fails
    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
    message = (f"^{re.escape(str(path))}: too large: 9000x9000 = 81,000,000 pixels exceeds the decompression-bomb "
               "guard of 1,000,000 pixels$")
    for read in (check_image, load_rgb):
        with pytest.raises(ImageReadError, match=message):
            read(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"
    with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: file not found$"):
        check_image(path)
    with pytest.raises(ImageReadError, match=re.escape(f"{path}: file not found (deleted or moved after the "
                                                       "manifest was built?)")):
        load_rgb(path)


def test_folder_named_like_an_image(tmp_path: Path) -> None:
    path = tmp_path / "album.jpg"
    path.mkdir()
    for read in (check_image, load_rgb):
        with pytest.raises(ImageReadError, match=re.escape(f"{path}: not a file (a folder)")):
            read(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path: Path) -> None:
    path = make_good_jpeg(tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        for read in (check_image, load_rgb):
            with pytest.raises(ImageReadError, match=re.escape(f"{path}: permission denied")):
                read(path)
    finally:
        path.chmod(0o644)


def test_html_page_saved_as_jpg_shows_its_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "download.jpg"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(ImageReadError, match=re.escape("not an image (unknown format; the file starts with "
                                                       "b'<!DOCTYPE html><')")):
        check_image(path)


def test_reason_kind() -> None:
    assert reason_kind("empty file (0 bytes)") == "empty file"
    assert reason_kind("corrupt or truncated: x") == "corrupt or truncated"
    assert reason_kind("too large: 5 pixels") == "too large"
    assert reason_kind("same content as a.png") == "other"


def test_error_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("empty file (0 bytes)", "/x/a.jpg")))
    assert (err.reason, err.path, str(err)) == ("empty file (0 bytes)", "/x/a.jpg", "/x/a.jpg: empty file (0 bytes)")


# --- all of them in one folder: the manifest ------------------------------------------------


@pytest.fixture
def battery(tmp_path: Path) -> Path:
    """Every case in one folder, plus byte-identical copies of the good JPEG and of the empty file."""
    root = tmp_path / "battery"
    for name in CASES:
        _make(root, name)
    shutil.copyfile(root / "good.jpg", root / "copy_of_good.jpg")  # sorts before good.jpg, yet the copy
    shutil.copyfile(root / "good.jpg", root / "zz_second_copy.jpg")
    shutil.copyfile(root / "empty.jpg", root / "empty_too.jpg")  # unreadable, not a duplicate
    return root


def _cfg(root: Path, **kw) -> ManifestConfig:
    return ManifestConfig(name="bad", source="folder", path=str(root), **kw)


def test_manifest_of_every_case(battery: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="usae.data.manifest")
    out = tmp_path / "out" / "manifest.parquet"
    table = build_manifest(_cfg(battery), out, workers=3)
    assert out.is_file()  # the rest goes on
    by_id = table.set_index("image_id")
    expected_ok = set(GOOD)
    for image_id, row in by_id.iterrows():
        if image_id in expected_ok:
            assert (row["status"], row["reason"]) == ("ok", ""), image_id
            assert row["width"] > 0 and row["height"] > 0
        elif image_id in ("copy_of_good.jpg", "zz_second_copy.jpg"):
            assert (row["status"], row["reason"]) == ("duplicate", "same content as good.jpg"), image_id
            assert row["width"] == SIDE + 8  # it was readable: only its content is a repeat
        else:
            pattern = CASES.get(image_id, CASES["empty.jpg"])[1]
            assert row["status"] == "unreadable", image_id
            assert re.search(pattern, row["reason"]), (image_id, row["reason"])
            assert row["width"] == -1 and row["height"] == -1
    assert sorted(by_id.index[by_id["status"] == "unreadable"]) == sorted([*BAD, "empty_too.jpg"])
    assert sorted(usable(table)["image_id"]) == sorted(expected_ok)

    records = [r for r in caplog.records if r.name == "usae.data.manifest" and r.levelno == logging.WARNING]
    unreadable, duplicate = (next(r.getMessage() for r in records if what in r.getMessage())
                             for what in ("unreadable", "byte-identical"))
    assert f"{len(BAD) + 1} of {len(table)} images are unreadable and excluded" in unreadable
    for name in [*BAD, "empty_too.jpg"]:
        reason = by_id.loc[name, "reason"]
        assert f"  {battery / name}: {reason}" in unreadable.splitlines()
    for name in GOOD:
        assert str(battery / name) not in unreadable
    assert f"2 of {len(table)} images are byte-identical copies of an earlier image and excluded" in duplicate
    for name in ("copy_of_good.jpg", "zz_second_copy.jpg"):
        assert f"  {battery / name}: same content as good.jpg" in duplicate.splitlines()

    back = read_manifest(out)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert manifest_hash(back) == manifest_hash(table)


def test_duplicates_only_when_bytes_are_identical(tmp_path: Path) -> None:
    root = tmp_path / "same_pixels"
    root.mkdir()
    pixels = _noise(16, 16, 5)
    Image.fromarray(pixels).save(root / "a.png")
    Image.fromarray(pixels).save(root / "b.png", compress_level=1)  # same pixels, other bytes: kept
    Image.fromarray(pixels).save(root / "c.bmp")
    table = build_manifest(_cfg(root), tmp_path / "m.parquet")
    assert (table["status"] == "ok").all()
    assert file_sha256(root / "a.png") != file_sha256(root / "b.png")


def test_the_original_is_kept_not_the_copy_whose_path_sorts_first(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for folder in ("nature", "faults", "aaa"):
        (root / folder).mkdir(parents=True)
    make_good_jpeg(root / "nature" / "Garden.jpg")
    for copy in ("faults/dup-of-garden.jpg", "aaa/Garden (1).jpg", "nature/Garden copy.jpg"):
        shutil.copyfile(root / "nature" / "Garden.jpg", root / copy)
    table = build_manifest(_cfg(root), tmp_path / "m.parquet").set_index("image_id")
    assert table.loc["nature/Garden.jpg", "status"] == "ok"
    copies = table.drop(index="nature/Garden.jpg")
    assert (copies["status"] == "duplicate").all() and len(copies) == 3
    assert (copies["reason"] == "same content as nature/Garden.jpg").all()


def test_duplicate_names_of_equal_length_keep_the_first_by_image_id(tmp_path: Path) -> None:
    root = tmp_path / "splits"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "val" / "cat").mkdir(parents=True)
    make_good_jpeg(root / "val" / "cat" / "a.jpg")
    shutil.copyfile(root / "val" / "cat" / "a.jpg", root / "train" / "cat" / "z.jpg")
    table = build_manifest(_cfg(root), tmp_path / "m.parquet").set_index("image_id")
    assert table.loc["train/cat/z.jpg", "status"] == "ok"
    assert table.loc["val/cat/a.jpg", "status"] == "duplicate"
    assert table.loc["val/cat/a.jpg", "reason"] == "same content as train/cat/z.jpg"


def test_same_file_listed_twice_under_two_ids_is_a_duplicate(tmp_path: Path) -> None:
    make_good_jpeg(tmp_path / "one.jpg")
    Image.fromarray(_noise(8, 8, 9)).save(tmp_path / "two.png")
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": ["one.jpg", "two.png", "one.jpg"], "image_id": ["b", "c", "a"]}).to_csv(csv, index=False)
    table = build_manifest(ManifestConfig(source="list", path=str(csv)), tmp_path / "m.parquet")
    assert table[["image_id", "status", "reason"]].values.tolist() == [
        ["a", "ok", ""], ["b", "duplicate", "same content as a"], ["c", "ok", ""]]


def test_repeated_image_ids_name_the_ids_rows_and_list(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.fromarray(_noise(8, 8, len(name))).save(tmp_path / name)
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a.png", "b.png", "a.png", "b.png", "a.png"]}).to_csv(csv, index=False)
    out = tmp_path / "m.parquet"
    with pytest.raises(ValueError) as caught:
        build_manifest(ManifestConfig(source="list", path=str(csv)), out)
    message = str(caught.value)
    assert f"2 duplicate image id(s) in list source {csv}" in message
    assert "'a.png' (rows 1, 3, 5)" in message and "'b.png' (rows 2, 4)" in message
    assert "image_id" in message  # how to fix it
    assert not out.exists()


def test_only_duplicates_and_bad_files_still_keep_one_copy(tmp_path: Path) -> None:
    root = tmp_path / "copies"
    root.mkdir()
    make_good_jpeg(root / "a.jpg")
    for name in ("b.jpg", "c.jpg"):
        shutil.copyfile(root / "a.jpg", root / name)
    make_empty(root / "d.jpg")
    table = build_manifest(_cfg(root), tmp_path / "m.parquet")
    assert table["status"].tolist() == ["ok", "duplicate", "duplicate", "unreadable"]


def test_duplicates_change_the_manifest_hash(tmp_path: Path) -> None:
    root = tmp_path / "h"
    root.mkdir()
    make_good_jpeg(root / "a.jpg")
    Image.fromarray(_noise(8, 8, 7)).save(root / "b.png")
    before = manifest_hash(build_manifest(_cfg(root), tmp_path / "1.parquet"))
    shutil.copyfile(root / "b.png", root / "c.png")
    after = build_manifest(_cfg(root), tmp_path / "2.parquet")
    assert after["status"].tolist() == ["ok", "ok", "duplicate"]
    assert manifest_hash(after) != before


# --- an image deleted between the manifest and the extraction --------------------------------


def test_image_deleted_before_extraction_is_flagged_and_the_rest_extracted(
        battery: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from usae.activations.extract import extract_activations
    from usae.activations.store import open_store
    from usae.config import BackboneSpec, ExtractConfig

    spec = BackboneSpec(key="tiny", name="vit_small_patch16_224", pretrained=False, image_size=32,
                        kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2})
    manifest = tmp_path / "manifest.parquet"
    table = build_manifest(_cfg(battery), manifest)
    victim = battery / "grey.png"
    victim.unlink()
    caplog.set_level(logging.WARNING, logger="usae.activations.extract")
    cfg = ExtractConfig(n_parts=1, batch_size=3, num_workers=0, device="cpu", images_per_chunk=2, keep_prefix=False)
    result = extract_activations(manifest, spec, cfg, 0, tmp_path / "part0.zarr")

    store = open_store(tmp_path / "part0.zarr")
    rows = store["rows"][:]
    ok = usable(table)
    assert rows.tolist() == ok["index"].tolist()  # unreadable and duplicate rows were never extracted
    path_of = table.set_index("index")["path"]
    valid = dict(zip((path_of[r] for r in rows), store["valid"][:].tolist()))
    assert valid == {p: p != str(victim) for p in ok["path"]}
    assert result.n_failed == 1 and result.n_images == len(ok)
    assert store.attrs["failed"] == {str(victim): "file not found (deleted or moved after the manifest was built?)"}
    patches = store[f"{spec.layer_tag}/patches"][:].astype(np.float32)
    assert np.isfinite(patches).all()
    assert str(victim) in caplog.text and "marked invalid" in caplog.text
