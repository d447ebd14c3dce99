"""How well a trained USAE recovers a planted ground truth (:mod:`usae.planted.activations`).

Recovery of shared concepts: for each model, the share of true shared atoms whose best
cosine with a learned decoder row is at least 0.9. Universality: learned concepts are
labelled by the true atom they match best (shared or some model's private atom, cosine
>= 0.9, taken over models); firing entropy should be high for shared and low for private
concepts, scored by the AUROC of entropy for "shared" vs "private". Cross-model
reconstruction: the per-dimension R2 of every (source, target) pair. Every formula is in
:mod:`usae.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from usae.metrics import auroc, firing_counts, firing_entropy, match_atoms, r2_per_dim
from usae.planted.activations import PlantedData
from usae.sae.model import USAE

MATCH = 0.9


@dataclass(frozen=True)
class Recovery:
    shared_recovered: dict[str, float]
    """Per model: share of shared atoms matched at cosine >= 0.9."""
    shared_mean_cos: dict[str, float]
    private_recovered: dict[str, float]
    entropy_auroc: float
    """AUROC of firing entropy, shared-matched vs private-matched concepts."""
    n_shared_concepts: int
    n_private_concepts: int
    r2: np.ndarray
    """(M, M) variance explained of target j from source i (per-dimension form)."""


@torch.no_grad()
def evaluate_recovery(data: PlantedData, model: USAE, *, n_tokens: int = 20_000, tau: float = 0.1,
                      shared_index: bool = False) -> Recovery:
    """Compare ``model`` with the truth of ``data`` on its first ``n_tokens`` tokens.

    Each model encodes its own tokens alone; with ``shared_index`` the paired tokens are encoded
    together instead (``USAE.encode_shared``: SPARC's codes as in training, one TopK over the sum).
    """
    names = list(data.names)
    acts = {n: torch.from_numpy(np.ascontiguousarray(data.acts[n][:n_tokens])) for n in names}
    model = model.eval()
    if shared_index:
        codes = {n: c.dense(model.cfg.n_latents) for n, c in model.encode_shared(acts).items()}
    else:
        codes = {n: model.encode(n, acts[n], standardized=True) for n in names}
    entropy = firing_entropy(torch.stack([firing_counts(codes[n], tau) for n in names])).numpy()
    shared_rec, shared_cos, private_rec = {}, {}, {}
    best_shared = np.full(model.cfg.n_latents, -1.0)
    best_private = np.full(model.cfg.n_latents, -1.0)
    for n in names:
        atoms = model.dictionary(n).cpu().numpy()
        _, cos = match_atoms(data.shared_atoms[n], atoms)
        shared_rec[n], shared_cos[n] = float((cos >= MATCH).mean()), float(cos.mean())
        _, cos_p = match_atoms(data.private_atoms[n], atoms)
        private_rec[n] = float((cos_p >= MATCH).mean()) if len(cos_p) else float("nan")
        best_shared = np.maximum(best_shared, match_atoms(atoms, data.shared_atoms[n])[1])
        if len(data.private_atoms[n]):
            best_private = np.maximum(best_private, match_atoms(atoms, data.private_atoms[n])[1])
    is_shared = best_shared > best_private
    matched = (np.maximum(best_shared, best_private) >= MATCH) & np.isfinite(entropy)
    labels = is_shared[matched]
    score = auroc(entropy[matched], labels) if labels.any() and (~labels).any() else float("nan")
    r2 = np.array([[_r2(acts[j], model.decode(j, codes[i], standardized=True)) for j in names] for i in names])
    return Recovery(shared_recovered=shared_rec, shared_mean_cos=shared_cos, private_recovered=private_rec,
                    entropy_auroc=score, n_shared_concepts=int(labels.sum()), n_private_concepts=int((~labels).sum()),
                    r2=r2)


def _r2(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Per-dimension R2 of ``x_hat`` for ``x`` (both ``(n, d)``), from the sums ``r2_per_dim`` takes."""
    x64 = x.double()
    sse = (x - x_hat).double().pow(2).sum()
    return float(r2_per_dim(sse, x64.sum(dim=0), x64.pow(2).sum(dim=0), x.shape[0]))
