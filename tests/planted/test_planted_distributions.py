"""Other factor distributions of the generated image set (test sets of other data)."""

import hashlib

import numpy as np
import pytest

from usae.planted.factors import FACTORS, factor_probabilities
from usae.planted.images import generate_images, load_object_map

DEFAULT_SHA256 = "4a9a0e30ab8cc4a7ce672e1dac0994f5d2a89b4533fad886bf720d7d502b069c"
"""SHA-256 of the PNG bytes of ``generate_images(n_images=6, image_size=48, max_objects=4, seed=3)``
made by the generator before min_objects and factor_weights existed."""


def _digest(image_set):
    h = hashlib.sha256()
    for path in image_set.paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def test_default_settings_stay_byte_identical(tmp_path):
    image_set = generate_images(tmp_path / "a", 6, image_size=48, max_objects=4, seed=3, min_objects=1,
                                factor_weights={})
    assert _digest(image_set) == DEFAULT_SHA256
    assert len(image_set.objects) == 19
    assert "factor_weights" not in dict(load_object_map(image_set.object_map_path).attrs)


def test_weights_restrict_and_skew_the_draws(tmp_path):
    weights = {"shape": {"circle": 3, "star": 1}, "colour": {"red": 1}}
    objects = generate_images(tmp_path / "w", 60, image_size=48, max_objects=3, seed=0,
                              factor_weights=weights).objects
    assert set(objects["shape"]) == {"circle", "star"} and set(objects["colour"]) == {"red"}
    share = (objects["shape"] == "circle").mean()
    assert 0.6 < share < 0.9  # 3:1, over about 120 objects
    assert set(objects["texture"]) == set(FACTORS["texture"])  # a factor left out stays uniform


def test_object_count_range(tmp_path):
    objects = generate_images(tmp_path / "n", 20, image_size=48, max_objects=4, min_objects=3, seed=1).objects
    counts = objects.groupby("image_index").size()
    assert counts.min() >= 3 and counts.max() <= 4 and len(counts) == 20


def test_other_settings_regenerate_the_set(tmp_path):
    first = _digest(generate_images(tmp_path / "s", 4, image_size=48, seed=0))
    again = generate_images(tmp_path / "s", 4, image_size=48, seed=0, factor_weights={"texture": {"dots": 1}})
    assert set(again.objects["texture"]) == {"dots"} and _digest(again) != first


def test_probabilities_in_factor_order_and_refusals():
    probs = factor_probabilities({"shape": {"star": 1, "circle": 1}})
    np.testing.assert_allclose(probs["shape"], [0.5, 0, 0, 0.5, 0])
    assert probs["colour"] is None and probs["texture"] is None
    with pytest.raises(ValueError, match="unknown factor"):
        factor_probabilities({"size": {"big": 1}})
    with pytest.raises(ValueError, match=r"w\.colour: unknown value\(s\) \['pink'\]"):
        factor_probabilities({"colour": {"pink": 1}}, "w")
    with pytest.raises(ValueError, match="not all 0"):
        factor_probabilities({"shape": {"star": 0}})
    with pytest.raises(ValueError, match="min_objects = 4"):
        generate_images("unused", 2, image_size=48, max_objects=3, min_objects=4)
