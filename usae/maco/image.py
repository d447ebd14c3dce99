"""MACO's image: a phase in the Fourier domain becomes pixels; random crops and noise make it robust.

``pixels = squash(mean + colour @ standardise(irfft2(amplitude * exp(i * standardise(phase)))))``:
the amplitude is fixed (:mod:`usae.maco.spectrum`), only the phase is optimised. With
unit-variance decorrelated channels, ``colour @ x`` has the images' own colour covariance;
``squash`` is a sigmoid centred and scaled so that it is the identity to first order
around the mean pixel, and keeps values in (0, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from usae.maco.spectrum import ImageSpectrum


class PhaseImage:
    """Turns phases ``(n, 3, size, size // 2 + 1)`` into RGB images ``(n, 3, size, size)`` in (0, 1)."""

    def __init__(self, spectrum: ImageSpectrum, device: torch.device) -> None:
        self.size = spectrum.size
        self.amplitude = torch.as_tensor(spectrum.amplitude, device=device)
        self.colour = torch.as_tensor(spectrum.colour, device=device)
        mean = torch.as_tensor(spectrum.mean, device=device).clamp(0.05, 0.95)
        self.logit_mean = torch.logit(mean).view(1, 3, 1, 1)
        self.slope = (mean * (1 - mean)).view(1, 3, 1, 1)  # sigmoid's slope at the mean

    def __call__(self, phase: Tensor) -> Tensor:
        phase = _standardise(phase)
        spatial = _standardise(torch.fft.irfft2(torch.polar(self.amplitude.expand_as(phase), phase),
                                                s=(self.size, self.size)))
        rgb = torch.einsum("nchw,dc->ndhw", spatial, self.colour)
        return torch.sigmoid(self.logit_mean + rgb / self.slope)


def _standardise(x: Tensor) -> Tensor:
    """Zero mean and unit variance per image."""
    dims = tuple(range(1, x.ndim))
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + 1e-4)


def random_crops(images: Tensor, *, n_crops: int, box: tuple[float, float], out_size: int, noise: float,
                 generator: torch.Generator) -> Tensor:
    """``n_crops`` square crops of each image, resized to ``out_size``, with Gaussian and uniform noise.

    A crop's side is a fraction of the image's, uniform in ``box``; its centre is drawn
    around the image's centre (sd 0.15 of the side) and kept inside the image. The boxes
    come from ``generator`` on the CPU, so a seed gives the same crops on any device; the
    noise, one value a pixel, is drawn where the images are (:func:`pixel_noise`).

    Returns:
        ``(n * n_crops, 3, out_size, out_size)``, the crops of image 0 first.
    """
    n, _, height, width = images.shape
    count = n * n_crops
    side = box[0] + (box[1] - box[0]) * torch.rand(count, generator=generator)
    centre = 0.5 + 0.15 * torch.randn(count, 2, generator=generator)
    centre = torch.maximum(torch.minimum(centre, 1 - side[:, None] / 2), side[:, None] / 2)
    owner = torch.arange(n).repeat_interleave(n_crops).float()
    boxes = torch.stack([owner, (centre[:, 0] - side / 2) * width, (centre[:, 1] - side / 2) * height,
                         (centre[:, 0] + side / 2) * width, (centre[:, 1] + side / 2) * height], dim=1)
    crops = roi_align(images, boxes.to(images.device, images.dtype), output_size=(out_size, out_size),
                      sampling_ratio=2, aligned=True)
    return crops + noise * pixel_noise(crops.shape, generator, crops.device).to(crops.dtype)


def pixel_noise(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal plus uniform(-0.5, 0.5) noise of ``shape`` on ``device``, drawn from ``generator``.

    On the CPU straight from ``generator``. Elsewhere from a generator of ``device`` seeded by
    one draw of ``generator``: the same noise on every run, without drawing millions of
    values on the host and copying them over each step (on a GPU that took longer than the
    backbone's forward and backward). CPU and GPU noise of one seed differ.
    """
    if device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        generator = torch.Generator(device=device).manual_seed(seed)
    gaussian = torch.randn(shape, generator=generator, device=device)
    uniform = torch.rand(shape, generator=generator, device=device) - 0.5
    return gaussian + uniform
