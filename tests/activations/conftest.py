"""The token loader tests' planted stores (:mod:`planted_stores`), as a fixture."""

import numpy as np
import pytest

from planted_stores import CHUNK, INVALID, ROWS, write_store
from usae.activations.sources import open_aligned


@pytest.fixture
def sources(tmp_path):
    valid = np.ones(ROWS, bool)
    valid[INVALID] = False
    return open_aligned({"a": write_store(tmp_path / "a.zarr", 4, 0.0, CHUNK, valid),
                         "b": write_store(tmp_path / "b.zarr", 6, 0.5, 2, np.ones(ROWS, bool))})
