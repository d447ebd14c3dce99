"""Settings of the Universal SAE and of its training (config sections ``sae``, ``train``, ``runs``)."""

from __future__ import annotations

from dataclasses import dataclass

from usae.config.checks import Section
from usae.config.settings import REQUIRED, setting
from usae.registry import ACTIVATIONS, DEVICES, LOSSES, SCHEMES


@dataclass(frozen=True, kw_only=True)
class SAEConfig(Section):
    """Architecture of the Universal SAE (Thasarathan et al. 2025, Sec. 3)."""

    section_name = "sae"

    n_latents: int = setting(6144, "Shared code size m (paper: 6144 = 8 × 768).", minimum=2)
    k: int = setting(32, "Active latents per token (BatchTopK: k per token on average); must be < `n_latents`.",
                     minimum=1)
    activation: str = setting("topk", "`topk` per token (paper) or `batchtopk` (k × batch over the whole batch; a "
                                      "running threshold at evaluation).", choices=ACTIVATIONS)
    batchnorm: bool = setting(False, "BatchNorm1d after each encoder's linear map (the reference code; makes training "
                                     "and evaluation differ).")
    loss: str = setting("mse", "`mse`, `l1`, or `paper` (L1 + 0.1 × the reference code's dense auxiliary term).",
                        choices=LOSSES)
    cross_coef: float = setting(1.0, "Weight of each cross-model reconstruction term (a source's codes decoding "
                                     "another model) against the source's own, weighted 1. The paper weighs every "
                                     "target alike (1); below 1 the encoders favour their own model's "
                                     "reconstruction over the shared code's use by the others.", minimum=0.0,
                                 quiet_default=True)
    aux_k: int = setting(256, "AuxK (Gao et al. 2024): at most this many dead latents reconstruct the residual; 0 "
                              "disables.", minimum=0)
    aux_coef: float = setting(0.03125, "Weight of the AuxK loss (Gao et al.: 1/32).", minimum=0.0)
    dead_tokens: int | str = setting(
        "auto", "A latent is dead for a model once it has not been active (Z_k > 0) on this many of the tokens that "
        "model encoded as a source (AuxK revives dead latents). `auto`: the number of validation tokens, which "
        "evaluation's dead count is measured over, at most a quarter of the tokens each model encodes in the run "
        "(a tenth without a validation split); never below one batch.", choices=("auto",), minimum=1)
    decode: str = setting("auto", "`sparse` gathers the k active rows (`embedding_bag`), `dense` multiplies the "
                                  "m-wide code, `auto` times both at start-up and keeps the faster (recorded in the "
                                  "model; set one explicitly for bit-exact reruns).", choices=("auto", "dense", "sparse"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
    """How the Universal SAE is trained."""

    section_name = "train"

    scheme: str = setting(
        "paper", "`paper`: one seeded random source per step, every decoder reconstructs, only the source's encoder "
        "and decoder are updated (other decoders are detached: their gradients are never computed); `all_sources`: "
        "every model is a source every step, all parameters updated; `sparc` (SPARC, arXiv 2507.06265): as "
        "`all_sources`, but each token's k latents are one TopK over the sum of every model's pre-activations, the "
        "same for every model, each model keeping its own values there (needs `sae.activation: topk`; at evaluation "
        "each model encodes alone).", choices=SCHEMES)
    epochs: float = setting(1.0, "Passes over the training tokens.", exclusive_minimum=0.0)
    max_steps: int | None = setting(None, "Stop after this many steps (overrides `epochs`); `null` = use `epochs`.",
                                    minimum=1)
    batch_tokens: int = setting(6272, "Tokens per step (paper: 32 images × 196).", minimum=1)
    buffer_tokens: int = setting(1_048_576, "Tokens shuffled together, at least `batch_tokens`; the first epoch "
                                            "starts with buffers of 2 batches, doubling up to this, so step 0 waits "
                                            "for a few chunks only (memory: 2 buffers, uncompressed stores mapped "
                                            "from the page cache, others about 2 × buffer × Σ widths × 2 bytes).",
                                 minimum=1)
    lr: float = setting(3e-4, "Peak learning rate: linear warm-up to it, then cosine decay to `lr_end`, on the "
                              "global step.", exclusive_minimum=0.0)
    lr_end: float = setting(1e-6, "Learning rate at the end of the cosine decay; at most `lr`.", minimum=0.0)
    warmup: float = setting(0.05, "Share of the steps spent in linear warm-up.", minimum=0.0, maximum=1.0)
    optimizer: str = setting("adam", "`adam` (the paper) or `adamw` (the reference code).", choices=("adam", "adamw"))
    weight_decay: float = setting(0.0, "AdamW weight decay (reference code: 1e-5).", minimum=0.0)
    grad_clip: float = setting(1.0, "Gradient-norm clip per step; 0 disables.", minimum=0.0)
    seed: int = setting(0, "Seed of initialisation, source choice and token order.")
    checkpoint_every: int = setting(1000, "Steps between checkpoints (one is also written at the end).", minimum=1,
                                    changes_results=False)
    log_every: int = setting(50, "Steps between training-log rows (the only host syncs).", minimum=1)
    device: str = setting("auto", "`auto` = CUDA when present, else CPU.", choices=DEVICES)
    precision: str = setting("fp32", "`bf16` autocast on GPU, or `fp32`.", choices=("fp32", "bf16"))
    read_threads: int = setting(1, "Threads reading store chunks, and with `gather: host` as many gathering each "
                                   "batch beside the loader's own thread (a batch is cut into `read_threads` + 1 row "
                                   "ranges); with `gather: device` they also copy the chunks to the device. The "
                                   "next buffer's reads are spread over the steps whatever this is; more threads "
                                   "speed up the first buffer and a disk slower than training, but each gather "
                                   "takes Python's lock from the thread launching the steps: on H200 machines "
                                   "training from disk ran fastest with 1 (2 on one of four), slower with 4 or 8. "
                                   "On 2 cores, 1 leaves the step its other core.",
                                minimum=1, changes_results=False)
    gather: str = setting(
        "host", "Where batches are gathered from the shuffle buffers: `host` (in RAM, each batch then copied to "
        "the device) or `device` (both buffers copied once to the training device, each batch one `index_select` "
        "there; needs 2 × `buffer_tokens` × Σ widths × 2 bytes of its memory). The batches are the same either "
        "way. `device` keeps the per-batch gather off the host, where it slowed the launching of GPU steps, but its "
        "read threads then copy every chunk to the GPU themselves: on two H200 machines it trained at 0.84-0.95x "
        "the rate of `host` with 1 read thread, and level with it with 2 (benchmarks/README.md). On a CPU it only "
        "adds a copy.",
        choices=("host", "device"), changes_results=False)


@dataclass(frozen=True, kw_only=True)
class RunConfig(Section):
    """One training run: which models, and the SAE and training settings (config ``runs.<name>``)."""

    key: str
    """Run name; outputs go to ``results/runs/<name>/`` (the key under ``runs``; not a setting of its own)."""
    models: tuple[str, ...] = setting(
        REQUIRED, "Models this USAE spans, in order (at least two for cross-model concepts); `null` = every model.",
        min_items=1, unique=True, item="model", absent=None)
    sae: SAEConfig = setting(SAEConfig, "Overrides of the `sae` section for this run.", overrides="sae")
    train: TrainConfig = setting(TrainConfig, "Overrides of the `train` section for this run.", overrides="train")

    def config_path(self) -> str:
        return f"runs.{self.key}"
