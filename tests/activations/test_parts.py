"""Extraction parts deleted once their aligned store is written: only real extraction parts, whole, and only after
the aligned store and statistics are published."""

import json
import shutil

import pytest
import zarr
from real_stores import build

from usae.activations.parts import delete_extraction_parts
from usae.activations.prepare import prepare_activations
from usae.activations.store import atomic_store, base_attrs, open_store
from usae.config import PrepareConfig


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("parts"), "none")


@pytest.fixture
def stores(built, tmp_path):
    """A private copy of the built stores, free to delete."""
    root = tmp_path / "copy"
    shutil.copytree(built["root"], root)
    return {key: root / path.relative_to(built["root"]) for key, path in built.items()}


def test_deletes_a_real_extraction_part_whole_with_its_emptied_folders(stores):
    part = stores["part"]
    assert delete_extraction_parts([part]) == [part]
    assert not part.exists()
    assert not (stores["root"] / "acts" / "tiny").exists()  # <backbone> held only this part
    assert (stores["root"] / "acts").is_dir() and open_store(stores["aligned"]).attrs["complete"]


def test_is_idempotent(stores):
    assert delete_extraction_parts([stores["part"]]) == [stores["part"]]
    assert delete_extraction_parts([stores["part"]]) == []


def test_a_folder_holding_something_else_is_kept(stores):
    other = stores["part"].parent / "notes.txt"
    other.write_text("mine")
    delete_extraction_parts([stores["part"]])
    assert other.read_text() == "mine" and not stores["part"].exists()


@pytest.mark.parametrize("what, message", [
    ("aligned", "a store of stage 'prepare', not an extraction part"),
    ("folder", "not a finished usae store .* is not a readable Zarr group"),
    ("foreign", "not a finished usae store .*store protocol None"),
    ("manifest", "not a finished usae store .* is not a readable Zarr group"),
])
def test_refuses_anything_but_an_extraction_part_and_deletes_nothing(stores, what, message):
    foreign = stores["root"] / "foreign.zarr"
    zarr.open_group(foreign, mode="w").attrs["stage"] = "extract"
    folder = stores["root"] / "imgs"
    wrong = {"aligned": stores["aligned"], "folder": folder, "foreign": foreign, "manifest": stores["manifest"]}[what]
    with pytest.raises(ValueError, match=f"refusing to delete {wrong}: {message}"):
        delete_extraction_parts([stores["part"], wrong])
    assert stores["part"].exists() and wrong.exists()  # checked before anything is deleted
    assert open_store(stores["aligned"])  # still whole


def test_refuses_a_usae_store_of_any_other_stage(tmp_path):
    with atomic_store(tmp_path / "train.zarr") as group:
        group.attrs.update(base_attrs(stage="train"))
    with pytest.raises(ValueError, match="a store of stage 'train'"):
        delete_extraction_parts([tmp_path / "train.zarr"])


def test_prepare_deletes_its_parts_after_publishing_only_when_told(stores, tmp_path):
    cfg = PrepareConfig(grid=2, images_per_chunk=2)
    kept = tmp_path / "kept.zarr"
    prepare_activations([stores["part"]], stores["manifest"], cfg, kept, tmp_path / "kept.stats.json")
    assert stores["part"].exists()
    out, stats = tmp_path / "out.zarr", tmp_path / "out.stats.json"
    prepare_activations([stores["part"]], stores["manifest"], cfg, out, stats, keep_parts=False)
    assert not stores["part"].exists()
    assert json.loads(stats.read_text())["complete"] and open_store(out).attrs["complete"]
    assert (open_store(out)["val"]["tokens"][:] == open_store(kept)["val"]["tokens"][:]).all()


def test_a_failed_prepare_keeps_its_parts(stores, tmp_path):
    cfg = PrepareConfig(grid=8, images_per_chunk=2)  # finer than the part's 4 x 4 grid
    with pytest.raises(ValueError, match="larger than"):
        prepare_activations([stores["part"]], stores["manifest"], cfg, tmp_path / "o.zarr", tmp_path / "o.json",
                            keep_parts=False)
    assert open_store(stores["part"]).attrs["stage"] == "extract"


def test_parts_shared_with_other_layers_wait_for_their_last_preparation(stores, tmp_path):
    """Parts that hold several models' layers are deleted by whichever preparation finishes last."""
    cfg = PrepareConfig(grid=2, images_per_chunk=2)
    other = tmp_path / "other_layer.stats.json"  # the statistics the other layer's preparation publishes last
    prepare_activations([stores["part"]], stores["manifest"], cfg, tmp_path / "a.zarr", tmp_path / "a.json",
                        keep_parts=False, sharing=[other])
    assert stores["part"].exists() and open_store(tmp_path / "a.zarr").attrs["complete"]
    other.write_text("{}")
    prepare_activations([stores["part"]], stores["manifest"], cfg, tmp_path / "b.zarr", tmp_path / "b.json",
                        keep_parts=False, sharing=[tmp_path / "a.json"])
    assert not stores["part"].exists()
