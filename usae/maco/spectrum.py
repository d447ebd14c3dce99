"""The image prior of MACO: a fixed amplitude spectrum and colour correlation, from the run's own images.

MACO keeps the Fourier amplitude of natural images fixed and optimises only the phase, so
the optimised image keeps natural image statistics. Both the amplitude and the colour
correlation it needs are measured here on the run's training images (never downloaded):

* colour: pixels are centred, and ``colour = U sqrt(S)`` from the eigendecomposition of
  their 3 x 3 covariance ``U S U^T``; ``pixels = decorrelated @ colour.T`` recorrelates.
* amplitude: the mean over images of ``|rfft2|`` of each decorrelated, standardised channel,
  at the optimised image's size (shape ``(3, size, size // 2 + 1)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usae.atomic import atomic_path


@dataclass(frozen=True)
class ImageSpectrum:
    """Amplitude ``(3, size, size // 2 + 1)``, colour ``(3, 3)`` and mean pixel ``(3,)`` of a set of images."""

    amplitude: np.ndarray
    colour: np.ndarray
    mean: np.ndarray
    n_images: int

    @property
    def size(self) -> int:
        return int(self.amplitude.shape[1])

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, amplitude=self.amplitude, colour=self.colour, mean=self.mean, n_images=self.n_images)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ImageSpectrum:
        with np.load(path) as data:
            return cls(data["amplitude"], data["colour"], data["mean"], int(data["n_images"]))


def measure_spectrum(images: Iterable[Image.Image], size: int) -> ImageSpectrum:
    """The spectrum of ``images`` (RGB PIL images, resized to ``size`` x ``size``)."""
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0
              for img in images]
    if len(arrays) < 2:
        raise ValueError(f"the MACO spectrum needs at least 2 images, got {len(arrays)}")
    pixels = np.stack(arrays)  # (n, size, size, 3)
    mean = pixels.mean(axis=(0, 1, 2))
    colour = colour_sqrt(pixels.reshape(-1, 3))
    decorrelated = (pixels - mean) @ np.linalg.pinv(colour).T
    channels = decorrelated.transpose(0, 3, 1, 2)  # (n, 3, size, size)
    channels = (channels - channels.mean(axis=(2, 3), keepdims=True)) / (channels.std(axis=(2, 3), keepdims=True)
                                                                        + 1e-8)
    amplitude = np.abs(np.fft.rfft2(channels)).mean(axis=0)
    return ImageSpectrum(amplitude.astype(np.float32), colour.astype(np.float32), mean.astype(np.float32),
                         len(arrays))


def colour_sqrt(pixels: np.ndarray) -> np.ndarray:
    """``U sqrt(S)`` of the covariance ``U S U^T`` of ``pixels`` (n, 3): maps unit-variance,
    uncorrelated channels back to correlated RGB."""
    values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    return vectors @ np.diag(np.sqrt(np.clip(values, 1e-12, None)))


def one_over_f(size: int, *, colour_scale: float = 0.25, mean: float = 0.45) -> ImageSpectrum:
    """A synthetic prior: amplitude 1/f (the shape of natural images' spectra), uncorrelated
    colours; for benchmarks and tests, where the exact spectrum does not matter."""
    fy = np.abs(np.fft.fftfreq(size))[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / size)
    return ImageSpectrum(np.broadcast_to(amplitude, (3, *amplitude.shape)).astype(np.float32).copy(),
                         (colour_scale * np.eye(3)).astype(np.float32), np.full(3, mean, np.float32), 0)


def random_phase(n: int, spectrum: ImageSpectrum, generator: torch.Generator) -> torch.Tensor:
    """``n`` phases ``(n, 3, size, size // 2 + 1)``, standard normal (MACO's initialisation)."""
    return torch.randn((n, *spectrum.amplitude.shape), generator=generator)
