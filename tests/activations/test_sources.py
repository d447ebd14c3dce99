"""Token sources: aligned usae stores (checked to describe the same images) and foreign arrays."""

import numpy as np
import pytest
import zarr

from usae.activations.sources import NPY_CHUNK_BYTES, TokenSource, check_finite, open_aligned, open_arrays
from usae.activations.store import atomic_store, base_attrs, create_array

N_ROWS, TOKENS = 10, 4


def planted(n_rows, tokens, d, offset=0.0, dtype=np.float16):
    """Row r, token t holds (r, t, r, r, ...) + offset: every value names its position."""
    out = np.empty((n_rows, tokens, d), dtype=np.float32)
    out[:] = np.arange(n_rows)[:, None, None]
    out[:, :, 1] = np.arange(tokens)[None, :]
    return (out + offset).astype(dtype)


def write_aligned(path, d=3, *, n_train=N_ROWS, n_val=3, offset=0.0, chunk_rows=3, manifest_hash="abc123",
                  grid=(2, 2), rows=None, valid=None):
    """An aligned store like `prepare` writes (docs/stores.md), with planted tokens."""
    rows = np.arange(n_train) * 2 if rows is None else np.asarray(rows)
    valid = np.ones(n_train, bool) if valid is None else np.asarray(valid)
    splits = {"train": (planted(n_train, TOKENS, d, offset), rows, valid),
              "val": (planted(n_val, TOKENS, d, offset), np.arange(n_val) * 2 + 1, np.ones(n_val, bool))}
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(stage="prepare", manifest_hash=manifest_hash, grid=list(grid), d_model=d,
                                      standardization={"kind": "scalar", "mean": 0.0, "std": 1.0}))
        for split, (tokens, split_rows, split_valid) in splits.items():
            sub = group.create_group(split)
            create_array(sub, "tokens", tokens.shape, dtype="float16", chunk_rows=chunk_rows)[:] = tokens
            sub.create_array("rows", data=split_rows.astype(np.int64))
            sub.create_array("valid", data=split_valid)
    return path


def test_open_aligned_exposes_layout_and_reads_rows(tmp_path):
    valid = np.ones(N_ROWS, bool)
    valid[[2, 7]] = False
    paths = {"a": write_aligned(tmp_path / "a.zarr", 3, valid=valid),
             "b": write_aligned(tmp_path / "b.zarr", 5, offset=0.5, chunk_rows=4)}
    sources = open_aligned(paths)
    a, b = sources["a"], sources["b"]
    assert (a.name, a.n_rows, a.tokens_per_row, a.d_model, a.chunk_rows) == ("a", N_ROWS, TOKENS, 3, 3)
    assert (b.d_model, b.chunk_rows, b.dtype) == (5, 4, np.float16)
    np.testing.assert_array_equal(a.valid, valid)
    assert b.valid.all()
    assert a.attrs["standardization"]["kind"] == "scalar" and a.attrs["manifest_hash"] == "abc123"
    np.testing.assert_array_equal(a.rows, np.arange(N_ROWS) * 2)
    block = b.read(3, 7)
    assert block.dtype == np.float16 and block.shape == (4, TOKENS, 5)
    np.testing.assert_array_equal(block, planted(N_ROWS, TOKENS, 5, 0.5)[3:7])
    with pytest.raises(IndexError):
        a.read(8, 11)
    val = open_aligned(paths, split="val")
    assert val["a"].n_rows == 3
    np.testing.assert_array_equal(val["a"].rows, [1, 3, 5])


