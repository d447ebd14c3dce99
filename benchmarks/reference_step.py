"""A re-implementation of the reference code's training step, as a speed baseline.

The reference is YorkUCVIL/UniversalSAE, ``universal_sae/train.py::train_cross_prediction_saes``,
with the TopKSAE of its vendored fork of ``overcomplete`` (see
``../shared/reference/usae_paper_code.md`` sections 3.5-3.6). Written from that description,
independent of ``usae``'s model code, so that the benchmark compares against what the
reference does and not against our reading of the method:

* one ``TopKSAE`` per model: ``Linear(d, m) -> BatchNorm1d(m) -> ReLU``, then TopK(k) with
  ``torch.topk`` and a scatter into a dense (n, m) code;
* the dictionary ``DictionaryLayer``: rows renormalised to unit L2 norm on every call of
  ``get_dictionary`` (a reparametrisation; the gradient flows through the norm);
* decode ``z @ D_j`` densely into every model's decoder, with gradients flowing to all of
  them (nothing detached; the unchosen decoders' gradients accumulate until their model is
  next chosen, as in the reference);
* loss ``top_k_auxiliary_loss_L1`` summed over the targets:
  ``mean|A_j - Â_j| + 0.1 * mean|(A_j - Â_j) - top_half(ReLU(pre) - z) @ D_j|``;
* the DINOv2-like model's 16x16 patch grid is resized to 14x14 (bilinear, antialias) on
  every step, on the batch;
* ``backward``, grad-norm clip 1.0 for every SAE, ``AdamW`` step of the chosen model only.

Left out, as they are logging rather than training: the per-step R² table (one ``.item()``
per target), ``loss.item()`` and wandb, and the per-model cosine LR scheduler (a scalar).
Leaving them out can only make the reference faster, so ratios against it are conservative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH_GRID_MODELS = {"DinoV2", "CLIP"}
"""Models whose 16x16 patch grid the reference resizes to 14x14 every step (hard-coded there)."""


class DictionaryLayer(nn.Module):
    """Decoder atoms, ``randn(m, d)`` at init, unit rows through a reparametrisation."""

    def __init__(self, n_components: int, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self._weights = nn.Parameter(torch.randn(n_components, dim, generator=generator))

    def get_dictionary(self) -> Tensor:
        return self._weights / (self._weights.norm(dim=-1, keepdim=True) + 1e-8)


class TopKSAE(nn.Module):
    """The vendored overcomplete TopKSAE with the ``mlp_bn_1`` encoder final block."""

    def __init__(self, dim: int, n_components: int, top_k: int, generator: torch.Generator) -> None:
        super().__init__()
        self.top_k = top_k
        self.linear = nn.Linear(dim, n_components)  # PyTorch default init, as in the reference
        self.norm = nn.BatchNorm1d(n_components)
        self.dictionary = DictionaryLayer(n_components, dim, generator)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pre_codes, z): BN output, and the dense top-k of its ReLU."""
        pre_codes = self.norm(self.linear(x))
        codes = F.relu(pre_codes)
        top = torch.topk(codes, self.top_k, dim=-1)
        z = torch.zeros_like(codes).scatter(-1, top.indices, top.values)
        return pre_codes, z

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.dictionary.get_dictionary()

    def get_dictionary(self) -> Tensor:
        return self.dictionary.get_dictionary()


def interpolate_patch_tokens(acts: Tensor, num_patches_in: int, num_patches_out: int) -> Tensor:
    """(b, [cls +] n_in^2, c) -> (b, [cls +] n_out^2, c), bilinear with antialias."""
    num_class_tokens = acts.shape[1] - num_patches_in**2
    b, _, c = acts.shape
    patches = acts[:, num_class_tokens:, :].reshape(b, num_patches_in, num_patches_in, c).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(num_patches_out, num_patches_out), mode="bilinear", antialias=True)
    out = patches.permute(0, 2, 3, 1).reshape(b, num_patches_out**2, c)
    if num_class_tokens > 0:
        out = torch.cat((acts[:, num_class_tokens - 1, :].unsqueeze(1), out), dim=1)
    return out


def top_k_auxiliary_loss_L1(x: Tensor, x_hat: Tensor, pre_codes: Tensor, codes: Tensor, dictionary: Tensor,
                            penalty: float = 0.1) -> Tensor:
    """The reference fork's L1 criterion: L1 error plus the dense 'top half' auxiliary term."""
    residual = x - x_hat
    loss = residual.abs().mean()
    rest = F.relu(pre_codes) - codes  # the activity TopK dropped
    top = torch.topk(rest, k=rest.shape[1] // 2, dim=1)  # sorted=True, as in the reference
    rest = torch.zeros_like(codes).scatter(-1, top.indices, top.values)
    residual_hat = rest @ dictionary
    return loss + penalty * (residual - residual_hat).abs().mean()


class ReferenceTrainer:
    """The SAEs, per-model AdamW optimisers and the reference's step."""

    def __init__(self, dims: dict[str, int], n_latents: int, k: int, *, device: torch.device | str, seed: int = 0,
                 lr: float = 3e-4, weight_decay: float = 1e-5, clip_grad: float = 1.0,
                 grid_in: int = 16, grid_out: int = 14) -> None:
        torch.manual_seed(seed)  # nn.Linear / BatchNorm default init
        gen = torch.Generator().manual_seed(seed)
        self.saes = {n: TopKSAE(d, n_latents, k, gen).to(device).train() for n, d in dims.items()}
        self.optimizers = {n: torch.optim.AdamW(s.parameters(), lr=lr, weight_decay=weight_decay)
                           for n, s in self.saes.items()}
        self.clip_grad = clip_grad
        self.grid_in, self.grid_out = grid_in, grid_out

    def _activations(self, batch: dict[str, Tensor], name: str) -> Tensor:
        acts = batch[name]
        if name in PATCH_GRID_MODELS:
            acts = interpolate_patch_tokens(acts, self.grid_in, self.grid_out)
        return acts

    def step(self, batch: dict[str, Tensor], source: str) -> Tensor:
        """One step with ``source`` as the encoding model; batch values are (images, tokens, d)."""
        self.optimizers[source].zero_grad()
        a_i = self._activations(batch, source)
        z_pre, z = self.saes[source].encode(a_i.reshape(-1, a_i.shape[-1]))
        loss = 0.0
        for name, sae in self.saes.items():
            acts = a_i if name == source else self._activations(batch, name)
            a_hat = sae.decode(z)
            loss = loss + top_k_auxiliary_loss_L1(acts.reshape(-1, acts.shape[-1]), a_hat, z_pre, z,
                                                  sae.get_dictionary())
        loss.backward()
        if self.clip_grad:
            for sae in self.saes.values():
                torch.nn.utils.clip_grad_norm_(sae.parameters(), self.clip_grad)
        self.optimizers[source].step()
        return loss.detach()
