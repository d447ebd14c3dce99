"""Pick the faster decoding for this machine and shape, by timing both (``sae.decode: auto``)."""

from __future__ import annotations

import logging
import time

import torch

from usae.config import SAEConfig
from usae.sae.model import USAE
from usae.training.startup import RunStream

logger = logging.getLogger(__name__)


TIMING_TOKENS = 512  # both methods' costs grow linearly with the tokens: a slice of the batch tells
CLEARLY_SLOWER = 2.0  # a method this much slower than the other's best after one timed run is not repeated


def choose_decode(model: USAE, stream: RunStream, cfg: SAEConfig, device: torch.device, repeats: int = 3) -> str:
    """``sparse`` or ``dense``: the configured choice, or for ``auto`` the faster one measured.

    Times a forward and backward of every decoder with each method on the first
    ``TIMING_TOKENS`` tokens of the run's first batch (peeked at, so step 0 still trains on
    it): ``repeats`` runs after a warm-up, fewer for a method already ``CLEARLY_SLOWER``
    (dense decoding at the paper's shapes takes seconds on a CPU). The choice is recorded
    in checkpoints so a resumed run keeps it.
    """
    if cfg.decode != "auto":
        return cfg.decode
    if model.activation.padded:
        return "sparse"  # codes padded past k slots (BatchTopK: 2k); gathering stays cheaper
    batch = {n: t[:TIMING_TOKENS].to(device).float() for n, t in stream.peek().items()}
    source = model.names[0]
    with torch.no_grad():
        codes = model.encode_sparse(source, batch[source])
    timings: dict[str, float] = {}
    for method in ("sparse", "dense"):
        model.sparse_decode = method == "sparse"
        times = []
        for _ in range(repeats + 1):
            values = codes.values.clone().requires_grad_(True)
            probe = type(codes)(values, codes.indices)
            _sync(device)
            start = time.perf_counter()
            loss = sum(model.decode_sparse(n, probe).square().mean() for n in model.names)
            loss.backward()
            _sync(device)
            times.append(time.perf_counter() - start)
            if len(times) > 1 and timings and min(times[1:]) > CLEARLY_SLOWER * min(timings.values()):
                break
        timings[method] = min(times[1:])
    model.zero_grad(set_to_none=True)
    choice = min(timings, key=timings.get)
    logger.info("decode timing on %s (%d tokens): sparse %.2f ms, dense %.2f ms -> %s", device.type,
                len(codes.values), 1e3 * timings["sparse"], 1e3 * timings["dense"], choice)
    return choice


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
