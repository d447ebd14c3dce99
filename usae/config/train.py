"""Settings of the Universal SAE and of its training (config sections ``sae``, ``train``, ``runs``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from usae.config.base import check_choice, check_range

ACTIVATIONS = ("topk", "batchtopk")
LOSSES = ("mse", "l1", "paper")
DECODES = ("auto", "dense", "sparse")
SCHEMES = ("paper", "all_sources")
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16")
TRACKERS = ("none", "tensorboard", "wandb")
TRAIN_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Architecture of the Universal SAE (Thasarathan et al. 2025, Sec. 3)."""

    n_latents: int = 6144
    """Size m of the shared code space (paper: 6144 = 8 x 768)."""
    k: int = 32
    """Active latents per token (TopK; BatchTopK keeps k per token on average)."""
    activation: str = "topk"
    """``topk`` (per token, the paper) or ``batchtopk`` (k x batch over the whole batch)."""
    batchnorm: bool = False
    """BatchNorm1d after each encoder's linear map (the reference code's choice)."""
    loss: str = "mse"
    """``mse``, ``l1`` or ``paper`` (L1 plus 0.1 x the reference code's dense auxiliary term)."""
    aux_k: int = 256
    """AuxK (Gao et al. 2024): at most this many dead latents reconstruct the residual; 0 disables."""
    aux_coef: float = 0.03125
    """Weight of the AuxK loss (Gao et al.: 1/32)."""
    dead_tokens: int = 1_000_000
    """A latent is dead for a model once that model's encoder has not fired it for this many tokens."""
    decode: str = "auto"
    """``sparse`` (gather k rows), ``dense`` (codes x dictionary) or ``auto`` (timed at start-up)."""

    def __post_init__(self) -> None:
        check_range("sae", "n_latents", self.n_latents, 2)
        check_range("sae", "k", self.k, 1)
        if self.k >= self.n_latents:
            raise ValueError(f"sae.k = {self.k} must be smaller than sae.n_latents = {self.n_latents}")
        check_choice("sae", "activation", self.activation, ACTIVATIONS)
        check_choice("sae", "loss", self.loss, LOSSES)
        check_range("sae", "aux_k", self.aux_k, 0)
        check_range("sae", "aux_coef", self.aux_coef, 0.0)
        check_range("sae", "dead_tokens", self.dead_tokens, 1)
        check_choice("sae", "decode", self.decode, DECODES)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How the Universal SAE is trained."""

    scheme: str = "paper"
    """``paper``: one random source model per step, only its encoder and decoder updated;
    ``all_sources``: every model is a source every step, all parameters updated."""
    epochs: float = 1.0
    """Passes over the training tokens."""
    max_steps: int | None = None
    """Stop after this many steps (overrides ``epochs``)."""
    batch_tokens: int = 6272
    """Tokens per step (paper: 32 images x 196 tokens)."""
    buffer_tokens: int = 1_048_576
    """Tokens shuffled together (memory: about 2 x buffer x sum of widths x 2 bytes)."""
    lr: float = 3e-4
    """Peak learning rate."""
    lr_end: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup: float = 0.05
    """Share of the steps spent in linear warm-up."""
    optimizer: str = "adam"
    """``adam`` (the paper) or ``adamw`` (the reference code)."""
    weight_decay: float = 0.0
    """AdamW weight decay (reference code: 1e-5)."""
    grad_clip: float = 1.0
    """Gradient-norm clip per step; 0 disables."""
    seed: int = 0
    """Seed of initialisation, source choice and token order."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is also written at the end)."""
    log_every: int = 50
    """Steps between log rows (the only host syncs)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    precision: str = "fp32"
    """``bf16`` autocast on GPU, or ``fp32``."""
    read_threads: int = 4
    """Threads reading store chunks."""
    tracking: str = "none"
    """``none``, ``tensorboard`` or ``wandb`` (optional extra logging; Parquet log is always written)."""

    def __post_init__(self) -> None:
        check_choice("train", "scheme", self.scheme, SCHEMES)
        check_range("train", "epochs", self.epochs, 0.0, lo_open=True)
        if self.max_steps is not None:
            check_range("train", "max_steps", self.max_steps, 1)
        check_range("train", "batch_tokens", self.batch_tokens, 1)
        check_range("train", "buffer_tokens", self.buffer_tokens, self.batch_tokens)
        check_range("train", "lr", self.lr, 0.0, lo_open=True)
        check_range("train", "lr_end", self.lr_end, 0.0, self.lr)
        check_range("train", "warmup", self.warmup, 0.0, 1.0)
        check_choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        check_range("train", "weight_decay", self.weight_decay, 0.0)
        check_range("train", "grad_clip", self.grad_clip, 0.0)
        check_range("train", "checkpoint_every", self.checkpoint_every, 1)
        check_range("train", "log_every", self.log_every, 1)
        check_choice("train", "device", self.device, TRAIN_DEVICES)
        check_choice("train", "precision", self.precision, PRECISIONS)
        check_range("train", "read_threads", self.read_threads, 1)
        check_choice("train", "tracking", self.tracking, TRACKERS)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run: which models, and the SAE and training settings (config ``runs.<name>``)."""

    key: str
    """Run name; outputs go to ``results/runs/<name>/``."""
    models: tuple[str, ...]
    """Models the USAE spans (at least two for cross-model concepts)."""
    sae: SAEConfig = field(default_factory=SAEConfig)
    """Architecture."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""

    def __post_init__(self) -> None:
        if len(self.models) < 1:
            raise ValueError(f"runs.{self.key}.models: at least one model is required")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"runs.{self.key}.models lists a model twice: {list(self.models)}")
