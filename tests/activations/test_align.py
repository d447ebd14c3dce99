"""Grid alignment: token t of image n must be the same image region in every model."""

import numpy as np
import pytest
import torch

from usae.activations.align import resize_grid


def sample_field(grid: int, field) -> np.ndarray:
    """Value of ``field(x, y)`` at the centres of a grid x grid tiling of the unit square."""
    centres = (np.arange(grid) + 0.5) / grid
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return field(x, y).reshape(1, grid * grid, 1)


def test_identity_when_grids_match():
    x = torch.randn(2, 49, 5)
    assert torch.equal(resize_grid(x, (7, 7), (7, 7)), x)


def test_smooth_field_sampled_at_16_matches_sampling_at_14():
    # A /14 model at 224 px sees a 16x16 grid, a /16 model a 14x14 grid of the same image.
    def field(x, y):
        return np.sin(2 * np.pi * x) + 0.5 * np.cos(np.pi * y) + x * y

    fine, coarse = sample_field(16, field), sample_field(14, field)
    resized = resize_grid(fine, (16, 16), (14, 14)).numpy()
    assert np.abs(resized - coarse).max() < 0.06
    # Misregistration (e.g. a flipped or transposed grid) would be far off.
    transposed = resize_grid(fine.reshape(1, 16, 16, 1).transpose(0, 2, 1, 3).reshape(1, 256, 1),
                             (16, 16), (14, 14)).numpy()
    assert np.abs(transposed - coarse).max() > 0.5


def coverage(grid: int, field, supersample: int = 32) -> np.ndarray:
    """Share of each patch of a grid x grid tiling covered by the indicator ``field``."""
    fine = sample_field(grid * supersample, field).reshape(grid, supersample, grid, supersample)
    return fine.mean(axis=(1, 3))


def test_planted_square_lands_on_the_same_tokens():
    # An object covering the image region x in [0.5, 0.75), y in [0.25, 0.5): on the 16x16
    # grid it fills whole patches; on the 14x14 grid its edges cut patches in half.
    def field(x, y):
        return ((x >= 0.5) & (x < 0.75) & (y >= 0.25) & (y < 0.5)).astype(float)

    resized = resize_grid(coverage(16, field).reshape(1, 256, 1), (16, 16), (14, 14)).numpy().reshape(14, 14)
    truth = coverage(14, field)
    # The triangle filter blurs a hard edge by ~0.1; a one-patch misregistration costs ~0.5.
    assert np.abs(resized - truth).max() < 0.15
    assert np.abs(resized - np.roll(truth, 1, axis=1)).max() > 0.4
    weights = np.indices((14, 14))
    centroid = [(w * resized).sum() / resized.sum() for w in weights]
    true_centroid = [(w * truth).sum() / truth.sum() for w in weights]
    np.testing.assert_allclose(centroid, true_centroid, atol=0.05)


def test_channels_and_batch_are_independent():
    x = torch.randn(3, 64, 4)
    full = resize_grid(x, (8, 8), (4, 4))
    one = resize_grid(x[1:2, :, 2:3], (8, 8), (4, 4))
    torch.testing.assert_close(full[1:2, :, 2:3], one)


def test_constant_stays_constant_and_antialiasing_damps_aliasing():
    const = torch.full((1, 256, 3), 2.5)
    torch.testing.assert_close(resize_grid(const, (16, 16), (14, 14)), torch.full((1, 196, 3), 2.5))
    # A checkerboard at the 16-grid's Nyquist frequency cannot be shown on 14x14; plain
    # bilinear turns it into a strong false pattern (amplitude 0.73), antialiasing damps it.
    checker = ((np.arange(16)[:, None] + np.arange(16)[None, :]) % 2 * 2 - 1.0).reshape(1, 256, 1)
    assert np.abs(resize_grid(checker, (16, 16), (14, 14)).numpy()).max() < 0.5


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="7x7 grid"):
        resize_grid(torch.zeros(1, 50, 2), (7, 7), (7, 7))
    with pytest.raises(ValueError, match="larger than the model's 7x7"):
        resize_grid(torch.zeros(1, 49, 2), (7, 7), (8, 8))
