"""Which stores a run may be evaluated on: its training data's, or a test set's on the same scale."""

from types import SimpleNamespace

import pytest

from usae.evaluation.run import _check_data

TRAINED_ON = "a" * 64


def store(**attrs):
    return SimpleNamespace(attrs=attrs)


def test_a_test_set_store_must_carry_the_training_statistics():
    _check_data("m", TRAINED_ON, {"x": store(manifest_hash="b" * 64, standardized_with={"manifest_hash": TRAINED_ON})},
                test_set=True)
    with pytest.raises(ValueError, match="x: the test set's store was not standardised"):
        _check_data("m", TRAINED_ON, {"x": store(manifest_hash="b" * 64)}, test_set=True)
    with pytest.raises(ValueError, match=r"store: cccccccccccc\); prepare the test set again"):
        _check_data("m", TRAINED_ON, {"x": store(standardized_with={"manifest_hash": "c" * 64})}, test_set=True)


def test_training_data_stores_must_be_of_the_training_manifest():
    _check_data("m", TRAINED_ON, {"x": store(manifest_hash=TRAINED_ON)}, test_set=False)
    with pytest.raises(ValueError, match="was trained on manifest aaaaaaaaaaaa but the stores hold bbbbbbbbbbbb"):
        _check_data("m", TRAINED_ON, {"x": store(manifest_hash="b" * 64)}, test_set=False)
