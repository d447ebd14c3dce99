"""Pick the faster decoding for this machine and shape, by timing both (``sae.decode: auto``)."""

from __future__ import annotations

import logging
import time

import torch

from usae.config import SAEConfig
from usae.sae.model import USAE
from usae.training.startup import RunStream

logger = logging.getLogger(__name__)


def choose_decode(model: USAE, stream: RunStream, cfg: SAEConfig, device: torch.device, repeats: int = 3) -> str:
    """``sparse`` or ``dense``: the configured choice, or for ``auto`` the faster one measured.

    Times a forward and backward of every decoder on the run's first batch (peeked at, so
    step 0 still trains on it) with each method; the choice is recorded in checkpoints so a
    resumed run keeps it.
    """
    if cfg.decode != "auto":
        return cfg.decode
    if model.activation.padded:
        return "sparse"  # codes padded past k slots (BatchTopK: 2k); gathering stays cheaper
    batch = {n: t.to(device).float() for n, t in stream.peek().items()}
    source = model.names[0]
    with torch.no_grad():
        codes = model.encode_sparse(source, batch[source])
    timings = {}
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
        timings[method] = min(times[1:])
    model.zero_grad(set_to_none=True)
    choice = min(timings, key=timings.get)
    logger.info("decode timing on %s: sparse %.2f ms, dense %.2f ms -> %s", device.type,
                1e3 * timings["sparse"], 1e3 * timings["dense"], choice)
    return choice


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
