"""Small aligned stores whose every token names its position: the token loader's tests' data."""

import numpy as np

from usae.activations.store import atomic_store, base_attrs, create_array

ROWS, TOKENS, CHUNK = 20, 16, 3
INVALID = [4, 11]
BATCH, BUFFER = 64, 5 * CHUNK * TOKENS  # 5 blocks of 3 rows per buffer: 2 buffers per epoch (7 blocks)
# Blocks per buffer: epoch 0 ramps up from ceil(2 batches / 48 tokens a block) = 3 blocks, doubling (capped at 5).
SIZES = {0: [3, 4], 1: [5, 2], 2: [5, 2]}


def planted(d, offset):
    """Row r, token t holds (r, t, r, ...) + offset, so every vector names its position."""
    out = np.empty((ROWS, TOKENS, d), np.float32)
    out[:] = np.arange(ROWS)[:, None, None]
    out[:, :, 1] = np.arange(TOKENS)
    return (out + offset).astype(np.float16)


def write_store(path, d, offset, chunk_rows, valid, **attrs):
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(stage="prepare", manifest_hash="h", grid=[4, 4], d_model=d, **attrs))
        for split, n in [("train", ROWS), ("val", 0)]:
            sub = group.create_group(split)
            tokens = create_array(sub, "tokens", (n, TOKENS, d), dtype="float16", chunk_rows=chunk_rows)
            tokens[:] = planted(d, offset)[:n]
            sub.create_array("rows", data=np.arange(n, dtype=np.int64))
            sub.create_array("valid", data=valid[:n])
    return path


def positions(batch):
    """(row, token) of each vector of a batch, checked to be the same position in both models."""
    a, b = batch["a"].float().numpy(), batch["b"].float().numpy()
    np.testing.assert_array_equal(b[:, :2], a[:, :2] + 0.5)
    np.testing.assert_array_equal(a[:, 2:], np.repeat(a[:, :1], 2, axis=1))
    np.testing.assert_array_equal(b[:, 2:], np.repeat(b[:, :1], 4, axis=1))
    return [tuple(p) for p in a[:, :2].astype(int)]
