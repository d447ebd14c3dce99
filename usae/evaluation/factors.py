"""Concepts versus planted factors: per-token factor labels and streaming per-concept AUROC.

:func:`factor_labels` turns the object map of a generated image set
(:mod:`usae.planted.images`) into boolean per-token labels, one column per factor value.
:class:`FactorAUROC` scores every SAE concept as a detector of every factor value from sparse
codes, streamed batch by batch in memory independent of the number of tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from usae.metrics import binned_auroc
from usae.planted.images import FACTORS, load_object_map, patch_factor_coverage

logger = logging.getLogger(__name__)

_ENTRIES_PER_STEP = 1 << 22
"""Upper bound on sparse (token, concept, value) entries expanded at once inside ``update``."""


@dataclass(frozen=True, eq=False)
class FactorLabels:
    """Per-token factor labels.

    Attributes:
        labels: ``(n_images * grid * grid, n_values)`` bool; token ``(i, r, c)`` (image ``i`` of
            ``image_indices``, grid row ``r``, column ``c``) is row ``(i * grid + r) * grid + c``.
        names: ``"factor=value"`` per column, factors and values in :data:`FACTORS` order.
        image_indices: The generated-image indices, in token order.
        grid: Cells per image side.
    """

    labels: np.ndarray
    names: list[str]
    image_indices: np.ndarray
    grid: int


def factor_value_names() -> list[str]:
    """``"factor=value"`` for every value of every factor of :data:`FACTORS`, in column order."""
    return [f"{factor}={value}" for factor, values in FACTORS.items() for value in values]


def factor_labels(object_map_path: Path | str, objects_path: Path | str, image_indices: np.ndarray,
                  grid: int, threshold: float = 0.5, *, chunk_images: int = 64) -> FactorLabels:
    """Boolean per-token labels: ``label[t, (f, v)] = coverage_f,v(t) >= threshold``.

    ``coverage_f,v(t)`` is the fraction of the pixels of token ``t``'s grid cell covered by
    visible pixels of objects whose factor ``f`` is ``v`` (:func:`patch_factor_coverage`).
    The object map is read ``chunk_images`` images at a time.

    Args:
        object_map_path: ``object_map.zarr`` of the generated set.
        objects_path: ``objects.parquet`` of the generated set.
        image_indices: ``(n_images,)`` generated-image indices (image ``i`` is ``img_{i:06d}``),
            in the wanted order; repeats are allowed.
        grid: Tokens per image side.
        threshold: Minimum coverage of a positive label, in ``(0, 1]``.
        chunk_images: Images read per step (bounds memory).

    Returns:
        The labels, image-major then row-major over the grid, and the column names.

    Raises:
        ValueError: On an index out of range, a bad threshold, grid or chunk size.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold = {threshold} must be in (0, 1]")
    if chunk_images < 1:
        raise ValueError(f"chunk_images = {chunk_images} must be >= 1")
    arr = load_object_map(object_map_path)
    idx = np.asarray(image_indices, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= arr.shape[0]):
        raise ValueError(f"image indices must be in 0..{arr.shape[0] - 1}, got {idx.min()}..{idx.max()}")
    objects = pd.read_parquet(objects_path)
    obj_image = objects["image_index"].to_numpy(dtype=np.int64)
    names = factor_value_names()
    out = np.zeros((idx.size * grid * grid, len(names)), dtype=bool)
    for start in range(0, idx.size, chunk_images):
        chunk = idx[start:start + chunk_images]
        uniq, inverse = np.unique(chunk, return_inverse=True)
        maps = np.asarray(arr.oindex[uniq, :, :])
        sub = objects[np.isin(obj_image, uniq)].copy()
        sub["image_index"] = np.searchsorted(uniq, sub["image_index"].to_numpy(dtype=np.int64))
        cover = patch_factor_coverage(maps, sub, grid)
        both = np.concatenate([cover[f] for f in FACTORS], axis=-1)[inverse.ravel()] >= threshold
        out[start * grid * grid:(start + chunk.size) * grid * grid] = both.reshape(-1, len(names))
    logger.info("factor labels: %d images x %d tokens, %d values, %.4f positive", idx.size, grid * grid,
                len(names), out.mean() if out.size else 0.0)
    return FactorLabels(labels=out, names=names, image_indices=idx, grid=grid)


