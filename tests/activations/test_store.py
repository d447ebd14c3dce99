"""Store writing: chunk-aligned writes, atomic publish, refusing incomplete stores."""

import numpy as np
import pytest
import zarr

from usae.activations.store import PROTOCOL, ChunkWriter, atomic_store, base_attrs, create_array, open_store


def test_chunk_writer_round_trips_any_batch_sizes(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    array = create_array(group, "x", (23, 3, 2), dtype="float16", chunk_rows=5)
    data = np.arange(23 * 6, dtype=np.float16).reshape(23, 3, 2)
    writer = ChunkWriter(array)
    for lo, hi in [(0, 3), (3, 4), (4, 15), (15, 23)]:
        writer.write(data[lo:hi])
    writer.close()
    np.testing.assert_array_equal(array[:], data)
    assert array.chunks == (5, 3, 2)


def test_chunk_writer_rejects_wrong_shapes_and_short_writes(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    writer = ChunkWriter(create_array(group, "x", (4, 2), dtype="float32", chunk_rows=2))
    with pytest.raises(ValueError, match="does not fit"):
        writer.write(np.zeros((1, 3), np.float32))
    writer.write(np.zeros((3, 2), np.float32))
    with pytest.raises(RuntimeError, match="wrote 3 rows into an array of 4"):
        writer.close()


@pytest.mark.parametrize("codec", ["none", "zstd", "blosc-lz4"])
def test_codecs_round_trip(tmp_path, codec):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    array = create_array(group, "x", (8, 4), dtype="float16", chunk_rows=4, compressor=codec)
    data = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float16)
    array[:] = data
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "g.zarr")["x"][:], data)


def test_atomic_store_publishes_complete_store(tmp_path):
    path = tmp_path / "s.zarr"
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(model="m"))
        group.create_array("a", data=np.arange(3))
        assert not path.exists()
    store = open_store(path)
    assert store.attrs["complete"] is True and store.attrs["protocol"] == PROTOCOL
    np.testing.assert_array_equal(store["a"][:], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_failed_write_leaves_previous_store_untouched(tmp_path):
    path = tmp_path / "s.zarr"
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(version=1))
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_store(path) as group:
            group.attrs.update(base_attrs(version=2))
            raise RuntimeError("boom")
    assert open_store(path).attrs["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_open_store_refuses_missing_foreign_and_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_store(tmp_path / "nope.zarr")
    foreign = zarr.open_group(tmp_path / "foreign.zarr", mode="w")
    foreign.attrs["protocol"] = "other/9"
    with pytest.raises(ValueError, match="protocol 'other/9'"):
        open_store(tmp_path / "foreign.zarr")
    partial = zarr.open_group(tmp_path / "partial.zarr", mode="w")
    partial.attrs.update(base_attrs())
    with pytest.raises(ValueError, match="incomplete"):
        open_store(tmp_path / "partial.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(ValueError):
        open_store(tmp_path / "junk.zarr")


def test_stores_record_code_and_stage_versions_and_completeness(tmp_path):
    from usae import STAGE_VERSIONS, __version__

    with atomic_store(tmp_path / "s.zarr") as group:
        group.attrs.update(base_attrs(stage="prepare", manifest_hash="f" * 64))
        assert group.attrs["complete"] is False  # not complete while being written
    attrs = open_store(tmp_path / "s.zarr").attrs.asdict()
    assert attrs["usae_version"] == __version__ and attrs["stage_version"] == STAGE_VERSIONS["prepare"]
    assert attrs["complete"] is True and attrs["manifest_hash"] == "f" * 64


def test_temporary_stores_of_killed_attempts_are_removed(tmp_path):
    stale = tmp_path / ".s.zarr.tmp-999999"  # a SIGKILLed job cannot clean up after itself
    (stale / "tokens").mkdir(parents=True)
    (stale / "tokens" / "c0").write_bytes(b"\0" * 1024)
    other = tmp_path / ".t.zarr.tmp-999999"  # another store's: not ours to remove
    other.mkdir()
    with atomic_store(tmp_path / "s.zarr") as group:
        group.attrs.update(base_attrs(version=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.zarr.tmp-999999", "s.zarr"]
