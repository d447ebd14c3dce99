"""Reading images safely: a full check that finds unusable files, and RGB decoding.

Every image that enters the pipeline goes through :func:`check_image` (at manifest time)
and :func:`load_rgb` (at extraction time), so both stages agree on what "readable" means
and give the same reasons (:data:`REASON_KINDS`) for what is not.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 178_956_970  # PIL's own default limit; larger files are refused, not decoded

REASON_KINDS = ("empty file", "file not found", "not a file", "permission denied", "not an image",
                "corrupt or truncated", "too large")
"""How every reason of :class:`ImageReadError` begins (see :func:`reason_kind`)."""

_MISSING_LATER = "file not found (deleted or moved after the manifest was built?)"


class ImageReadError(Exception):
    """An image file that cannot be used.

    ``str(err)`` is ``"<path>: <reason>"``; ``err.reason`` alone starts with one of
    :data:`REASON_KINDS` (``"empty file (0 bytes)"``, ``"not an image (...)"``, ...).
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if self.path is None else f"{self.path}: {reason}")

    def __reduce__(self):  # keep reason and path through pickling (DataLoader workers)
        return type(self), (self.reason, self.path)


@dataclass(frozen=True)
class ImageInfo:
    """What the check learned about a readable image."""

    width: int
    height: int
    mode: str


def reason_kind(reason: str) -> str:
    """The kind of an unreadable image's reason: one of :data:`REASON_KINDS`, else ``"other"``."""
    return next((kind for kind in REASON_KINDS if reason.startswith(kind)), "other")


def check_image(path: str | Path) -> ImageInfo:
    """Decode ``path`` completely (cheaply) and report its size, or raise ImageReadError.

    JPEGs are decoded at reduced scale (``draft``), which still reads every byte, so
    truncated files are caught at a fraction of the cost of a full decode.

    Raises:
        ImageReadError: empty, missing, not an image, truncated, or too large; the
            message names the file and says what is wrong.
    """
    path = Path(path)
    with _reading(path, missing="file not found"):
        with Image.open(path) as img:
            width, height, mode = img.width, img.height, img.mode
            _refuse_huge(width, height)
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    return ImageInfo(width=width, height=height, mode=mode)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB: alpha composited on white, 16-bit and CMYK converted.

    Raises:
        ImageReadError: the file is missing or unreadable (same reasons as :func:`check_image`).
    """
    path = Path(path)
    with _reading(path, missing=_MISSING_LATER):
        with Image.open(path) as img:
            _refuse_huge(img.width, img.height)
            img.load()
            return to_rgb(img)


def _refuse_huge(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageReadError(f"too large: {width}x{height} = {width * height:,} pixels exceeds the "
                             f"decompression-bomb guard of {MAX_PIXELS:,} pixels")


@contextmanager
def _reading(path: Path, *, missing: str) -> Iterator[None]:
    """Turn every way reading ``path`` can fail into an ImageReadError naming it and the cause."""
    try:
        if path.is_dir():
            raise ImageReadError("not a file (a folder)")
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        yield
    except ImageReadError as err:
        raise ImageReadError(err.reason, path) from None
    except FileNotFoundError:
        raise ImageReadError(missing, path) from None
    except PermissionError:
        raise ImageReadError("permission denied", path) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"not an image (unknown format; the file starts with {_head(path)})", path) from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(_bomb_reason(err), path) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise ImageReadError(f"corrupt or truncated: {err}", path) from None
    except Exception as err:  # a decoder failing in any other way: this file is unusable, the rest goes on
        raise ImageReadError(f"corrupt or truncated: {type(err).__name__}: {err}", path) from None


def _head(path: Path, n: int = 16) -> str:
    try:
        with open(path, "rb") as f:
            return repr(f.read(n))
    except OSError:
        return "(unreadable)"


def _bomb_reason(err: Exception) -> str:
    """PIL's own guard tripped (before ours could see the size): say so in our words."""
    found = re.search(r"\((\d+) pixels\).*?limit of (\d+)", str(err))
    if not found:
        return f"too large: {err} (decompression-bomb guard)"
    pixels, limit = int(found[1]), min(int(found[2]), MAX_PIXELS)
    return f"too large: {pixels:,} pixels exceeds the decompression-bomb guard of {limit:,} pixels"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way a viewer would show it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: PIL's own convert clips at 255, so rescale to the full range.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
