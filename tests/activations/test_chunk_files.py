"""Direct chunk-file reads: which arrays take them, same values as Zarr, same damage reports."""

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from usae.activations.chunk_files import ChunkFiles, MappedFiles
from usae.activations.integrity import DamagedStoreError
from usae.activations.store import atomic_store, base_attrs, create_array, open_store

ROWS, CHUNK = 20, 3  # 7 chunks, the last padded (rows 18:20 of 18:21)


def store(path, compressor="none", dims=(5, 4)):
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(stage="prepare"))
        sub = group.create_group("train")
        tokens = create_array(sub, "tokens", (ROWS, *dims), dtype="float16", chunk_rows=CHUNK, compressor=compressor)
        tokens[:] = np.arange(ROWS * np.prod(dims)).reshape(ROWS, *dims).astype(np.float16)
    return path


def tokens_of(path):
    return open_store(path)["train/tokens"]


def test_uncompressed_checked_arrays_only(tmp_path):
    files = ChunkFiles.of(tokens_of(store(tmp_path / "a.zarr")))
    assert files is not None and (files.chunk_rows, files.shape, files.dtype) == (CHUNK, (ROWS, 5, 4), np.float16)
    assert ChunkFiles.of(tokens_of(store(tmp_path / "z.zarr", compressor="zstd"))) is None
    assert ChunkFiles.of(zarr.open_group(tmp_path / "a.zarr", mode="r")["train/tokens"]) is None  # not checked
    assert ChunkFiles.of(tokens_of(store(tmp_path / "b.zarr", dims=(7,)))) is not None  # 2-D arrays too


@pytest.mark.parametrize("dims", [(5, 4), (7,)])
def test_reads_equal_zarr_for_any_row_range(tmp_path, dims):
    array = tokens_of(store(tmp_path / "a.zarr", dims=dims))
    files = ChunkFiles.of(array)
    for start, stop in [(0, 3), (3, 12), (1, 2), (2, 7), (17, 20), (18, 20), (0, 20), (5, 5)]:
        out = np.full((stop - start, *dims), -1, np.float16)
        files.read_into(start, stop, out)
        np.testing.assert_array_equal(out, array[start:stop])


def damage_of(read):
    with pytest.raises(DamagedStoreError) as caught:
        read()
    return str(caught.value)


@pytest.mark.parametrize("harm", ["delete", "truncate", "append", "flip"])
def test_damage_is_reported_as_zarr_reads_report_it(tmp_path, harm):
    path = store(tmp_path / "a.zarr")
    chunk = Path(path) / "train/tokens/c/6/0/0"  # the padded last chunk
    data = bytearray(chunk.read_bytes())
    if harm == "delete":
        chunk.unlink()
    else:
        if harm == "flip":
            data[7] ^= 0x10
        chunk.write_bytes(bytes(data[:-1] if harm == "truncate" else data + b"\0" if harm == "append" else data))
    array = tokens_of(path)
    ours = damage_of(lambda: ChunkFiles.of(array).read_into(15, 20, np.empty((5, 5, 4), np.float16)))
    assert ours == damage_of(lambda: tokens_of(path)[15:20])
    reason = "is missing (no file" if harm == "delete" else "fails its crc32c checksum"
    assert f"chunk (6, 0, 0) of array 'train/tokens' (rows 18:20) {reason}" in ours


def test_mapped_rows_reuse_the_kept_map_and_still_check_every_read(tmp_path):
    path = store(tmp_path / "a.zarr")
    files, maps = ChunkFiles.of(tokens_of(path)), MappedFiles()
    first, again = files.map_rows(0, 3, maps)[0], files.map_rows(0, 3, maps)[0]
    assert np.shares_memory(first, again)  # one map, not two
    assert not np.shares_memory(files.map_rows(0, 3)[0], first)  # no maps given: a map of its own
    np.testing.assert_array_equal(again, tokens_of(path)[0:3])
    with open(Path(path) / "train/tokens/c/0/0/0", "r+b") as chunk:  # altered in place after it was checked
        chunk.seek(9)
        byte = chunk.read(1)
        chunk.seek(9)
        chunk.write(bytes([byte[0] ^ 0x01]))
    message = damage_of(lambda: files.map_rows(0, 3, maps))
    assert "chunk (0, 0, 0) of array 'train/tokens' (rows 0:3) fails its crc32c checksum" in message


def test_a_replaced_or_deleted_chunk_file_is_not_served_from_its_kept_map(tmp_path):
    path, other = store(tmp_path / "a.zarr"), store(tmp_path / "b.zarr")
    tokens = zarr.open_group(other, mode="r+")["train/tokens"]  # the other store's rows 0:3 made different
    tokens[0:3] = -tokens[0:3] - 1
    files, maps = ChunkFiles.of(tokens_of(path)), MappedFiles()
    before = files.map_rows(0, 3, maps)[0].copy()
    os.replace(Path(other) / "train/tokens/c/0/0/0", Path(path) / "train/tokens/c/0/0/0")
    replaced = files.map_rows(0, 3, maps)[0]
    np.testing.assert_array_equal(replaced, -before - 1)
    (Path(path) / "train/tokens/c/0/0/0").unlink()
    missing = damage_of(lambda: files.map_rows(0, 3, maps))
    assert "chunk (0, 0, 0) of array 'train/tokens' (rows 0:3) is missing" in missing


def test_mapped_files_keep_the_most_recently_used_within_their_bounds(tmp_path):
    paths = []
    for i, size in enumerate([10, 10, 10, 30]):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(bytes(range(i, i + size)))
    by_count = MappedFiles(max_maps=2, max_bytes=1000)
    for path in [paths[0], paths[1], paths[0], paths[2]]:  # f1 is now the least recently used
        by_count.bytes(path)
    assert by_count.paths == [str(paths[0]), str(paths[2])]
    kept = by_count.bytes(paths[2])
    assert np.shares_memory(kept, by_count.bytes(paths[2])) and kept.tobytes() == bytes(range(2, 12))
    by_size = MappedFiles(max_maps=10, max_bytes=25)
    for path in paths[:3]:
        by_size.bytes(path)
    assert by_size.paths == [str(paths[1]), str(paths[2])]
    big = by_size.bytes(paths[3])  # over max_bytes alone: served, not kept
    assert big.tobytes() == bytes(range(3, 33)) and by_size.paths == [str(paths[1]), str(paths[2])]
    with pytest.raises(FileNotFoundError):
        by_size.bytes(tmp_path / "none")
