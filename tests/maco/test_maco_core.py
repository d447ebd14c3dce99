"""MACO's parts: the spectrum prior, phase -> image, crops, objectives, the reader's gradient path,
and one reproducible optimisation (small sizes; the science is shown on real networks)."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from usae.activations.extract import ImageDataset
from usae.backbones.registry import create_backbone
from usae.config import BackboneSpec, SAEConfig
from usae.config.maco import MacoConfig
from usae.maco.image import pixel_noise, random_crops
from usae.maco.objective import ConceptReader, centre_tokens, max_over_tokens, mean_over_tokens
from usae.maco.optimize import maximise, random_phase_images, score_images
from usae.maco.spectrum import ImageSpectrum, colour_sqrt, measure_spectrum
from usae.maco.stage import choose_concepts
from usae.sae.model import USAE

torch.set_num_threads(1)


def stripes(n: int, size: int, period: int, seed: int = 0) -> list[Image.Image]:
    """Vertical sinusoidal stripes of one spatial frequency, in a random colour mix each."""
    rng = np.random.default_rng(seed)
    x = np.arange(size)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi, (n, 1)))
    out = []
    for i in range(n):
        tint = rng.uniform(0.3, 1.0, 3)
        pixels = np.broadcast_to(wave[i][None, :, None] * tint, (size, size, 3))
        out.append(Image.fromarray((pixels * 255).astype(np.uint8)))
    return out


def test_spectrum_finds_the_planted_frequency_and_colours():
    spectrum = measure_spectrum(stripes(12, 32, period=8), size=32)
    assert spectrum.amplitude.shape == (3, 32, 17) and spectrum.colour.shape == (3, 3)
    luminance = spectrum.amplitude[np.argmax(np.linalg.norm(spectrum.colour, axis=0))]
    row0 = luminance[0].copy()
    row0[0] = 0  # the mean is removed by standardising; look at the oscillation
    assert int(np.argmax(row0)) == 32 // 8  # 4 cycles across the image
    assert luminance[1:].max() < 1e-3 * luminance[0, 4]  # vertical stripes: no vertical frequency


def test_colour_sqrt_reproduces_the_covariance():
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(5000, 3)) @ np.array([[1.0, 0.5, 0.2], [0, 0.4, 0.1], [0, 0, 0.3]])
    colour = colour_sqrt(pixels)
    np.testing.assert_allclose(colour @ colour.T, np.cov(pixels, rowvar=False), atol=1e-10)


def test_spectrum_round_trip(tmp_path):
    spectrum = measure_spectrum(stripes(3, 16, period=4), size=16)
    back = ImageSpectrum.load(spectrum.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.amplitude, spectrum.amplitude)
    assert back.n_images == 3 and back.size == 16
    with pytest.raises(ValueError, match="at least 2 images"):
        measure_spectrum(stripes(1, 16, period=4), size=16)


def test_random_phase_images_keep_the_mean_colour_and_range():
    spectrum = measure_spectrum(stripes(10, 32, period=8, seed=3), size=32)
    images = random_phase_images(16, 2, spectrum, seed=0)
    assert images.shape == (2, 16, 3, 32, 32)
    assert 0 < float(images.min()) and float(images.max()) < 1
    mean = images.mean(dim=(0, 1, 3, 4)).numpy()
    np.testing.assert_allclose(mean, spectrum.mean, atol=0.06)
    again = random_phase_images(16, 2, spectrum, seed=0)
    assert torch.equal(images, again) and not torch.equal(images, random_phase_images(16, 2, spectrum, seed=1))


def test_crops_are_seeded_inside_the_image_and_resized():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2, 3, 64, 64).contiguous()
    ramp[1] = 1 - ramp[1]
    crops = random_crops(ramp, n_crops=3, box=(0.5, 0.5), out_size=16, noise=0.0,
                         generator=torch.Generator().manual_seed(0))
    assert crops.shape == (6, 3, 16, 16)
    assert crops[:3].diff(dim=3).gt(0).all() and crops[3:].diff(dim=3).lt(0).all()  # image 0's crops first
    widths = crops[:, 0, 0, -1] - crops[:, 0, 0, 0]
    torch.testing.assert_close(widths.abs(), torch.full((6,), 0.5 * 15 / 16), atol=0.02, rtol=0)
    same = random_crops(ramp, n_crops=3, box=(0.5, 0.5), out_size=16, noise=0.1,
                        generator=torch.Generator().manual_seed(4))
    assert torch.equal(same, random_crops(ramp, n_crops=3, box=(0.5, 0.5), out_size=16, noise=0.1,
                                          generator=torch.Generator().manual_seed(4)))


def test_pixel_noise_is_seeded_normal_plus_uniform():
    shape = (4, 3, 64, 64)
    noise = pixel_noise(shape, torch.Generator().manual_seed(5), torch.device("cpu"))
    expected = torch.Generator().manual_seed(5)  # on the CPU: straight from the generator, normal then uniform
    gaussian = torch.randn(shape, generator=expected)
    torch.testing.assert_close(noise, gaussian + (torch.rand(shape, generator=expected) - 0.5), rtol=0, atol=0)
    assert abs(float(noise.mean())) < 0.02 and float(noise.var()) == pytest.approx(1 + 1 / 12, rel=0.03)


def test_objectives_reduce_tokens_as_documented():
    values = torch.arange(16.0).view(1, 16)  # a 4 x 4 grid
    assert mean_over_tokens(values).item() == 7.5 and max_over_tokens(values).item() == 15.0
    assert centre_tokens(values).item() == (5 + 6 + 9 + 10) / 4
    with pytest.raises(ValueError, match="square token grid"):
        centre_tokens(torch.zeros(1, 5))


SPEC = BackboneSpec(key="v", name="vit_small_patch16_224", pretrained=False, image_size=32,
                    kwargs={"depth": 1, "embed_dim": 24, "num_heads": 2})


@pytest.fixture(scope="module")
def reader():
    backbone = create_backbone(SPEC)
    usae = USAE({"v": 24}, SAEConfig(n_latents=32, k=4, aux_k=0), seed=0)
    usae.set_standardization("v", torch.linspace(-0.5, 0.5, 24), 2.0)
    return ConceptReader("v", backbone, usae)


def test_reader_applies_the_extraction_preprocessing_inside_the_graph(reader, tmp_path):
    stripes(1, 40, period=5)[0].save(tmp_path / "x.png")
    pixels, ok, _ = ImageDataset([str(tmp_path / "x.png")], reader.backbone.preprocessing)[0]
    prep = reader.backbone.preprocessing
    normalised = (pixels.float()[None] - torch.tensor(prep.mean).view(1, 3, 1, 1) * 255) / (
        torch.tensor(prep.std).view(1, 3, 1, 1) * 255)  # what extraction feeds the backbone
    _, tokens = reader.backbone.forward_tokens(normalised)
    expected = reader.usae.encode("v", tokens[0])  # the pipeline's codes of those tokens
    concepts = torch.tensor([3])
    got = reader.codes(pixels.float()[None] / 255.0, concepts)
    torch.testing.assert_close(got[0], expected[:, 3], atol=1e-5, rtol=1e-5)
    differentiable = (pixels.float()[None] / 255.0).requires_grad_(True)
    reader(differentiable, concepts).mean().backward()
    assert differentiable.grad is not None and differentiable.grad.abs().sum() > 0


def test_one_optimisation_is_reproducible_and_raises_its_objective(reader):
    spectrum = measure_spectrum(stripes(6, 48, period=6), size=48)
    # Whole-image crops without noise: on a 2 x 2 token grid random crops would drown the signal.
    cfg = MacoConfig(steps=12, lr=0.2, crops=1, crop_min=1.0, crop_max=1.0, noise=0.0, batch_concepts=2, seed=3)
    concepts = [5, 9, 17]
    first = maximise(reader, concepts, spectrum, mean_over_tokens, cfg=cfg, device=torch.device("cpu"))
    again = maximise(reader, concepts, spectrum, mean_over_tokens, cfg=cfg, device=torch.device("cpu"))
    assert first.shape == (3, 3, 48, 48) and torch.equal(first, again)
    start = random_phase_images(8, 3, spectrum, seed=3).flatten(0, 1)
    pre_reader = lambda images: reader(torch.nn.functional.interpolate(images, size=32, mode="bilinear",
                                                                       antialias=True),
                                       torch.tensor(concepts).repeat_interleave(len(images) // 3))
    with torch.no_grad():
        optimised = mean_over_tokens(pre_reader(first))
        baseline = mean_over_tokens(pre_reader(start)).view(3, 8).mean(1)
    assert (optimised > baseline).all()
    scores = score_images(reader, first, concepts, mean_over_tokens, device=torch.device("cpu"))
    assert scores.shape == (3,) and (scores >= 0).all()


def test_concepts_chosen_universal_then_specific():
    table = pd.DataFrame({
        "concept": [0, 1, 2, 3, 4, 5],
        "firing_entropy": [0.95, 0.99, 0.3, 0.1, 0.92, np.nan],
        "cofires": [50, 10, 0, 0, 80, 0],
        "fires_a": [60, 20, 90, 0, 100, 0], "fires_b": [55, 15, 1, 40, 90, 0]})
    cfg = MacoConfig(n_universal=2, n_specific=2)
    assert choose_concepts(table, ["a", "b"], cfg) == [(4, "universal"), (0, "universal"), (2, "specific to a"),
                                                       (3, "specific to b")]
    labelled = table.assign(factor=[None, "shape=star", None, None, "background", None])
    assert choose_concepts(labelled, ["a", "b"], cfg)[:2] == [(1, "universal"), (0, "universal")]
    assert choose_concepts(table, ["a", "b"], MacoConfig(concepts=(5, 1))) == [(5, "chosen"), (1, "chosen")]
    with pytest.raises(ValueError, match=r"maco.concepts: \[9\] are not concepts of this run"):
        choose_concepts(table, ["a", "b"], MacoConfig(concepts=(9,)))


def chance_table() -> pd.DataFrame:
    """10 concepts over 1,000 tokens, 2 of them universal. Concept 0 co-fires 12 times where chance gives 5
    (P = 0.0055): beyond chance for a 2-concept table (0.05 / 2), not for the dictionary's 10 (0.05 / 10).
    Concept 1 co-fires 5 times where chance gives 0.1 (P = 7.7e-8)."""
    return pd.DataFrame({"concept": range(10), "firing_entropy": [0.95, 0.95] + [0.2] * 8,
                         "cofires": [12, 5] + [0] * 8, "energy_total": [2.0, 1.0] + [0.1] * 8,
                         "fires_a": [100, 10] + [5] * 8, "fires_b": [50, 10] + [0] * 8})


def test_universal_picks_are_tested_against_chance_over_the_whole_dictionary():
    cfg = MacoConfig(n_universal=3, n_specific=0)
    assert choose_concepts(chance_table(), ["a", "b"], cfg, min_cofires=2, n_tokens=1000) == [(1, "universal")]
    assert choose_concepts(chance_table()[:2], ["a", "b"], cfg, min_cofires=2, n_tokens=1000) == [
        (0, "universal"), (1, "universal")]  # a 2-concept dictionary: concept 0 passes
    # evaluate.chance_alpha: at 0.2 / 10 = 0.02 concept 0 (P = 0.0055) passes over the 10 concepts too.
    assert choose_concepts(chance_table(), ["a", "b"], cfg, min_cofires=2, n_tokens=1000, alpha=0.2) == [
        (0, "universal"), (1, "universal")]

def test_universal_concepts_need_to_cofire_past_the_evaluations_floor():
    # Concept 1 detects a planted factor, so it would come first, but the models fire it together only
    # 10 times; concept 6 never co-fires although each model fires it often.
    table = pd.DataFrame({
        "concept": [0, 1, 4, 6, 2],
        "firing_entropy": [0.95, 0.99, 0.92, 1.0, 0.3],
        "cofires": [50, 10, 80, 0, 0],
        "factor": [None, "shape=star", None, None, None],
        "fires_a": [60, 20, 100, 300, 90], "fires_b": [55, 15, 90, 290, 1]})
    cfg = MacoConfig(n_universal=3, n_specific=0)
    assert choose_concepts(table, ["a", "b"], cfg) == [(1, "universal"), (4, "universal"), (0, "universal")]
    assert choose_concepts(table, ["a", "b"], cfg, min_cofires=11) == [(4, "universal"), (0, "universal")]
    assert choose_concepts(table, ["a", "b"], cfg, min_cofires=51) == [(4, "universal")]
    # Over 110 tokens concept 4's 80 co-fires are chance (each model fires it on most tokens: 81.8 expected,
    # P(X >= 80) = 0.59); concept 0's 50 (30 expected, P = 0.0005) and 1's 10 (2.7, P = 0.0005) are not.
    assert choose_concepts(table, ["a", "b"], cfg, min_cofires=2, n_tokens=110) == [(1, "universal"),
                                                                                  (0, "universal")]
    # A floor of 0 still asks for one co-fire: concept 6 is never chosen as universal.
    assert choose_concepts(table, ["a", "b"], MacoConfig(n_universal=5, n_specific=0), min_cofires=0) == [
        (1, "universal"), (4, "universal"), (0, "universal")]
