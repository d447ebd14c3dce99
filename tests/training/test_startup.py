"""Start-up of a run: one stream for every start-up consumer, the decoder-bias sample, the decoding timed on batch 0."""

import numpy as np
import pytest
import torch

from usae.activations.loader import TokenLoader
from usae.activations.sources import TokenSource, open_arrays
from usae.config import SAEConfig, TrainConfig
from usae.sae.model import USAE
from usae.training import loop
from usae.training.speed import choose_decode
from usae.training.startup import RunStream, initial_means, sample_blocks


def counting_batches(n):
    """A stream of n batches {"m": [[i]]} that records whether it was closed."""
    state = {"closed": False}

    def gen():
        try:
            for i in range(n):
                yield {"m": torch.tensor([[float(i)]])}
        finally:
            state["closed"] = True
    return gen(), state


def test_peek_shows_the_next_batch_without_taking_it():
    batches, state = counting_batches(5)
    stream = RunStream(batches)
    head = stream.peek()
    assert stream.peek() is head
    assert next(stream) is head and float(head["m"]) == 0
    assert [float(b["m"]) for b in [next(stream), stream.peek(), next(stream)]] == [1, 2, 2]
    stream.close()
    assert state["closed"]


def loader_of(rows=10, chunk=4, tokens=3, valid=None, d=2):
    """Row r, token t of model m holds (r, t) (and m: (r + 1, t + 1)); blocks of ``chunk`` rows."""
    x = np.zeros((rows, tokens, d), np.float32)
    x[:, :, 0] = np.arange(rows)[:, None]
    x[:, :, 1] = np.arange(tokens)
    sources = {"a": TokenSource("a", x, chunk_rows=chunk, valid=valid),
               "b": TokenSource("b", x + 1, chunk_rows=chunk)}
    return TokenLoader(sources, batch_tokens=3, buffer_tokens=6, seed=0), x


def test_sample_blocks_are_strided_over_the_blocks_with_a_valid_row():
    valid = np.ones(40, bool)
    valid[12:16] = False  # block 3 of 10 has no valid row
    loader, _ = loader_of(rows=40, valid=valid)
    assert loader.n_blocks == 10 and loader.block_rows * loader.tokens_per_row == 12
    assert sample_blocks(loader, n_tokens=36).tolist() == [0, 5, 9]  # 3 blocks of the 9 candidates 0,1,2,4,...,9
    assert sample_blocks(loader, n_tokens=1).tolist() == [0]
    assert sample_blocks(loader, n_tokens=10**6).tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_initial_means_are_the_means_of_the_sampled_valid_tokens():
    valid = np.ones(10, bool)
    valid[[1, 9]] = False
    loader, x = loader_of(valid=valid)
    means = initial_means(loader, torch.device("cpu"), n_tokens=10**6)  # every block: the whole store
    expected = x[valid].reshape(-1, 2).mean(axis=0)
    torch.testing.assert_close(means["a"], torch.from_numpy(expected))
    torch.testing.assert_close(means["b"], torch.from_numpy(expected + 1))
    one = initial_means(loader, torch.device("cpu"), n_tokens=1)  # block 0: rows 0, 2, 3
    torch.testing.assert_close(one["a"], torch.tensor([5 / 3, 1.0]))


def test_initial_means_refuse_nan_naming_the_row():
    x = np.ones((8, 2, 3), np.float32)
    x[5, 1, 2] = np.nan
    loader = TokenLoader({"m": TokenSource("m", x, chunk_rows=4)}, 2, 8, seed=0)
    with pytest.raises(ValueError, match=r"m: NaN or inf in 1 row\(s\) of rows 4:8 \(first: row 5\)"):
        initial_means(loader, torch.device("cpu"))


def test_auto_decode_times_the_first_batch_which_stays_the_first():
    loader, _ = loader_of()
    first = next(loader.batches(0))
    model = USAE({"a": 2, "b": 2}, SAEConfig(n_latents=8, k=2, aux_k=0, decode="auto"), seed=0)
    stream = RunStream(loader.batches(0))
    assert choose_decode(model, stream, model.cfg, torch.device("cpu"), repeats=1) in ("sparse", "dense")
    assert torch.equal(next(stream)["a"], first["a"]) and torch.equal(next(stream)["b"], next(loader.batches(1))["b"])
    stream.close()


def test_a_fresh_run_reads_through_one_stream(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name, d in [("m0", 4), ("m1", 6)]:
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(300, d)).astype(np.float32))
    opened = []
    original = TokenLoader.batches

    def batches(self, start_step=0, device=None):
        opened.append(start_step)
        return original(self, start_step, device)
    monkeypatch.setattr(TokenLoader, "batches", batches)
    sae = SAEConfig(n_latents=16, k=2, aux_k=4, dead_tokens=100, decode="auto")
    cfg = TrainConfig(max_steps=6, batch_tokens=20, buffer_tokens=100, device="cpu", log_every=3, read_threads=1)
    paths = {n: tmp_path / f"{n}.npy" for n in ("m0", "m1")}
    loop.train_usae(open_arrays(paths), sae, cfg, tmp_path / "run", stop_after=2)
    assert opened == [0]
    loop.train_usae(open_arrays(paths), sae, cfg, tmp_path / "run")
    assert opened == [0, 3]  # the resumed run: one stream from its checkpoint's step


@pytest.mark.parametrize(("sparse_s", "dense_s", "dense_runs", "choice"), [(1.0, 10.0, 2, "sparse"),
                                                                       (1.0, 1.5, 4, "sparse"), (3.0, 1.0, 4, "dense")])
def test_auto_decode_stops_timing_a_clearly_slower_method(monkeypatch, sparse_s, dense_s, dense_runs, choice):
    """A fake clock: each run of a method takes its given seconds; runs are counted per method."""
    import usae.training.speed as speed

    loader, _ = loader_of()
    model = USAE({"a": 2, "b": 2}, SAEConfig(n_latents=8, k=2, aux_k=0, decode="auto"), seed=0)
    clock, runs = [0.0], {"sparse": 0, "dense": 0}
    decode = model.decode_sparse

    def counted(name, codes):
        if name == "a":
            runs["sparse" if model.sparse_decode else "dense"] += 1
        return decode(name, codes)

    def tick():  # two reads a run: half the run's time each
        clock[0] += (sparse_s if model.sparse_decode else dense_s) / 2
        return clock[0]
    monkeypatch.setattr(model, "decode_sparse", counted)
    monkeypatch.setattr(speed.time, "perf_counter", tick)
    stream = RunStream(loader.batches(0))
    assert choose_decode(model, stream, model.cfg, torch.device("cpu"), repeats=3) == choice
    stream.close()
    assert runs == {"sparse": 4, "dense": dense_runs}