def test_open_aligned_refuses_unknown_split_missing_and_incomplete_stores(tmp_path):
    path = write_aligned(tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        open_aligned({"a": path}, split="test")
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        open_aligned({"a": path, "b": tmp_path / "nope.zarr"})
    partial = zarr.open_group(tmp_path / "partial.zarr", mode="w")
    partial.attrs.update(base_attrs(manifest_hash="abc123", grid=[2, 2]))
    with pytest.raises(ValueError, match="incomplete"):
        open_aligned({"a": path, "b": tmp_path / "partial.zarr"})
    with atomic_store(tmp_path / "part.zarr") as group:  # an extraction part, not an aligned store
        group.attrs.update(base_attrs(stage="extract", manifest_hash="abc123"))
    with pytest.raises(ValueError, match=r"part \(.*part.zarr\) is not an aligned store"):
        open_aligned({"part": tmp_path / "part.zarr"})


@pytest.mark.parametrize("change, message", [
    ({"manifest_hash": "zzz999"}, r"differ in manifest_hash: 'abc123' != 'zzz999'"),
    ({"grid": (1, 4)}, r"differ in grid: \[2, 2\] != \[1, 4\]"),
    ({"n_train": N_ROWS + 1}, r"differ in length of split 'train': 10 != 11 rows"),
    ({"rows": np.r_[np.arange(N_ROWS - 1) * 2, 99]}, r"differ in train/rows at 1 positions .*position 9, "
                                                     r"manifest index 18 != 99"),
])
def test_open_aligned_refuses_stores_of_other_images(tmp_path, change, message):
    paths = {"dino": write_aligned(tmp_path / "dino.zarr"), "clip": write_aligned(tmp_path / "clip.zarr", **change)}
    with pytest.raises(ValueError, match=message) as err:
        open_aligned(paths)
    assert "dino" in str(err.value) and "clip.zarr" in str(err.value)


def test_open_arrays_reads_zarr_arrays_groups_and_npy(tmp_path):
    data = planted(N_ROWS, TOKENS, 6, dtype=np.float32)
    zarr.create_array(store=tmp_path / "arr.zarr", data=data, chunks=(4, TOKENS, 6))
    zarr.open_group(tmp_path / "grp.zarr", mode="w").create_array("acts", data=data[..., :2], chunks=(5, TOKENS, 2))
    np.save(tmp_path / "x.npy", data.astype(np.float16))
    sources = open_arrays({"arr": tmp_path / "arr.zarr", "grp": tmp_path / "grp.zarr", "npy": tmp_path / "x.npy"})
    assert [s.chunk_rows for s in sources.values()] == [4, 5, N_ROWS]  # the .npy is far below 4 MB
    assert [s.d_model for s in sources.values()] == [6, 2, 6]
    assert all(s.valid is None and s.tokens_per_row == TOKENS for s in sources.values())
    np.testing.assert_array_equal(sources["arr"].read(2, 9), data[2:9])
    np.testing.assert_array_equal(sources["grp"].read(0, 3), data[:3, :, :2])
    block = sources["npy"].read(5, 10)
    assert block.dtype == np.float16 and type(block) is np.ndarray and block.flags.writeable  # a copy, not a map
    np.testing.assert_array_equal(block, data[5:].astype(np.float16))


def test_npy_chunk_rows_are_about_4_mb(tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((300, 16, 512), np.float16))  # 16 KiB per row
    source = open_arrays({"big": tmp_path / "big.npy"})["big"]
    assert source.chunk_rows == NPY_CHUNK_BYTES // (16 * 512 * 2) == 256


def test_two_dimensional_arrays_are_one_token_per_row(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    source = open_arrays({"flat": tmp_path / "flat.npy"})["flat"]
    assert source.shape == (6, 1, 2)
    np.testing.assert_array_equal(source.read(1, 3), [[[2, 3]], [[4, 5]]])


def test_open_arrays_refuses_mismatched_shapes_naming_culprits(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 4, 3), np.float16))
    np.save(tmp_path / "b.npy", np.zeros((10, 4, 5), np.float16))
    np.save(tmp_path / "c.npy", np.zeros((12, 4, 3), np.float16))
    np.save(tmp_path / "d.npy", np.zeros((10, 2, 3), np.float16))
    paths = {k: tmp_path / f"{k}.npy" for k in "abcd"}
    with pytest.raises(ValueError, match=r"c, d differ from a; shapes: a \(10, 4, 3\).*c \(12, 4, 3\).*d \(10, 2, 3\)"):
        open_arrays(paths)
    assert set(open_arrays({k: paths[k] for k in "ab"})) == {"a", "b"}  # widths may differ


