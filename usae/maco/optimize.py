"""The MACO loop: optimise the Fourier phase of one image per concept so that one model's code of
that concept is as large as possible, under random crops and noise.

Every model starts a concept from the same initial phase and sees the same crops (both
drawn from ``seed`` and the batch's position, not the model), so the images of one concept
differ only by what each model responds to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from usae.maco.image import PhaseImage, random_crops
from usae.maco.objective import ConceptReader
from usae.maco.spectrum import ImageSpectrum, random_phase
from usae.progress import progress_bar

Objective = Callable[[Tensor], Tensor]


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The CPU generator of one batch of concepts: initial phases, then every step's crops and noise."""
    return torch.Generator().manual_seed(seed * 1_000_003 + batch)


def maximise(reader: ConceptReader, concepts: Sequence[int], spectrum: ImageSpectrum, objective: Objective, *,
             cfg, device: torch.device) -> Tensor:
    """One optimised image per concept for ``reader``'s model: ``(len(concepts), 3, size, size)`` in (0, 1), CPU.

    ``cfg`` is a :class:`usae.config.MacoConfig` (steps, lr, crops, crop_min/max, noise,
    batch_concepts, seed, precision).
    """
    to_image = PhaseImage(spectrum, device)
    out = []
    starts = range(0, len(concepts), cfg.batch_concepts)
    for batch, start in enumerate(progress_bar(starts, desc=f"maco {reader.name}", unit="batch")):
        chosen = torch.as_tensor(list(concepts[start:start + cfg.batch_concepts]), device=device)
        generator = batch_generator(cfg.seed, batch)
        phase = random_phase(len(chosen), spectrum, generator).to(device).requires_grad_(True)
        optimizer = torch.optim.NAdam([phase], lr=cfg.lr)
        for _ in range(cfg.steps):
            crops = random_crops(to_image(phase), n_crops=cfg.crops, box=(cfg.crop_min, cfg.crop_max),
                                 out_size=reader.input_size, noise=cfg.noise, generator=generator)
            with _autocast(cfg.precision, device):
                values = reader(crops, chosen.repeat_interleave(cfg.crops))
            score = objective(values.float()).view(len(chosen), cfg.crops).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            (-score.sum()).backward()
            optimizer.step()
        with torch.no_grad():
            out.append(to_image(phase).cpu())
    return torch.cat(out) if out else torch.empty(0, 3, spectrum.size, spectrum.size)


def random_phase_images(n_per_concept: int, n_concepts: int, spectrum: ImageSpectrum, seed: int) -> Tensor:
    """The baseline: ``(n_concepts, n_per_concept, 3, size, size)`` images of the same amplitude
    spectrum with random phase (what optimisation starts from, before any step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)
    with torch.no_grad():
        images = PhaseImage(spectrum, torch.device("cpu"))(
            random_phase(n_per_concept * n_concepts, spectrum, generator))
    return images.view(n_concepts, n_per_concept, *images.shape[1:])


@torch.no_grad()
def score_images(reader: ConceptReader, images: Tensor, concepts: Sequence[int], objective: Objective, *,
                 device: torch.device, batch: int = 16) -> Tensor:
    """The objective of each image's code ``Z_k`` (after TopK) for its concept, the whole image
    resized to the model's input size: ``images (n, 3, s, s)``, ``concepts`` n ids -> ``(n,)``."""
    scores = []
    for start in range(0, len(images), batch):
        block = images[start:start + batch].to(device)
        if block.shape[-1] != reader.input_size:
            block = F.interpolate(block, size=(reader.input_size, reader.input_size), mode="bilinear",
                                  antialias=True, align_corners=False)
        chosen = torch.as_tensor(list(concepts[start:start + batch]), device=device)
        scores.append(objective(reader.codes(block, chosen).float()).cpu())
    return torch.cat(scores) if scores else torch.empty(0)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
