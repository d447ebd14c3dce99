"""Per-model standardisation statistics, computed with dask over a seeded image sample.

``scalar`` (the paper): one mean and one std over all tokens and dimensions.
``per_dim``: a mean per dimension and one global scale, sqrt(mean_d var_d), which keeps
the relative scale of dimensions. ``none``: identity (mean 0, std 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

EPS = 1e-6


@dataclass(frozen=True)
class Standardization:
    """``(x - mean) / std`` with ``mean`` scalar or per dimension and ``std`` scalar."""

    kind: str
    mean: np.ndarray
    std: float
    n_images: int
    n_tokens: int
    seed: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardise ``x`` (..., d) in float32."""
        return (np.asarray(x, dtype=np.float32) - self.mean.astype(np.float32)) / np.float32(self.std)

    def to_dict(self) -> dict[str, Any]:
        mean = float(self.mean) if self.mean.ndim == 0 else self.mean.astype(float).tolist()
        return {"kind": self.kind, "mean": mean, "std": float(self.std), "n_images": self.n_images,
                "n_tokens": self.n_tokens, "seed": self.seed, "eps": EPS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardization:
        return cls(kind=data["kind"], mean=np.asarray(data["mean"], dtype=np.float64), std=float(data["std"]),
                   n_images=int(data["n_images"]), n_tokens=int(data["n_tokens"]), seed=int(data["seed"]))


def sample_images(n_images: int, n_sample: int, seed: int) -> np.ndarray:
    """Sorted positions of ``min(n_sample, n_images)`` images drawn without replacement."""
    rng = np.random.default_rng(seed)
    size = min(n_sample, n_images)
    return np.sort(rng.choice(n_images, size=size, replace=False))


def compute_standardization(tokens: da.Array, kind: str, *, seed: int, num_workers: int = 1,
                            source: str = "tokens", remedy: str = "") -> Standardization:
    """Statistics of ``tokens`` (images, tokens, d), reading the data once.

    Args:
        tokens: dask array of the sampled images' aligned tokens.
        kind: ``scalar``, ``per_dim`` or ``none``.
        seed: recorded with the statistics (the sample was drawn with it).
        num_workers: dask threads.
        source: what the tokens are, for the error message.
        remedy: what to do about non-finite statistics, appended to the error message.

    Returns:
        The statistics; float64 accumulation throughout.

    Raises:
        ValueError: the statistics are not finite (NaN or inf in the sample), naming ``source``.
    """
    stats = _statistics(tokens, kind, seed=seed, num_workers=num_workers)
    if not (np.isfinite(stats.mean).all() and np.isfinite(stats.std)):
        raise ValueError(f"{source}: standardisation statistics are not finite (NaN or inf in the sampled "
                         f"tokens){'; ' + remedy if remedy else ''}")
    return stats


def _statistics(tokens: da.Array, kind: str, *, seed: int, num_workers: int) -> Standardization:
    n_images, n_tok, dim = tokens.shape
    meta = {"n_images": int(n_images), "n_tokens": int(n_images * n_tok), "seed": seed}
    if kind == "none":
        return Standardization(kind=kind, mean=np.zeros(()), std=1.0, **meta)
    flat = tokens.reshape(-1, dim).astype(np.float64)
    if kind == "scalar":
        mean, std = dask.compute(flat.mean(), flat.std(), scheduler="threads", num_workers=num_workers)
        return Standardization(kind=kind, mean=np.asarray(mean), std=max(float(std), EPS), **meta)
    if kind == "per_dim":
        mean_d, var_d = dask.compute(flat.mean(axis=0), flat.var(axis=0), scheduler="threads",
                                     num_workers=num_workers)
        scale = float(np.sqrt(np.mean(var_d)))
        return Standardization(kind=kind, mean=np.asarray(mean_d), std=max(scale, EPS), **meta)
    raise ValueError(f"unknown standardization {kind!r}; choose scalar, per_dim or none")