def test_open_arrays_refuses_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"a: .*a.npy; b: .*b.zarr"):
        open_arrays({"a": tmp_path / "a.npy", "b": tmp_path / "b.zarr"})
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"shape \(5,\); expected \(rows, tokens, dim\) or \(rows, dim\)"):
        open_arrays({"v": tmp_path / "v.npy"})
    np.save(tmp_path / "i.npy", np.zeros((5, 2), np.int64))
    with pytest.raises(ValueError, match="dtype int64"):
        open_arrays({"i": tmp_path / "i.npy"})
    group = zarr.open_group(tmp_path / "two.zarr", mode="w")
    group.create_array("x", data=np.zeros((3, 2), np.float32))
    group.create_array("y", data=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"exactly one array, it holds 2 \(\['x', 'y'\]\)"):
        open_arrays({"two": tmp_path / "two.zarr"})
    write_aligned(tmp_path / "aligned.zarr")
    with pytest.raises(ValueError, match="use open_aligned"):
        open_arrays({"aligned": tmp_path / "aligned.zarr"})
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="not a readable Zarr"):
        open_arrays({"junk": tmp_path / "junk"})
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="expected a .npy file"):
        open_arrays({"t": tmp_path / "x.txt"})


def test_token_source_checks_its_valid_mask():
    with pytest.raises(ValueError, match=r"valid mask of shape \(3,\) for 4 rows"):
        TokenSource("m", np.zeros((4, 2, 3), np.float32), chunk_rows=2, valid=np.ones(3, bool))
    source = TokenSource("m", np.zeros((4, 2, 3), np.float32), chunk_rows=100)
    assert source.chunk_rows == 4 and "TokenSource('m'" in repr(source)


def test_read_into_writes_what_read_returns_for_stores_zarr_npy_and_2d(tmp_path):
    store = open_aligned({"s": write_aligned(tmp_path / "s.zarr")})["s"]
    z = zarr.create_array(tmp_path / "z.zarr", shape=(7, 5), chunks=(2, 5), dtype="float32")
    z[:] = np.arange(35, dtype=np.float32).reshape(7, 5)
    np.save(tmp_path / "n.npy", planted(6, 2, 3, dtype=np.float32))
    sources = [store, TokenSource("z", zarr.open_array(tmp_path / "z.zarr", mode="r"), chunk_rows=2),
               TokenSource("n", np.load(tmp_path / "n.npy", mmap_mode="r"), chunk_rows=2)]
    for source in sources:
        for start, stop in [(0, 2), (1, 4), (3, 3)]:
            out = np.full((stop - start, source.tokens_per_row, source.d_model), -1, source.dtype)
            source.read_into(start, stop, out)
            np.testing.assert_array_equal(out, source.read(start, stop))


def test_read_into_refuses_a_wrong_target_or_range(tmp_path):
    source = open_aligned({"s": write_aligned(tmp_path / "s.zarr")})["s"]
    with pytest.raises(ValueError, match=r"s: read_into needs an array of shape \(2, 4, 3\) and dtype float16, "
                                         r"got \(2, 4, 3\) float32"):
        source.read_into(0, 2, np.empty((2, TOKENS, 3), np.float32))
    with pytest.raises(ValueError, match="needs an array of shape"):
        source.read_into(0, 2, np.empty((3, TOKENS, 3), np.float16))
    with pytest.raises(IndexError, match=r"rows 8:11 outside 0:10"):
        source.read_into(8, 11, np.empty((3, TOKENS, 3), np.float16))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_finds_every_non_finite_value_and_passes_the_largest_finite(dtype, bad):
    source = TokenSource("m", np.zeros((6, 2, 3), dtype), chunk_rows=2, rows=np.arange(6) * 10)
    block = np.full((3, 2, 3), -np.finfo(dtype).max, dtype)
    block[0] = np.finfo(dtype).max
    block[1] = np.finfo(dtype).tiny / 2  # subnormal
    check_finite(source, block, 3)
    block[2, 1, 2] = bad
    with pytest.raises(ValueError, match=r"m: NaN or inf in 1 row\(s\) of rows 3:6 \(first: row 5, manifest index 50\)"):
        check_finite(source, block, 3)
    check_finite(source, block[:2], 3)
