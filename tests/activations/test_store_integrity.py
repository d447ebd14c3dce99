"""Damaged stores are never read silently: a missing chunk or a flipped bit fails the read, naming it.

The stores are real: an extraction part of a tiny random ViT over generated images, and
the aligned store `prepare` makes from it. Each test damages its own copy.
"""

import logging
import shutil
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from real_stores import N_IMAGES, SPEC, build

from usae.activations.integrity import DamagedStoreError, checksum_ok, chunk_key, crc32c
from usae.activations.loader import TokenLoader
from usae.activations.prepare import prepare_activations
from usae.activations.sources import open_aligned
from usae.activations.store import (PROTOCOL, ChunkWriter, atomic_store, base_attrs, create_array, open_store,
                                    write_array)
from usae.activations.verify import verify_store
from usae.cli import main
from usae.config import PrepareConfig


@pytest.fixture(autouse=True)
def restore_logging():
    """``usae.cli.main`` sets up logging on pytest's captured stderr; undo it for the tests after."""
    handlers, level, hook = logging.root.handlers[:], logging.root.level, sys.excepthook
    yield
    logging.root.handlers[:], sys.excepthook = handlers, hook
    logging.root.setLevel(level)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return {codec: build(tmp_path_factory.mktemp(f"stores-{codec}"), codec) for codec in ("none", "zstd")}


@pytest.fixture
def stores(built, tmp_path):
    """A private copy of the uncompressed stores, free to damage."""
    root = tmp_path / "copy"
    shutil.copytree(built["none"]["root"], root)
    return {k: root / Path(v).relative_to(built["none"]["root"]) for k, v in built["none"].items()}


