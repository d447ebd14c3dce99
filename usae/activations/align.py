"""Patch-grid alignment: resize every model's token grid to one common grid.

After alignment, token ``t`` of image ``n`` covers the same image region in every model
(paper: DINOv2's 16x16 grid at /14 is resized to the 14x14 grid of the /16 models).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_grid(tokens: np.ndarray | torch.Tensor, src_grid: tuple[int, int],
                dst_grid: tuple[int, int]) -> torch.Tensor:
    """Resample patch tokens from ``src_grid`` to ``dst_grid`` (bilinear, antialiased).

    Each channel is treated as an image over the patch grid; ``align_corners=False``
    maps patch centres so that both grids cover the same square of the input image.

    Args:
        tokens: (batch, src_h * src_w, d) patch tokens in row-major grid order.
        src_grid: (src_h, src_w) of the model.
        dst_grid: (dst_h, dst_w) common grid; not larger than ``src_grid``.

    Returns:
        (batch, dst_h * dst_w, d) float32 tokens.

    Raises:
        ValueError: the token count does not match ``src_grid``, or the target is larger.
    """
    x = torch.as_tensor(tokens).float()
    batch, n_tokens, dim = x.shape
    src_h, src_w = src_grid
    dst_h, dst_w = dst_grid
    if n_tokens != src_h * src_w:
        raise ValueError(f"{n_tokens} tokens do not form the {src_h}x{src_w} grid")
    if dst_h > src_h or dst_w > src_w:
        raise ValueError(f"common grid {dst_h}x{dst_w} is larger than the model's {src_h}x{src_w}; "
                         "upsampling would invent detail: lower prepare.grid")
    if (dst_h, dst_w) == (src_h, src_w):
        return x
    grid = x.transpose(1, 2).reshape(batch, dim, src_h, src_w)
    out = F.interpolate(grid, size=(dst_h, dst_w), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(batch, dim, dst_h * dst_w).transpose(1, 2)
