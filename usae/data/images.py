"""Reading images safely: a full check that finds unusable files, and RGB decoding.

Every image that enters the pipeline goes through :func:`check_image` (at manifest time)
and :func:`load_rgb` (at extraction time), so both stages agree on what "readable" means.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 178_956_970  # PIL's own default limit; larger files are refused, not decoded


class ImageReadError(Exception):
    """An image file that cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """What the check learned about a readable image."""

    width: int
    height: int
    mode: str


def check_image(path: str | Path) -> ImageInfo:
    """Decode ``path`` completely (cheaply) and report its size, or raise ImageReadError.

    JPEGs are decoded at reduced scale (``draft``), which still reads every byte, so
    truncated files are caught at a fraction of the cost of a full decode.

    Raises:
        ImageReadError: empty, missing, not an image, truncated, or too large.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height, mode = img.width, img.height, img.mode
                _refuse_huge(width, height)
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(f"too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"corrupt or truncated: {err}") from None
    return ImageInfo(width=width, height=height, mode=mode)


def _refuse_huge(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageReadError(f"too large: {width}x{height} pixels exceeds {MAX_PIXELS} (decompression-bomb guard)")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB: alpha composited on white, 16-bit and CMYK converted.

    Raises:
        ImageReadError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            _refuse_huge(img.width, img.height)
            img.load()
            return to_rgb(img)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found (deleted after the manifest was built?)") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: {err}") from None


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
