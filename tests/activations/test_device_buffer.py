"""Batches gathered from shuffle buffers on the device: the host loader's batches, resumable, errors, memory."""

import threading
import time
from itertools import islice

import numpy as np
import pytest
import torch

from usae.activations.device_buffer import check_device_memory, device_buffer_bytes
from usae.activations.integrity import DamagedStoreError
from usae.activations.loader import TokenLoader
from usae.activations.sources import TokenSource, open_aligned

from planted_stores import BATCH, BUFFER, CHUNK, ROWS, TOKENS, positions, write_store


def host_batches(loader, n, start=0):
    return [{k: v.clone() for k, v in b.items()} for b in islice(loader.batches(start), n)]


def assert_same(expected, got):
    assert len(expected) == len(got)
    for want, batch in zip(expected, got):
        assert batch.keys() == want.keys()
        for name in want:
            assert batch[name].dtype == want[name].dtype and batch[name].device.type == "cpu"
            torch.testing.assert_close(batch[name], want[name], rtol=0, atol=0)


@pytest.mark.parametrize("read_threads", [1, 3])
def test_three_epochs_are_the_host_loaders_batches(sources, read_threads):
    # epoch 0 ramps (buffers of 3 and 4 blocks), later epochs have 5 + 2: both slots are reused several times
    loader = TokenLoader(sources, BATCH, BUFFER, seed=2, read_threads=read_threads)
    n = sum(loader.steps_in_epoch(e) for e in range(3))
    expected = host_batches(loader, n)
    got = list(islice(loader.batches(device="cpu"), n))
    assert_same(expected, got)
    assert {p for batch in got[:loader.steps_per_epoch] for p in positions(batch)}  # aligned in both models


def test_resumed_streams_start_at_the_same_batch(sources):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    epoch_0 = loader.steps_in_epoch(0)
    n = epoch_0 + loader.steps_in_epoch(1) + 4
    expected = host_batches(loader, n)
    first_buffer = int(loader.plan(0).steps[0])
    for start in sorted({1, first_buffer, first_buffer + 1, epoch_0, epoch_0 + 2}):
        assert_same(expected[start:start + 4], list(islice(loader.batches(start, device="cpu"), 4)))


def test_flat_arrays_of_different_dtypes():
    x = np.arange(500, dtype=np.float32)[:, None] * np.array([1.0, 2.0], np.float32)
    sources = {"x": TokenSource("x", x, chunk_rows=64),
               "y": TokenSource("y", np.repeat(x[:, :1] + 0.5, 3, axis=1).astype(np.float16), chunk_rows=64)}
    loader = TokenLoader(sources, 50, 200, seed=1, read_threads=2)
    assert_same(host_batches(loader, 25), list(islice(loader.batches(device="cpu"), 25)))


def test_two_buffers_of_device_memory_are_counted_and_checked(sources, monkeypatch):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    # 5 blocks of 3 rows, 16 tokens a row; widths 4 + 6, float16; two buffers
    assert device_buffer_bytes(loader) == 2 * 15 * TOKENS * (4 + 6) * 2 == 9600
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 9600 - 1, 10**9))
    with pytest.raises(MemoryError, match=r"train.gather = 'device' needs 0.00 GiB .*lower train.buffer_tokens"):
        check_device_memory(loader, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 9600, 10**9))
    check_device_memory(loader, torch.device("cuda"))
    check_device_memory(loader, torch.device("cpu"))  # host memory is not checked


def test_reader_errors_reach_the_consumer(sources, monkeypatch):
    def broken(start, stop, out):
        raise OSError(f"disk gone at rows {start}:{stop}")
    monkeypatch.setattr(sources["b"], "read_into", broken)
    with pytest.raises(OSError, match="disk gone at rows"):
        next(TokenLoader(sources, BATCH, BUFFER, seed=0).batches(device="cpu"))


def test_a_non_finite_value_is_refused_naming_its_row():
    x = np.ones((40, 4, 2), np.float16)
    x[29, 3, 1] = np.inf
    sources = {"x": TokenSource("x", x, chunk_rows=8), "y": TokenSource("y", x[..., :1] * 2, chunk_rows=8)}
    loader = TokenLoader(sources, 16, 64, seed=0)
    with pytest.raises(ValueError, match=r"x: NaN or inf in 1 row\(s\) of rows 24:32 \(first: row 29\)"):
        list(islice(loader.batches(device="cpu"), 3 * loader.steps_per_epoch))


def test_a_damaged_chunk_is_refused_naming_it(tmp_path):
    valid = np.ones(ROWS, bool)
    b = write_store(tmp_path / "b.zarr", 6, 0.5, 2, valid, finite_checked=True)
    chunk = b / "train" / "tokens" / "c" / "6" / "0" / "0"  # rows 12:14
    data = bytearray(chunk.read_bytes())
    data[0] ^= 1
    chunk.write_bytes(bytes(data))
    sources = open_aligned({"a": write_store(tmp_path / "a.zarr", 4, 0.0, CHUNK, valid), "b": b})
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    with pytest.raises(DamagedStoreError, match=r"chunk \(6, 0, 0\) of array 'train/tokens' \(rows 12:14\) fails"):
        list(islice(loader.batches(device="cpu"), loader.steps_per_epoch))


def read_threads_alive():
    return [t for t in threading.enumerate() if t.name.startswith("TokenLoader-read")]


def test_closing_the_stream_ends_its_read_threads(sources):
    before = set(read_threads_alive())
    stream = TokenLoader(sources, BATCH, BUFFER, seed=0, read_threads=2).batches(device="cpu")
    next(stream)
    assert set(read_threads_alive()) - before
    stream.close()
    deadline = time.monotonic() + 3
    while set(read_threads_alive()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not set(read_threads_alive()) - before
