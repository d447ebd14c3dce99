"""The Universal Sparse Autoencoder: one shared code space, an encoder and a decoder per model.

Thasarathan et al. 2025 (arXiv 2502.03714), Eqs. 3-4. For model i with activations a:

    pre_i(a) = W_i (a - b_i) + c_i                     (encoder with pre-bias b_i)
    Z        = TopK_K(ReLU(pre_i(a)))                   (shared code, m latents; sae.activation)
    A_hat_j  = Z D_j + b_j                              (decode into any model j)

Decoder rows D_j[k] have unit L2 norm; b_i is model i's decoder bias, reused as its
encoder pre-bias (Gao et al. 2024). Codes travel as (values, indices) pairs of the K
active latents, so decoding gathers K rows instead of multiplying an m-wide dense code.
The activation is the ``sae.activation`` entry of ``usae.registry.ACTIVATIONS``
(:mod:`usae.sae.activations`); the saved format is :mod:`usae.sae.io`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usae import __version__
from usae.config import SAEConfig, from_dict, to_dict
from usae.registry import ACTIVATIONS
from usae.sae.activations import Activation
from usae.sae.hub import HubMixin
from usae.sae.io import read_model_files, write_model_files
from usae.sae.sparse_grad import EncoderInputs, LatentOrder, decode_rows, read_pre
from usae.sae.topk import topk_rows
from usae.sae.workspace import Workspace


@dataclass
class Codes:
    """Sparse codes of a batch: the active latents of each token.

    ``values`` and ``indices`` are (n, k). With BatchTopK a token may keep fewer than k
    latents; its unused slots hold value 0.
    """

    values: Tensor
    indices: Tensor
    pre: Tensor | None = None
    """Dense pre-activations (n, m), kept for the auxiliary losses during training (without a
    gradient of their own when :attr:`grad_inputs` is set: read them with :meth:`pre_at`; they
    are then the model's reused buffer, valid until its next sparse-gradient encode)."""
    grad_inputs: EncoderInputs | None = None
    """What ``pre`` is a function of, when it was computed without autograd
    (:meth:`USAE.encode_sparse`'s sparse-gradient path)."""
    order: LatentOrder | None = None
    """The indices grouped by latent, shared by the weight gradients of the encoder and the
    decoders (sparse-gradient path)."""
    at_columns: Tensor | None = None
    """pre[:, columns] (n, c) with its gradient, for the ``columns`` the encode was asked to read
    too (AuxK's dead latents: read with the active latents, one backward for both)."""

    def pre_at(self, columns: Tensor) -> Tensor:
        """pre[:, columns] (n, c), carrying the gradient into the encoder; columns must not repeat."""
        if self.grad_inputs is None:
            return self.pre[:, columns]
        return read_pre(self.grad_inputs, self.pre, columns=columns)[1]

    def dense(self, n_latents: int) -> Tensor:
        """(n, m) dense code matrix."""
        out = self.values.new_zeros(self.values.shape[0], n_latents)
        return out.scatter_(1, self.indices, self.values)


class USAEOutput(NamedTuple):
    """What :meth:`USAE.forward` returns: the shared codes and every model's reconstruction."""

    codes: Tensor
    """Dense codes (..., m) of the source model's activations."""
    reconstructions: dict[str, Tensor]
    """Model name -> (..., d_j): the codes decoded into every model j, the source included."""


class USAE(nn.Module, HubMixin):
    """Universal SAE over several models (encoders/decoders keyed by model name).

    Also a Hugging Face hub model (:class:`usae.sae.hub.HubMixin`): ``USAE.from_pretrained(repo_id or
    folder)``, ``save_pretrained(folder)`` and ``push_to_hub(repo_id)`` use the format of :meth:`save`.
    """

    def __init__(self, dims: dict[str, int], cfg: SAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        if not dims:
            raise ValueError("a USAE needs at least one model")
        self.cfg = cfg
        self.dims = dict(dims)
        self.names = list(dims)
        m = cfg.n_latents
        self.W_dec = nn.ParameterDict()
        self.W_enc = nn.ParameterDict()
        self.b_dec = nn.ParameterDict()
        self.b_enc = nn.ParameterDict()
        for name, d in dims.items():
            # Each model's init depends on the seed and on the set of models, so an SAE trained
            # on one model alone never starts from the same atoms as the USAE it is compared with.
            gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}|{','.join(dims)}|{name}".encode()))
            rows = F.normalize(torch.randn(m, d, generator=gen), dim=1)
            self.W_dec[name] = nn.Parameter(rows)
            self.W_enc[name] = nn.Parameter(rows.t().clone())  # encoder = decoder transposed
            self.b_dec[name] = nn.Parameter(torch.zeros(d))
            self.b_enc[name] = nn.Parameter(torch.zeros(m))
        self.bn = nn.ModuleDict({n: nn.BatchNorm1d(m) for n in self.names}) if cfg.batchnorm else None
        # BatchTopK: per-model running threshold used at evaluation (EMA of the batch thresholds).
        for name in self.names:
            self.register_buffer(f"threshold_{name}", torch.zeros(()))
        # Standardisation of the training data, (x - mean) / std per model; identity until set.
        for name, d in dims.items():
            self.register_buffer(f"std_mean_{name}", torch.zeros(d))
            self.register_buffer(f"std_scale_{name}", torch.ones(()))
        self.sparse_decode = cfg.decode != "dense"
        self.sparse_grad = True
        """Train the encoder through :mod:`usae.sae.sparse_grad` where it applies (see
        :meth:`encode_sparse`); False: differentiate the dense pre-activations (the reference)."""
        self.activation: Activation = ACTIVATIONS.get(cfg.activation, setting="sae.activation")
        self.meta: dict = {}
        self.workspace = Workspace()
        """The (n, m) pre-activation buffers of the sparse-gradient path, one a model, reused
        from step to step (a fresh one each step cost page faults: ~15% of the GEMM)."""

    # -- encoding ---------------------------------------------------------------------------
    def pre_codes(self, name: str, acts: Tensor) -> Tensor:
        """pre_i(a) = W_i (a - b_i) + c_i, then BatchNorm if configured. (n, d_i) -> (n, m)."""
        # W (a - b) + c written as a W + (c - b W): the gradient of the pre-bias b is then a
        # vector-matrix product instead of a full (n x m) @ (m x d) input-gradient GEMM.
        pre = torch.addmm(self._pre_bias(name), acts, self.W_enc[name])
        return self.bn[name](pre) if self.bn is not None else pre

    def _pre_bias(self, name: str) -> Tensor:
        """c_i - b_i W_i: the biases folded so that pre_i(a) = a W_i + (c_i - b_i W_i)."""
        return self.b_enc[name] - self.b_dec[name] @ self.W_enc[name]

    def encode_sparse(self, name: str, acts: Tensor, *, keep_pre: bool = False, dense_grad: bool = False,
                      columns: Tensor | None = None) -> Codes:
        """Codes of ``acts`` (n, d_i) from model ``name``'s encoder and ``sae.activation``.

        ``keep_pre`` keeps the pre-activations for auxiliary losses; ``columns`` (latents, no
        repeats) are read from them into ``codes.at_columns``, with their gradient. When
        gradients are on, the encoder's gradient costs only the entries read
        (:meth:`_encode_sparse_grad`) unless ``dense_grad`` asks for the dense pre-activations'
        own gradient (a loss that reads all of ``codes.pre``, as the paper loss does) or the
        sparse path does not apply: BatchNorm (its batch statistics spread each latent's
        gradient over the whole (n, m) batch), an activation without ``gathers`` (values that
        are not pre at the indices), or ``self.sparse_grad`` off.
        """
        if self._sparse_grad_applies(dense_grad) and getattr(self.activation, "gathers", False):
            return self._encode_sparse_grad(name, acts, keep_pre=keep_pre, columns=columns)
        pre = self.pre_codes(name, acts)
        codes = self.activate(name, pre, keep_pre=keep_pre)
        if columns is not None:
            codes.at_columns = pre[:, columns]
        return codes

    def _sparse_grad_applies(self, dense_grad: bool) -> bool:
        """Whether the encoder may learn through its active entries alone (see :meth:`encode_sparse`)."""
        return self.sparse_grad and not dense_grad and self.bn is None and torch.is_grad_enabled()

    def encode_shared(self, acts: dict[str, Tensor], *, keep_pre: bool = False,
                      dense_grad: bool = False) -> dict[str, Codes]:
        """Codes of paired tokens ``acts[name]`` (n, d_name) whose K latents are the same for every
        model: SPARC's global TopK (arXiv 2507.06265, its ``MultiStreamSparseAutoencoder``).

            indices = TopK_K(sum_i pre_i(a_i)),   Z_i = ReLU(pre_i(a_i)[indices])

        One selection over the sum of the models' pre-activations (their mean would select the
        same latents: dividing by M keeps the order), each model keeping its own values there, so
        a selected latent may be 0 for one model. The selection passes no gradient: each encoder
        learns through its own values, by :func:`read_pre`'s sparse gradient where
        :meth:`encode_sparse` would use it, else through the dense pre-activations.

        Raises:
            ValueError: ``sae.activation`` is not ``topk`` (a per-model running threshold has no
                meaning for a selection over the sum), or the models' token counts differ.
        """
        if self.cfg.activation != "topk":
            raise ValueError(f"shared-index codes (train.scheme = 'sparc') need sae.activation = 'topk', got "
                             f"{self.cfg.activation!r}")
        for name, x in acts.items():
            self._check_model(name, x)
        if len({x.shape[0] for x in acts.values()}) > 1:
            raise ValueError(f"shared-index codes need paired tokens, got row counts "
                             f"{ {n: x.shape[0] for n, x in acts.items()} }")
        sparse = self._sparse_grad_applies(dense_grad)
        pre, inputs = {}, {}
        for name, x in acts.items():
            if sparse:
                inputs[name] = EncoderInputs(x, self.W_enc[name], self.b_enc[name], self.b_dec[name])
                with torch.no_grad():
                    pre[name] = torch.addmm(inputs[name].folded_bias(), x, inputs[name].weight)
            else:
                pre[name] = self.pre_codes(name, x)
        with torch.no_grad():
            indices = topk_rows(sum(p.detach() for p in pre.values()), self.cfg.k)[1]
        order = LatentOrder(indices, self.cfg.n_latents) if sparse else None
        codes = {}
        for name in acts:
            at = read_pre(inputs[name], pre[name], indices, order=order)[0] if sparse else pre[name].gather(1, indices)
            codes[name] = Codes(F.relu(at), indices, pre[name] if keep_pre else None,
                                inputs[name] if keep_pre and sparse else None, order)
        return codes

    def _encode_sparse_grad(self, name: str, acts: Tensor, *, keep_pre: bool, columns: Tensor | None) -> Codes:
        """:meth:`encode_sparse` with the dense GEMM outside autograd and a gradient through the
        entries read only (O(n K d) instead of O(n m d); :func:`usae.sae.sparse_grad.read_pre`)."""
        inputs = EncoderInputs(acts, self.W_enc[name], self.b_enc[name], self.b_dec[name])
        with torch.no_grad():
            pre = self.workspace.addmm(name, inputs.folded_bias(), acts, inputs.weight)
            codes = self.activate(name, pre)
        order = LatentOrder(codes.indices, self.cfg.n_latents)
        gathered, at_columns = read_pre(inputs, pre, codes.indices, columns, order)
        # Active entries are exactly pre at their index (the activation's ``gathers``); the
        # others hold 0 and, like ReLU's or BatchTopK's masked slots, pass no gradient.
        values = torch.where(codes.values > 0, gathered, torch.zeros_like(gathered))
        return Codes(values, codes.indices, pre if keep_pre else None, inputs if keep_pre else None, order,
                     at_columns if columns is not None else None)

    def activate(self, name: str, pre: Tensor, *, keep_pre: bool = False) -> Codes:
        """Codes from pre-activations (n, m) of model ``name`` (its BatchTopK threshold, if any)."""
        values, indices = self.activation(pre, self.cfg.k, threshold=getattr(self, f"threshold_{name}"),
                                          training=self.training)
        return Codes(values, indices, pre if keep_pre else None)

    def encode(self, name: str, acts: Tensor, *, standardized: bool = False) -> Tensor:
        """Dense codes (n, m) of model ``name``'s activations (..., d_i).

        Raw activations are standardised with the statistics saved with the model unless
        ``standardized=True`` says they already are.
        """
        self._check_model(name, acts)
        x = acts if standardized else self.standardize(name, acts)
        flat = x.reshape(-1, self.dims[name]).to(self.W_enc[name].dtype)
        return self.encode_sparse(name, flat).dense(self.cfg.n_latents).reshape(*acts.shape[:-1], -1)

    def forward(self, name: str, acts: Tensor, *, standardized: bool = False) -> USAEOutput:
        """Encode model ``name``'s activations (..., d_i) and decode them into every model.

        Exactly :meth:`encode` followed by :meth:`decode` for each model, so ``model(name, acts)``
        composes like any ``nn.Module`` (hooks, gradients). Inputs and reconstructions are in
        raw activation space (the saved standardisation applied and undone) unless
        ``standardized=True`` says both are in the standardised space.
        """
        codes = self.encode(name, acts, standardized=standardized)
        return USAEOutput(codes, {j: self.decode(j, codes, standardized=standardized) for j in self.names})

    # -- decoding ---------------------------------------------------------------------------
    def decode_sparse(self, name: str, codes: Codes, *, detach: bool = False) -> Tensor:
        """A_hat_j = Z D_j + b_j for model ``name``; ``detach`` blocks gradients into D_j, b_j."""
        weight, bias = self.W_dec[name], self.b_dec[name]
        if detach:
            weight, bias = weight.detach(), bias.detach()
        if self.sparse_decode and self.sparse_grad:
            return decode_rows(codes.values, codes.indices, weight, bias, codes.order)
        if self.sparse_decode:
            values = codes.values.to(weight.dtype)  # embedding_bag has no autocast rule: bf16 codes, fp32 rows
            return F.embedding_bag(codes.indices, weight, per_sample_weights=values, mode="sum") + bias
        return codes.dense(self.cfg.n_latents) @ weight + bias

    def decode(self, name: str, codes: Tensor, *, standardized: bool = False) -> Tensor:
        """Decode dense codes (..., m) into model ``name``'s activations (..., d_i).

        The result is in the model's raw activation space unless ``standardized=True``.
        """
        if name not in self.dims:
            raise KeyError(f"unknown model {name!r}; this USAE spans {self.names}")
        out = codes.to(self.W_dec[name].dtype) @ self.W_dec[name] + self.b_dec[name]
        return out if standardized else self.unstandardize(name, out)

    # -- standardisation --------------------------------------------------------------------
    def set_standardization(self, name: str, mean: Tensor | float, std: float) -> None:
        """Record model ``name``'s data standardisation (scalar or per-dimension mean)."""
        getattr(self, f"std_mean_{name}").copy_(torch.as_tensor(mean, dtype=torch.float32).expand(self.dims[name]))
        getattr(self, f"std_scale_{name}").fill_(float(std))

    def standardize(self, name: str, acts: Tensor) -> Tensor:
        return (acts.float() - getattr(self, f"std_mean_{name}")) / getattr(self, f"std_scale_{name}")

    def unstandardize(self, name: str, acts: Tensor) -> Tensor:
        return acts * getattr(self, f"std_scale_{name}") + getattr(self, f"std_mean_{name}")

    def _check_model(self, name: str, acts: Tensor) -> None:
        if name not in self.dims:
            raise KeyError(f"unknown model {name!r}; this USAE spans {self.names}")
        if acts.shape[-1] != self.dims[name]:
            raise ValueError(f"{name} activations must have {self.dims[name]} dims, got shape {tuple(acts.shape)}")

    def dictionary(self, name: str) -> Tensor:
        """Model ``name``'s decoder atoms, (m, d_i) with unit rows (standardised space)."""
        if name not in self.dims:
            raise KeyError(f"unknown model {name!r}; this USAE spans {self.names}")
        return self.W_dec[name].detach()

    # -- persistence ------------------------------------------------------------------------
    def saved_config(self) -> dict:
        """What ``config.json`` records (:mod:`usae.sae.io` adds ``format`` and the weights' hash)."""
        return {"usae_version": __version__, "models": self.names, "dims": self.dims, "sae": to_dict(self.cfg),
                "meta": self.meta}

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomically)."""
        return save_usae(self, directory)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> USAE:
        """Load a model written by :meth:`save`."""
        return load_usae(directory, device=device)

    # -- constraints ------------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grads(self, names: list[str] | None = None) -> None:
        """Drop the gradient component along each decoder row (it would only change the norm)."""
        for name in names or self.names:
            w = self.W_dec[name]
            if w.grad is not None:  # in place, with no (m, d) temporary: half the time of g - (g * w).sum(1) w
                w.grad.addcmul_(torch.linalg.vecdot(w.grad, w, dim=1).unsqueeze(1), w, value=-1)

    @torch.no_grad()
    def normalize_decoders(self, names: list[str] | None = None) -> None:
        """Project decoder rows back to unit L2 norm."""
        for name in names or self.names:
            self.W_dec[name].div_(self.W_dec[name].norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def init_decoder_bias(self, means: dict[str, Tensor]) -> None:
        """Set b_j to model j's mean activation (the SAE literature's initialisation)."""
        for name, mean in means.items():
            self.b_dec[name].copy_(mean.to(self.b_dec[name]))

    def source_params(self, name: str) -> list[nn.Parameter]:
        """The parameters the paper's scheme updates when ``name`` is the source."""
        params = [self.W_enc[name], self.b_enc[name], self.W_dec[name], self.b_dec[name]]
        if self.bn is not None:
            params += list(self.bn[name].parameters())
        return params


def save_usae(model: USAE, directory: str | Path) -> Path:
    """Write ``model`` to ``directory`` (format: :mod:`usae.sae.io`); an existing model there is
    replaced only when done."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_model_files(directory, model.saved_config(), state)


def load_usae(directory: str | Path, *, device: str | torch.device = "cpu") -> USAE:
    """Load a model written by :func:`save_usae`, in evaluation mode.

    Raises:
        FileNotFoundError: ``directory`` lacks the weights or the config.
        ValueError: another format, or weights that do not match the config.
    """
    config, state = read_model_files(directory)
    dims = {name: int(config["dims"][name]) for name in config["models"]}
    model = USAE(dims, from_dict(SAEConfig, config["sae"], section="sae"))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that disagree with config.json's dims or settings
        raise ValueError(f"{directory}: weights do not match config.json: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{directory}: weights do not match config.json (missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys})")
    model.meta = config.get("meta", {})
    return model.to(device).eval()