def flip_bit(path: Path, byte: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def first_batches(store: Path, split: str = "train") -> list:
    loader = TokenLoader(open_aligned({"tiny": store}, split=split), batch_tokens=4, buffer_tokens=64, seed=0)
    return list(islice(loader.batches(), loader.steps_per_epoch))


def test_clean_stores_read_and_verify(stores, capsys):
    assert len(first_batches(stores["aligned"])) > 0
    assert verify_store(stores["part"]) == [] and verify_store(stores["aligned"]) == []
    assert main(["verify", str(stores["part"]), str(stores["aligned"])]) == 0
    out = capsys.readouterr().out
    assert f"{stores['aligned']}: ok" in out and "verified 2 store(s): 2 sound, 0 damaged" in out


def test_every_array_ends_with_a_checksum_and_every_chunk_is_on_disk(stores):
    group = zarr.open_group(stores["aligned"], mode="r")
    assert group.attrs["protocol"] == PROTOCOL == "usae-store/2"
    for name, array in group.members(max_depth=None):
        if isinstance(array, zarr.Array):
            assert array.metadata.codecs[-1].to_dict() == {"name": "crc32c"}, name
            n_files = sum(1 for f in (stores["aligned"] / name / "c").rglob("*") if f.is_file())
            assert n_files == int(np.prod(array.cdata_shape)), name


def test_a_chunk_of_zeros_is_still_written(tmp_path):
    # Zarr skips chunks equal to the fill value by default; ours must exist, or they would read as "missing".
    path = tmp_path / "s.zarr"
    with atomic_store(path) as group:
        group.attrs.update(base_attrs(stage="prepare"))
        writer = ChunkWriter(create_array(group, "x", (4, 3), dtype="float16", chunk_rows=2))
        writer.write(np.zeros((4, 3), np.float16))
        writer.close()
        write_array(group, "valid", np.zeros(4, bool))
    assert sorted(p.name for p in (path / "x" / "c").iterdir()) == ["0", "1"]
    store = open_store(path)
    assert not store["x"][:].any() and not store["valid"][:].any()


def test_missing_chunk_of_an_aligned_store_stops_training(stores):
    (stores["aligned"] / "train" / "tokens" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(DamagedStoreError) as caught:
        first_batches(stores["aligned"])
    message = str(caught.value)
    assert str(stores["aligned"]) in message and "array 'train/tokens'" in message
    assert "chunk (1, 0, 0)" in message and "(rows 2:4)" in message and "is missing" in message
    assert f"--forcerun {stores['aligned']}/zarr.json" in message and "usae prepare -c config.yaml --model tiny" in message
    assert (caught.value.array, caught.value.chunk) == ("train/tokens", (1, 0, 0))


def test_missing_chunk_stops_evaluation_reads_and_opening(stores):
    source = open_aligned({"tiny": stores["aligned"]}, split="val")["tiny"]
    (stores["aligned"] / "val" / "tokens" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(DamagedStoreError, match=r"chunk \(0, 0, 0\) of array 'val/tokens'"):
        source.read(0, source.n_rows)
    (stores["aligned"] / "train" / "valid" / "c" / "0").unlink()
    with pytest.raises(DamagedStoreError, match=r"chunk \(0,\) of array 'train/valid'"):
        open_aligned({"tiny": stores["aligned"]})


def test_report_warns_of_a_damaged_valid_array_instead_of_listing_every_image(stores, caplog):
    from usae.report.build import excluded_images

    (stores["aligned"] / "train" / "valid" / "c" / "0").unlink()
    with caplog.at_level(logging.WARNING, logger="usae.report.build"):
        found = excluded_images(stores["manifest"], {"tiny": stores["aligned"]})
    assert found["n_excluded"] == 0  # read as zeros, `valid` would have excluded every training image
    assert "chunk (0,) of array 'train/valid'" in caplog.text and str(stores["aligned"]) in caplog.text


def test_missing_chunk_of_an_extraction_part_stops_prepare(stores, tmp_path):
    (stores["part"] / "final" / "patches" / "c" / "2" / "0" / "0").unlink()
    with pytest.raises(DamagedStoreError) as caught:
        prepare_activations([stores["part"]], stores["manifest"], PrepareConfig(grid=2, images_per_chunk=2),
                            tmp_path / "again.zarr", tmp_path / "again.stats.json")
    message = str(caught.value)
    assert str(stores["part"]) in message and "chunk (2, 0, 0) of array 'final/patches'" in message
    assert "rerun its stage, extract" in message and "usae extract -c config.yaml --model tiny --part 0" in message
    assert not (tmp_path / "again.zarr").exists()


def test_flipped_exponent_bit_is_caught_by_the_checksum(stores):
    chunk = stores["aligned"] / "train" / "tokens" / "c" / "2" / "0" / "0"
    values = np.frombuffer(chunk.read_bytes()[:-4], np.float16)
    k = int(np.flatnonzero(np.abs(values) > 0.1)[0])
    flip_bit(chunk, 2 * k + 1, 2)  # float16 bit 10 = the lowest exponent bit: the value doubles or halves
    altered = np.frombuffer(chunk.read_bytes()[:-4], np.float16)
    assert np.isfinite(altered).all() and abs(altered[k]) in (2 * abs(values[k]), abs(values[k]) / 2)
    with pytest.raises(DamagedStoreError) as caught:
        first_batches(stores["aligned"])
    message = str(caught.value)
    assert str(stores["aligned"]) in message and "chunk (2, 0, 0) of array 'train/tokens'" in message
    assert "fails its crc32c checksum" in message and "rerun its stage, prepare" in message


def test_truncated_chunk_fails_its_checksum(stores):
    chunk = stores["part"] / "rows" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-9])
    with pytest.raises(DamagedStoreError, match=r"chunk \(0,\) of array 'rows'.*fails its crc32c checksum"):
        open_store(stores["part"])["rows"][:]


def test_flipped_bit_in_compressed_chunks_is_caught_before_decompression(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built["zstd"]["root"], root)
    part = root / Path(built["zstd"]["part"]).relative_to(built["zstd"]["root"])
    chunk = part / "final" / "patches" / "c" / "1" / "0" / "0"
    flip_bit(chunk, len(chunk.read_bytes()) // 2, 6)
    with pytest.raises(DamagedStoreError, match=r"chunk \(1, 0, 0\) of array 'final/patches'.*checksum"):
        open_store(part)["final/patches"][:]
    assert verify_store(built["zstd"]["aligned"]) == []


def test_verify_reports_every_damaged_chunk_and_exits_1(stores, capsys):
    (stores["aligned"] / "train" / "tokens" / "c" / "1" / "0" / "0").unlink()
    flip_bit(stores["aligned"] / "val" / "tokens" / "c" / "0" / "0" / "0", 5, 3)
    problems = verify_store(stores["aligned"])
    assert len(problems) == 3, problems
    assert "chunk (1, 0, 0) of array 'train/tokens' (rows 2:4) is missing" in problems[0]
    assert "chunk (0, 0, 0) of array 'val/tokens' (rows 0:2) fails its crc32c checksum" in problems[1]
    assert "rerun its stage, prepare" in problems[2]
    assert main(["verify", str(stores["part"]), str(stores["aligned"])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "verified 2 store(s): 1 sound, 1 damaged"
    assert sum("array 'train/tokens'" in line for line in out) == 1 and f"{stores['part']}: ok" in out


def test_verify_checks_the_layout_against_the_spec(stores):
    group = zarr.open_group(stores["part"], mode="r+")
    group.attrs["n_images"] = N_IMAGES + 1
    del group["rows"]
    problems = verify_store(stores["part"])
    assert any(f"array 'final/patches' has shape ({N_IMAGES}, 16, 32), expected ({N_IMAGES + 1}, 16, 32)" in p
               for p in problems), problems
    assert any("array 'rows' is missing" in p for p in problems)
    foreign = zarr.open_group(stores["root"] / "foreign.zarr", mode="w")
    foreign.create_array("x", data=np.ones(3))
    assert "store protocol None" in verify_store(stores["root"] / "foreign.zarr")[0]
    assert "does not exist" in verify_store(stores["root"] / "nope.zarr")[0]


def test_verify_a_config_checks_its_stores(stores, tmp_path, capsys):
    results = tmp_path / "results"
    (results / "synthetic").mkdir(parents=True)
    shutil.copytree(stores["root"] / "acts", results / "synthetic" / "acts")
    shutil.copytree(stores["root"] / "aligned", results / "synthetic" / "aligned")
    config = write_verify_config(tmp_path, results, keep=True)
    assert main(["verify", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "part1.zarr: absent (not built yet)" in out and "verified 2 store(s): 2 sound, 0 damaged" in out
    (results / "synthetic" / "acts" / "tiny" / "part0.zarr" / "valid" / "c" / "0").unlink()
    assert main(["verify", "-c", str(config)]) == 1
    assert "chunk (0,) of array 'valid'" in capsys.readouterr().out


def test_verify_a_config_does_not_miss_parts_deleted_by_design(stores, tmp_path, capsys):
    """extract.keep false: parts absent beside their aligned store were deleted, not missed; any left are checked."""
    results = tmp_path / "results"
    (results / "synthetic").mkdir(parents=True)
    shutil.copytree(stores["root"] / "aligned", results / "synthetic" / "aligned")
    config = write_verify_config(tmp_path, results, keep=False)
    assert main(["verify", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "absent" not in out and "verified 1 store(s): 1 sound, 0 damaged" in out
    assert "final.zarr: extraction parts deleted once it was written (extract.keep: false)" in out
    shutil.copytree(stores["root"] / "acts", results / "synthetic" / "acts")  # part0 left by an interrupted prepare
    assert main(["verify", "-c", str(config)]) == 0
    assert "verified 2 store(s): 2 sound, 0 damaged" in capsys.readouterr().out
    shutil.rmtree(results / "synthetic" / "aligned")  # before preparation, absent parts are not built yet
    assert main(["verify", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "part1.zarr: absent (not built yet)" in out and "final.zarr: absent (not built yet)" in out


def write_verify_config(tmp_path, results, *, keep):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"results": str(results), "dataset": {"name": "synthetic"},
                                      "extract": {"n_parts": 2, "keep": keep},
                                      "models": {"tiny": {"name": SPEC.name, "image_size": 64}}}))
    return config


def test_stores_of_the_previous_protocol_are_refused_with_the_stage_to_rerun(stores):
    group = zarr.open_group(stores["aligned"], mode="r+")
    group.attrs["protocol"] = "usae-store/1"
    with pytest.raises(ValueError, match="protocol 'usae-store/1', expected 'usae-store/2'; rerun its stage, prepare"):
        open_aligned({"tiny": stores["aligned"]})


def test_chunk_keys_and_checksums():
    assert chunk_key("train/tokens/c/3/0/0") == ("train/tokens", (3, 0, 0))
    assert chunk_key("c/1") == ("", (1,)) and chunk_key("valid/c/0") == ("valid", (0,))
    assert chunk_key("train/tokens/zarr.json") is None and chunk_key("c/zarr.json") is None
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720, iSCSI)
    assert crc32c(np.frombuffer(b"123456789", np.uint8)) == 0xE3069283  # numpy arrays are read in place

    data = b"activations"
    good = data + crc32c(data).to_bytes(4, "little")
    assert checksum_ok(good) and not checksum_ok(good[:-1] + bytes([good[-1] ^ 1])) and not checksum_ok(b"ab")
