"""Tests of the image checks (``check_image``) and RGB decoding (``load_rgb``, ``to_rgb``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usae.data import images
from usae.data.images import ImageInfo, ImageReadError, check_image, load_rgb, to_rgb


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_jpeg(path: Path, h: int = 48, w: int = 64) -> Path:
    Image.fromarray(_noise(h, w)).save(path, quality=95)
    return path


def _write_truncated_jpeg(path: Path) -> Path:
    full = path.with_name("full_" + path.name)
    _write_jpeg(full, 64, 64)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- check_image -----------------------------------------------------------------------


def test_check_valid_jpeg_reports_size(tmp_path: Path) -> None:
    info = check_image(_write_jpeg(tmp_path / "a.jpg", h=48, w=64))
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height) == (64, 48)
    assert info.mode == "RGB"


def test_check_valid_png_reports_size(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_noise(20, 30)).save(path)
    info = check_image(path)
    assert (info.width, info.height, info.mode) == (30, 20, "RGB")


def test_check_accepts_str_path(tmp_path: Path) -> None:
    path = _write_jpeg(tmp_path / "a.jpg", h=16, w=16)
    assert check_image(str(path)).width == 16


def test_check_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        check_image(path)


def test_check_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(ImageReadError, match="not an image"):
        check_image(path)


def test_check_truncated_jpeg(tmp_path: Path) -> None:
    path = _write_truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageReadError, match="truncated|corrupt"):
        check_image(path)


def test_check_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        check_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_check_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    path = tmp_path / f"big{suffix}"
    Image.fromarray(_noise(100, 100)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(ImageReadError, match="too large"):
        check_image(path)
    with pytest.raises(ImageReadError, match="too large"):
        load_rgb(path)


def test_check_under_limit_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.png"
    Image.fromarray(_noise(100, 100)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    assert check_image(path).width == 100


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", ".png"), ("L", ".jpg"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("P", ".png"), ("LA", ".png")],
)
def test_check_other_modes(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"img{suffix}"
    Image.new(mode, (24, 12)).save(path)
    info = check_image(path)
    assert (info.width, info.height) == (24, 12)
    assert info.mode == mode


# --- load_rgb / to_rgb -----------------------------------------------------------------


def test_load_rgb_jpeg(tmp_path: Path) -> None:
    img = load_rgb(_write_jpeg(tmp_path / "a.jpg", h=48, w=64))
    assert img.mode == "RGB"
    assert img.size == (64, 48)


def test_load_rgb_png_is_exact(tmp_path: Path) -> None:
    arr = _noise(10, 12)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    out = load_rgb(path)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_load_rgb_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    rgba[1:, :] = (10, 200, 30, 255)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = np.asarray(load_rgb(path))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (255, 0, 0)
    assert all(120 <= v <= 135 for v in out[0, 2])
    assert tuple(out[2, 2]) == (10, 200, 30)


def test_load_rgb_la_alpha_composited_on_white(tmp_path: Path) -> None:
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[0, 0] = (0, 0)  # transparent -> white
    la[0, 1] = (50, 255)  # opaque grey
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    out = np.asarray(load_rgb(path))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (50, 50, 50)


def test_load_rgb_grayscale(tmp_path: Path) -> None:
    arr = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(arr, "L").save(path)
    out = np.asarray(load_rgb(path))
    assert out.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def test_load_rgb_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = np.asarray(load_rgb(path)).astype(int)
    assert out.shape == (16, 16, 3)
    r, g, b = out[8, 8]
    assert r > 200 and g < 60 and b < 60  # red, not inverted


def test_load_rgb_16bit_png_rescaled(tmp_path: Path) -> None:
    arr = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_rgb(path)).astype(int)
    assert out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert all(abs(v - 128) <= 1 for v in out[0, 1])  # not clipped to 255
    assert tuple(out[1, 0]) == (0, 0, 0)
    assert all(abs(v - 4) <= 1 for v in out[1, 1])


def test_to_rgb_i16_mode_in_memory() -> None:
    img = Image.fromarray(np.array([[65535, 32768, 0]], dtype=np.uint16))
    assert img.mode == "I;16"
    out = np.asarray(to_rgb(img)).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert all(abs(v - 128) <= 1 for v in out[0, 1])
    assert out[0, 2].tolist() == [0, 0, 0]


def test_to_rgb_32bit_int_scaled_by_max() -> None:
    img = Image.fromarray(np.array([[0, 500, 1000]], dtype=np.int32), "I")
    out = np.asarray(to_rgb(img)).astype(int)
    assert out[0, 2].tolist() == [255, 255, 255]
    assert all(abs(v - 128) <= 1 for v in out[0, 1])
    assert out[0, 0].tolist() == [0, 0, 0]


def test_load_rgb_palette_png(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    palette = [0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6)  # 0 = blue, 1 = green
    img.putpalette(palette)
    img.putpixel((1, 1), 1)
    path = tmp_path / "pal.png"
    img.save(path)
    assert Image.open(path).mode == "P"
    out = np.asarray(load_rgb(path))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[1, 1]) == (0, 255, 0)


def test_load_rgb_palette_png_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([255, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))  # 0 = red, 1 = black
    img.putpixel((1, 0), 1)
    path = tmp_path / "pal_t.png"
    img.save(path, transparency=1)  # index 1 transparent
    out = np.asarray(load_rgb(path))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)


def test_load_rgb_returns_loaded_independent_image(tmp_path: Path) -> None:
    path = _write_jpeg(tmp_path / "a.jpg", h=16, w=16)
    img = load_rgb(path)
    path.unlink()  # the file handle must already be closed and the pixels in memory
    assert np.asarray(img).shape == (16, 16, 3)


def test_load_rgb_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"
    with pytest.raises(ImageReadError, match="file not found") as err:
        load_rgb(path)
    assert str(path) in str(err.value)


def test_load_rgb_truncated_jpeg(tmp_path: Path) -> None:
    path = _write_truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageReadError, match="truncated|corrupt") as err:
        load_rgb(path)
    assert str(path) in str(err.value)


def test_load_rgb_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageReadError) as err:
        load_rgb(path)
    assert str(path) in str(err.value)


def test_load_rgb_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError):
        load_rgb(path)


def _forge_png_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width x height`` (nothing that large is ever allocated)."""
    import struct
    import zlib

    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:20] = struct.pack(">I", width)  # IHDR data starts at byte 16
    data[20:24] = struct.pack(">I", height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_header_refused_by_both(tmp_path: Path) -> None:
    """A header over PIL's own bomb limit is an ImageReadError in both functions, not a PIL error."""
    path = _forge_png_size(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageReadError, match="too large"):
        check_image(path)
    with pytest.raises(ImageReadError, match="too large") as err:
        load_rgb(path)
    assert str(path) in str(err.value)