class FactorAUROC:
    """Streaming patch-level AUROC of each concept's activation as a detector of each factor value.

    For concept ``c`` and value ``v``, with ``P`` the tokens labelled ``v`` and ``N`` the others,

    ``AUROC[c, v] = (#{(p, q) in P x N: a_c(p) > a_c(q)} + 1/2 #{... a_c(p) == a_c(q)}) / (|P| |N|)``

    (Mann–Whitney U, ties 1/2; 1 = perfect detector, 0.5 = chance, < 0.5 = anti-detector).

    Zero mass, exact: an activation is *active* if ``> 0``; all inactive activations are the
    same value 0 and form one exact bin below every positive bin. Its counts are never stored:
    ``zeros_pos[c, v] = n_pos[v] - sum_b pos[c, v, b]`` and
    ``zeros_neg[c, v] = n_neg[v] - sum_b neg[c, v, b]``.

    Positive activations are histogrammed per concept on a log scale: with ``top_c`` the range
    top of concept ``c`` and ``low_c = top_c * 10**-decades``, bin 0 is ``(0, low_c)``, bins
    ``1..n_bins-2`` split ``[low_c, top_c)`` into equal steps of ``log``, and bin ``n_bins-1`` is
    ``[top_c, inf)``. ``top_c = max_value`` when given (scalar or per concept); otherwise
    (adaptive) ``top_c = 2 * max`` of concept ``c``'s activations in the first ``update`` step
    (batch, or slice of ``2**22`` entries) in which it fires, so then, and only then, the
    binning (never the zero mass) depends on how tokens are batched.

    Error: pairs falling in the same positive bin are counted 1/2 (as ties), so
    ``|AUROC_hist - AUROC_exact| <= 1/2 sum_b pos[c, v, b] neg[c, v, b] / (|P| |N|)``,
    :meth:`tie_bound`, exactly computable from the counts. With the default 64 bins over 4
    decades one bin is a factor ``10**(4/62) ~ 1.16`` wide.

    Memory: ``pos`` counts ``(n_concepts, n_values, n_bins)`` int64 and the label-blind
    ``every`` counts ``(n_concepts, n_bins)`` int64 (``neg = every - pos``): for 6144 concepts,
    15 values, 64 bins, 48 MB. ``update`` expands at most ``2**22`` sparse entries at a time and
    never builds a dense ``(n_tokens, n_concepts)`` matrix. Assumes the indices of one token are
    distinct (as top-k codes are).
    """

    def __init__(self, n_concepts: int, n_values: int, n_bins: int = 64,
                 max_value: float | np.ndarray | None = None, decades: float = 4.0) -> None:
        """Empty accumulator.

        Args:
            n_concepts: Number of concepts ``m``.
            n_values: Number of factor values (label columns).
            n_bins: Bins for positive activations (>= 3), including the under- and overflow bins.
            max_value: Top of the log range, scalar or ``(n_concepts,)``; None = adaptive (above).
            decades: Width of the log range in powers of ten (> 0).
        """
        if n_concepts < 1 or n_values < 1 or n_bins < 3 or decades <= 0:
            raise ValueError(f"bad sizes: n_concepts={n_concepts}, n_values={n_values}, n_bins={n_bins}, "
                             f"decades={decades}")
        self.n_concepts, self.n_values, self.n_bins, self.decades = n_concepts, n_values, n_bins, float(decades)
        self._log_top = np.full(n_concepts, np.nan)
        if max_value is not None:
            top = np.broadcast_to(np.asarray(max_value, dtype=np.float64), (n_concepts,))
            if not np.all(np.isfinite(top) & (top > 0)):
                raise ValueError("max_value must be finite and > 0")
            self._log_top[:] = np.log(top)
        self._step = self.decades * np.log(10.0) / (n_bins - 2)
        self.pos = np.zeros((n_concepts, n_values, n_bins), dtype=np.int64)
        self.every = np.zeros((n_concepts, n_bins), dtype=np.int64)
        self.n_pos = np.zeros(n_values, dtype=np.int64)
        self.n_tokens = 0

    def _bins(self, values: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """Bin of each positive ``values[i]`` of concept ``concepts[i]``."""
        new = np.isnan(self._log_top[concepts])
        if new.any():  # adaptive range: fix it for concepts firing for the first time
            top = np.zeros(self.n_concepts)
            np.maximum.at(top, concepts[new], values[new])
            fresh = top > 0
            self._log_top[fresh] = np.log(2.0 * top[fresh])
        log_low = self._log_top[concepts] - self.decades * np.log(10.0)
        b = np.floor((np.log(values) - log_low) / self._step) + 1
        return np.clip(b, 0, self.n_bins - 1).astype(np.int64)

    def update(self, values: np.ndarray, indices: np.ndarray, labels: np.ndarray) -> None:
        """Accumulate one batch of sparse codes and labels.

        Args:
            values: ``(n_tokens, k)`` activations, ``>= 0``; entries ``== 0`` count as inactive.
            indices: ``(n_tokens, k)`` concept of each activation, in ``0..n_concepts-1``.
            labels: ``(n_tokens, n_values)`` bool factor labels of the same tokens.

        Raises:
            ValueError: On mismatched shapes, a negative or NaN value, or an index out of range.
        """
        values, indices = np.asarray(values), np.asarray(indices)
        labels = np.asarray(labels, dtype=bool)
        if values.ndim != 2 or values.shape != indices.shape or labels.shape != (values.shape[0], self.n_values):
            raise ValueError(f"shapes do not match: values {values.shape}, indices {indices.shape}, "
                             f"labels {labels.shape} (n_values = {self.n_values})")
        if values.size and not values.min() >= 0:
            raise ValueError("values must be >= 0 and not NaN")
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_concepts):
            raise ValueError(f"indices must be in 0..{self.n_concepts - 1}")
        n, k = values.shape
        self.n_tokens += n
        self.n_pos += labels.sum(axis=0)
        step = max(1, _ENTRIES_PER_STEP // max(1, k * max(1, int(labels.sum(axis=1).max(initial=0)))))
        for s in range(0, n, step):
            v, c, lab = values[s:s + step], indices[s:s + step], labels[s:s + step]
            act = v > 0
            c_act = c[act].astype(np.int64)
            bins = np.zeros(v.shape, dtype=np.int64)
            bins[act] = self._bins(v[act].astype(np.float64), c_act)
            flat = c_act * self.n_bins + bins[act]
            self.every += np.bincount(flat, minlength=self.every.size).reshape(self.every.shape)
            tok, val = np.nonzero(lab)  # (token, value) positive pairs, each expanded over k entries
            on = act[tok]
            pc = c[tok][on].astype(np.int64)
            pflat = (pc * self.n_values + np.broadcast_to(val[:, None], on.shape)[on]) * self.n_bins + bins[tok][on]
            self.pos += np.bincount(pflat, minlength=self.pos.size).reshape(self.pos.shape)

    def _class_hists(self, v: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(m, 1 + n_bins)`` positive and negative counts for value ``v`` (column 0 = zeros)."""
        n_p, n_n = int(self.n_pos[v]), self.n_tokens - int(self.n_pos[v])
        hp, hn = self.pos[:, v, :], self.every - self.pos[:, v, :]
        hp = np.concatenate([(n_p - hp.sum(axis=1))[:, None], hp], axis=1).astype(np.float64)
        hn = np.concatenate([(n_n - hn.sum(axis=1))[:, None], hn], axis=1).astype(np.float64)
        return hp, hn, n_p, n_n

    def result(self) -> np.ndarray:
        """``(n_concepts, n_values)`` AUROC.

        ``AUROC = sum_b pos_b (sum_{b' < b} neg_b' + neg_b / 2) / (|P| |N|)`` over the zero bin
        and the positive bins in increasing order (:func:`usae.metrics.binned_auroc`). NaN where a
        value has no positive or no negative token; a concept that never fires gets exactly 0.5
        (all pairs tie at 0).
        """
        out = np.full((self.n_concepts, self.n_values), np.nan)
        for v in range(self.n_values):
            hp, hn, n_p, n_n = self._class_hists(v)
            if n_p and n_n:
                out[:, v] = binned_auroc(hp, hn, n_p, n_n)
        return out

    def tie_bound(self) -> np.ndarray:
        """``(n_concepts, n_values)`` bound on ``|AUROC_hist - AUROC_exact|`` (NaN like :meth:`result`).

        ``1/2 sum_{positive bins b} pos_b neg_b / (|P| |N|)``: only pairs sharing a positive bin
        can be misordered; pairs at exactly 0 are exact ties.
        """
        out = np.full((self.n_concepts, self.n_values), np.nan)
        for v in range(self.n_values):
            hp, hn, n_p, n_n = self._class_hists(v)
            if n_p and n_n:
                out[:, v] = 0.5 * (hp[:, 1:] * hn[:, 1:]).sum(axis=1) / (n_p * n_n)
        return out

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """Per concept, the factor value with the highest AUROC.

        Returns:
            ``(best_value_index (m,) int64, best_auroc (m,) float64)``; ``-1`` and NaN for a
            concept whose AUROCs are all NaN. Ties go to the lowest value index.
        """
        auc = self.result()
        valid = ~np.all(np.isnan(auc), axis=1)
        idx = np.full(self.n_concepts, -1, dtype=np.int64)
        idx[valid] = np.argmax(np.where(np.isnan(auc[valid]), -np.inf, auc[valid]), axis=1)
        score = np.full(self.n_concepts, np.nan)
        score[valid] = auc[valid, idx[valid]]
        return idx, score
