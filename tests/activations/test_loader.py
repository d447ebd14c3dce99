"""TokenLoader on planted stores: aligned pairs, epoch coverage, determinism, resuming, ramp, paced reads, threads."""

import gc
import threading
import time
import weakref
from itertools import islice

import numpy as np
import pytest
import torch

from usae.activations.integrity import DamagedStoreError
from usae.activations.loader import TokenLoader
from usae.activations.prefetch import _BatchArrays, reads_due
from usae.activations.sources import TokenSource, open_aligned, open_arrays

from planted_stores import BATCH, BUFFER, CHUNK, INVALID, ROWS, SIZES, TOKENS, positions, write_store


def buffer_tokens_of_epoch(seed, epoch):
    """Valid tokens and blocks of each buffer, from the documented block order (7 blocks) and SIZES."""
    valid = np.ones(ROWS, bool)
    valid[INVALID] = False
    order = np.random.default_rng([seed, epoch]).permutation(7)
    bounds = np.cumsum([0] + SIZES[epoch])
    blocks = [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [sum(int(valid[k * CHUNK:(k + 1) * CHUNK].sum()) * TOKENS for k in bl) for bl in blocks], blocks


def test_batches_pair_the_same_positions_in_every_model(sources):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    assert loader.block_rows == CHUNK and loader.blocks_per_buffer == 5 and loader.first_buffer_blocks == 3
    assert [loader.buffer_sizes(e) for e in SIZES] == list(SIZES.values())
    for batch in islice(loader.batches(), 3 * loader.steps_per_epoch):
        assert batch["a"].shape == (BATCH, 4) and batch["b"].shape == (BATCH, 6)
        assert batch["a"].dtype == batch["b"].dtype == torch.float16
        assert not {row for row, _ in positions(batch)} & set(INVALID)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_epoch_visits_every_valid_token_once_except_dropped_remainders(sources, seed):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=seed)
    stream = loader.batches()
    for epoch in (0, 1, 2):  # epoch 0 with its ramp of buffers, then full ones
        tokens, blocks = buffer_tokens_of_epoch(seed, epoch)
        assert loader.steps_in_epoch(epoch) == sum(n // BATCH for n in tokens)
        seen = []
        for n, bl in zip(tokens, blocks):  # batches of a buffer come from its blocks only
            rows = {r for k in bl for r in range(k * CHUNK, min((k + 1) * CHUNK, ROWS))}
            got = [p for batch in islice(stream, n // BATCH) for p in positions(batch)]
            assert {row for row, _ in got} <= rows - set(INVALID)
            seen += got
        assert len(seen) == len(set(seen)) == loader.tokens_per_epoch - sum(n % BATCH for n in tokens)
    stream.close()
    assert loader.tokens_per_epoch == (ROWS - len(INVALID)) * TOKENS


def test_same_seed_same_stream_other_seed_other_stream(sources):
    n = 3 * TokenLoader(sources, BATCH, BUFFER, seed=3).steps_per_epoch
    first = [positions(b) for b in islice(TokenLoader(sources, BATCH, BUFFER, seed=3).batches(), n)]
    again = [positions(b) for b in islice(TokenLoader(sources, BATCH, BUFFER, seed=3, prefetch=3).batches(), n)]
    other = [positions(b) for b in islice(TokenLoader(sources, BATCH, BUFFER, seed=4).batches(), n)]
    assert first == again
    assert first != other
    epochs = [first[:n // 3], first[n // 3:2 * n // 3]]
    assert epochs[0] != epochs[1]  # each epoch is shuffled anew


def test_resuming_gives_the_batches_of_the_uninterrupted_stream(sources):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=5)
    per_epoch = [loader.steps_in_epoch(e) for e in range(3)]
    full = [positions(b) for b in islice(loader.batches(), sum(per_epoch))]
    first_buffer = buffer_tokens_of_epoch(5, 0)[0][0] // BATCH
    starts = {1, first_buffer - 1, first_buffer, per_epoch[0] - 1, per_epoch[0], per_epoch[0] + 2}
    for k in sorted(starts):
        resumed = [positions(b) for b in islice(loader.batches(start_step=k), 4)]
        assert resumed == full[k:k + 4], k
    assert loader.locate(per_epoch[0]) == (1, 0, 0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        loader.batches(start_step=-1)


def test_single_buffer_epochs_resume_far_ahead(sources):
    loader = TokenLoader(sources, BATCH, 10**6, seed=2)
    assert loader.blocks_per_buffer == loader.n_blocks == 7
    assert loader.buffer_sizes(0) == [3, 4] and loader.buffer_sizes(1) == [7]
    first, n = loader.steps_in_epoch(0), loader.steps_in_epoch(1)
    assert n == loader.steps_in_epoch(5) == (ROWS - len(INVALID)) * TOKENS // BATCH
    full = [positions(b) for b in islice(loader.batches(), first + 4 * n)]
    far = first + 3 * n - 1
    assert loader.locate(far) == (3, 0, n - 1)
    assert [positions(b) for b in islice(loader.batches(start_step=far), 2)] == full[far:far + 2]


@pytest.mark.parametrize("seed", [0, 1])
def test_batches_mix_tokens_of_many_images(sources, seed):
    loader = TokenLoader(sources, BATCH, 10**6, seed=seed)  # after epoch 0's ramp, one buffer: the whole store
    for batch in islice(loader.batches(loader.steps_in_epoch(0)), 2 * loader.steps_in_epoch(1)):
        assert len({row for row, _ in positions(batch)}) > 10


def spy_reads(monkeypatch, sources, before=None):
    """Record every block read as (source, start, stop); ``before(start)`` runs first when given."""
    calls = []
    for source in sources.values():
        def read_pieces(start, stop, map_chunks=True, maps=None, source=source, original=source.read_pieces):
            if before is not None:
                before(start)
            calls.append((source.name, start, stop))
            return original(start, stop, map_chunks, maps)
        monkeypatch.setattr(source, "read_pieces", read_pieces)
    return calls


def test_reads_are_whole_blocks_and_skip_blocks_without_valid_rows(sources, monkeypatch):
    sources["a"].valid[:CHUNK] = False  # block 0 has no valid row
    calls = spy_reads(monkeypatch, sources)
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0, read_threads=3)
    assert loader.block_rows == 3  # the largest chunk (a: 3, b: 2)
    list(islice(loader.batches(), 2 * loader.steps_per_epoch))
    assert calls
    for _, start, stop in calls:
        assert start % loader.block_rows == 0 and stop == min(start + loader.block_rows, ROWS)
        assert start != 0
    assert {name for name, _, _ in calls} == {"a", "b"}


def test_buffer_sizes_ramp_up_by_doubling_in_epoch_zero_only():
    source = TokenSource("m", np.zeros((100, 10, 2), np.float32), chunk_rows=1)  # blocks of 10 tokens
    loader = TokenLoader({"m": source}, batch_tokens=10, buffer_tokens=160, seed=0)
    assert (loader.first_buffer_blocks, loader.blocks_per_buffer) == (2, 16)
    assert loader.buffer_sizes(0) == [2, 4, 8, 16, 16, 16, 16, 16, 6]
    assert loader.buffer_sizes(1) == [16] * 6 + [4]
    assert TokenLoader({"m": source}, 30, 160, seed=0).buffer_sizes(0)[:3] == [6, 12, 16]  # 2 batches: 6 blocks


def test_the_first_batch_waits_for_the_first_ramp_buffer_only(sources, monkeypatch):
    """With one buffer as large as the store, the first batch still comes from the first 3 blocks read."""
    loader = TokenLoader(sources, BATCH, 10**6, seed=0, read_threads=1)
    first = set(loader.buffer_blocks(0, 0))
    assert len(first) == 3 and loader.blocks_per_buffer == 7
    release = threading.Event()
    calls = spy_reads(monkeypatch, sources, before=lambda start: start // CHUNK in first or release.wait(10))
    stream = loader.batches()
    batch = next(stream)  # would wait 10 s on the blocked reads if it needed any other block
    assert not release.is_set()
    assert {row // CHUNK for row, _ in positions(batch)} <= first
    release.set()
    stream.close()
    assert {start // CHUNK for _, start, _ in calls[:2 * len(first)]} == first


def test_reads_due_spread_the_next_buffer_over_the_current_one():
    assert [reads_due(6, consumed, 8) for consumed in range(-2, 8)] == [0, 0, 1, 2, 3, 4, 5, 6, 6, 6]
    assert reads_due(4, 0, 0) == 4  # nothing to wait for
    assert reads_due(3, 0, 1) == 3


def test_next_buffer_reads_follow_the_consumer(tmp_path, monkeypatch):
    """A consumer that took one batch of a 5-6 batch buffer has let at most 3 of the next 4 blocks be read."""
    valid = np.ones(ROWS, bool)
    sources = open_aligned({"a": write_store(tmp_path / "a.zarr", 4, 0.0, CHUNK, valid)})
    loader = TokenLoader(sources, 16, BUFFER, seed=0, prefetch=1, read_threads=1)  # one row a batch
    assert loader.buffer_sizes(0) == [1, 2, 4]
    start, n_batches = (int(n) for n in loader.plan(0).steps[:2])  # buffer 1: 2 blocks, 5 or 6 batches
    assert loader.locate(start) == (0, 1, 0)
    calls = spy_reads(monkeypatch, sources)
    stream = loader.batches(start)
    next(stream)
    time.sleep(0.3)  # room for the reader to run ahead, were it not paced
    upcoming = set(loader.buffer_blocks(0, 2))
    assert reads_due(4, 1, n_batches) <= 3
    assert sum(s // CHUNK in upcoming for _, s, _ in calls) <= reads_due(4, 1, n_batches)
    list(islice(stream, n_batches))  # buffer 1 consumed, and the first batch of buffer 2: read in full
    assert {s // CHUNK for _, s, _ in calls} >= upcoming
    stream.close()


@pytest.mark.parametrize("read_threads", [1, 2, 7])
def test_batches_do_not_depend_on_how_many_threads_read_and_gather(sources, read_threads):
    # A batch is cut into read_threads + 1 row ranges gathered at once; 7 leaves some ranges empty.
    expected = [positions(b) for b in islice(TokenLoader(sources, BATCH, BUFFER, seed=0, read_threads=3).batches(), 12)]
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0, read_threads=read_threads)
    assert [positions(b) for b in islice(loader.batches(), 12)] == expected


def test_kept_batches_and_views_are_never_overwritten_and_dropped_ones_are_reused(sources):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    n = 2 * loader.steps_per_epoch
    expected = [positions(b) for b in islice(loader.batches(), n)]
    kept = list(islice(loader.batches(), n))  # every batch held at once: more than the pool's arrays
    assert [positions(b) for b in kept] == expected
    views, pointers = [], []
    for k, batch in enumerate(islice(loader.batches(), n)):
        pointers.append(batch["a"].data_ptr())
        if k % 3 == 0:
            views.append(batch["b"][1:])  # a view keeps its batch's array
    assert [positions({"a": v[:, :4] - 0.5, "b": v})[0] for v in views] == [p[1] for p in expected[::3]][:len(views)]
    assert len(set(pointers)) < n  # dropped batches' arrays were gathered into again


def test_sources_of_one_width_each_keep_their_own_pooled_arrays():
    # Two models of one width (SigLIP and ViT, 768) used to share one pool of `size` arrays, so half
    # the batches in flight got fresh, page-faulting arrays that were never pooled.
    pool = _BatchArrays(size=2)
    in_flight = [{name: pool.get(name, (4, 3), np.float16) for name in ("siglip", "vit")} for _ in range(2)]
    arrays = [weakref.ref(array) for batch in in_flight for array in batch.values()]
    del in_flight
    assert all(ref() is not None for ref in arrays)  # every array was pooled
    again = [{name: pool.get(name, (4, 3), np.float16) for name in ("siglip", "vit")} for _ in range(2)]
    assert sorted(id(a) for b in again for a in b.values()) == sorted(id(ref()) for ref in arrays)
    assert all(b["siglip"] is not b["vit"] for b in again)


def test_reader_errors_reach_the_consumer(sources, monkeypatch):
    def broken(start, stop, map_chunks, maps):
        raise OSError(f"disk gone at rows {start}:{stop}")
    monkeypatch.setattr(sources["b"], "read_pieces", broken)
    with pytest.raises(OSError, match="disk gone at rows"):
        next(TokenLoader(sources, BATCH, BUFFER, seed=0).batches())


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "TokenLoader-prefetch"]


def wait_until_no_prefetch_thread():
    deadline = time.monotonic() + 3
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not prefetch_threads()


def loader_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("TokenLoader")]


def test_the_stream_s_threads_have_ended_when_it_is_closed_or_dropped(sources):
    assert wait_until_no_prefetch_thread()
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0, read_threads=2)
    stream = loader.batches()
    next(stream)  # the prefetch thread then fills its queue and waits for room, reads of the next buffer in flight
    assert prefetch_threads() and all(t.daemon for t in prefetch_threads())
    assert {"TokenLoader-read", "TokenLoader-gather"} <= {name.rsplit("_", 1)[0] for name in loader_threads()}
    stream.close()
    assert loader_threads() == []  # ended, not ending: close waits for the reads and the gather in flight
    stream = loader.batches(start_step=3)
    next(stream)
    del stream
    gc.collect()
    assert loader_threads() == []
    maps = weakref.ref(loader.maps)
    assert maps().paths  # the chunk files it read, still mapped
    del loader
    gc.collect()
    assert maps() is None  # the maps, and the files they hold, go with the loader


def test_sizes_and_refusals(sources):
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    assert loader.bytes_per_buffer == 5 * CHUNK * TOKENS * (4 + 6) * 2
    with pytest.raises(ValueError, match="raise buffer_tokens to at least 1008"):
        TokenLoader(sources, 1000, BUFFER, seed=0)
    with pytest.raises(ValueError, match="lower batch_tokens"):
        TokenLoader(sources, ROWS * TOKENS + 1, 10**6, seed=0)
    with pytest.raises(ValueError, match="batch_tokens must be an integer >= 1"):
        TokenLoader(sources, 0, BUFFER, seed=0)
    sources["b"].valid[:] = False
    with pytest.raises(ValueError, match=r"no row is valid in every source \(a, b\)"):
        TokenLoader(sources, BATCH, BUFFER, seed=0)
    other = TokenSource("c", np.zeros((ROWS, 4, 2), np.float16), chunk_rows=4)
    with pytest.raises(ValueError, match=r"sources differ in \(rows, tokens per row\)"):
        TokenLoader({"a": sources["a"], "c": other}, BATCH, BUFFER, seed=0)


def test_too_few_valid_tokens_per_buffer_is_refused():
    valid = np.zeros(40, bool)
    valid[::8] = True  # one valid row per block of 8
    source = TokenSource("m", np.zeros((40, 2, 3), np.float32), chunk_rows=8, valid=valid)
    with pytest.raises(ValueError, match="no buffer of epoch 0 holds batch_tokens=8 valid tokens"):
        TokenLoader({"m": source}, 8, 16, seed=0)


def test_two_dimensional_arrays_and_float32(tmp_path):
    rows = np.arange(500, dtype=np.float32)
    np.save(tmp_path / "x.npy", np.stack([rows, rows * 2], axis=1))
    np.save(tmp_path / "y.npy", np.stack([rows + 0.5] * 3, axis=1).astype(np.float16))
    sources = open_arrays({"x": tmp_path / "x.npy", "y": tmp_path / "y.npy"})
    loader = TokenLoader(sources, 50, 200, seed=1)
    assert loader.block_rows == 500 and loader.steps_per_epoch == 10
    seen = []
    for batch in islice(loader.batches(), 10):
        x, y = batch["x"].numpy(), batch["y"].float().numpy()
        assert batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.float16
        np.testing.assert_array_equal(x[:, 1], 2 * x[:, 0])
        np.testing.assert_array_equal(y, np.repeat(x[:, :1] + 0.5, 3, axis=1))
        seen += x[:, 0].astype(int).tolist()
    assert sorted(seen) == list(range(500))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches(sources):
    batch = next(TokenLoader(sources, BATCH, BUFFER, seed=0, pin_memory=True).batches())
    assert batch["a"].is_pinned() and batch["b"].is_pinned()
    positions(batch)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_inf_in_a_store_is_refused_naming_store_and_image(tmp_path, bad_value):
    valid = np.ones(ROWS, bool)
    bad = write_store(tmp_path / "b.zarr", 6, 0.5, 2, valid)
    import zarr

    zarr.open_group(bad, mode="r+")["train/tokens"][13, 5, 2] = bad_value
    sources = open_aligned({"a": write_store(tmp_path / "a.zarr", 4, 0.0, CHUNK, valid), "b": bad})
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    # Checked chunk by chunk where it lies: b's chunk of 2 rows, 12:14
    with pytest.raises(ValueError, match=r"b \(.*b.zarr\): NaN or inf in 1 row\(s\) of rows 12:14 "
                                         r"\(first: row 13, manifest index 13\)"):
        list(islice(loader.batches(0), loader.steps_per_epoch))


def test_a_store_checked_finite_when_written_is_trusted_through_its_checksums(tmp_path):
    valid = np.ones(ROWS, bool)
    trusted = write_store(tmp_path / "b.zarr", 6, 0.5, 2, valid, finite_checked=True)
    sources = open_aligned({"a": write_store(tmp_path / "a.zarr", 4, 0.0, CHUNK, valid), "b": trusted})
    assert sources["b"].checked_finite and not sources["a"].checked_finite
    # NaN put into b's chunk file behind the writer's back: its checksum, not a NaN scan, refuses it
    chunk = trusted / "train" / "tokens" / "c" / "6" / "0" / "0"  # rows 12:14
    data = bytearray(chunk.read_bytes())
    data[:2] = np.array([np.nan], np.float16).tobytes()
    chunk.write_bytes(bytes(data))
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    with pytest.raises(DamagedStoreError, match=r"chunk \(6, 0, 0\) of array 'train/tokens' \(rows 12:14\) fails"):
        list(islice(loader.batches(0), loader.steps_per_epoch))


def test_chunk_files_are_mapped_once_and_checked_at_every_read(sources, monkeypatch):
    from usae.activations import chunk_files

    maps_made = []
    real_mmap = chunk_files.mmap.mmap
    monkeypatch.setattr(chunk_files.mmap, "mmap", lambda *args, **kw: maps_made.append(args) or real_mmap(*args, **kw))
    loader = TokenLoader(sources, BATCH, BUFFER, seed=0)
    n = loader.steps_in_epoch(0)
    stream = loader.batches()
    list(islice(stream, n))
    after_first_epoch = len(maps_made)
    assert after_first_epoch == len(loader.maps.paths) > 0  # every chunk read once, its map kept
    list(islice(stream, loader.steps_in_epoch(1) + loader.steps_in_epoch(2)))
    stream.close()
    assert len(maps_made) == after_first_epoch  # epochs 1 and 2 reread the kept maps
    kept = sorted(loader.maps.paths)
    chunk = next(p for p in kept if "b.zarr" in p)
    with open(chunk, "r+b") as file:  # altered in place after the loader checked it
        file.write(b"\xff\xff")
    with pytest.raises(DamagedStoreError, match="fails its crc32c checksum"):
        list(islice(loader.batches(start_step=n), 3 * n))
