"""An interrupted extraction job resumes after its committed chunks and ends with the same store.

Interruptions here are raised inside the job (fast, exact); tests/test_interruptions.py
kills real processes with signals.
"""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from usae.activations.extract import ImageDataset, extract_activations
from usae.activations.store import PROGRESS_FILE, open_store, partial_path
from usae.config import BackboneSpec, ExtractConfig, ManifestConfig
from usae.data.manifest import build_manifest, read_manifest

SPEC = BackboneSpec(key="tiny", name="vit_small_patch16_224", pretrained=False, image_size=32,
                    kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
CFG = ExtractConfig(n_parts=1, batch_size=2, num_workers=0, device="cpu", images_per_chunk=4)
N_IMAGES = 13


class Interrupted(BaseException):
    """Stands in for a kill: not an Exception, so nothing in the job catches it."""


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    path = tmp_path / "manifest.parquet"
    build_manifest(ManifestConfig(source="folder", path=str(folder)), path)
    return path


class LoadedImages(list):
    """Paths of the images each extraction decoded, in order; ``stop_at = k`` interrupts the
    job as it starts decoding its k-th image (all earlier batches have been computed)."""

    stop_at: int | None = None


@pytest.fixture
def loaded(monkeypatch):
    images = LoadedImages()
    real = ImageDataset.__getitem__

    def counted(self, i):
        if images.stop_at is not None and len(images) + 1 == images.stop_at:
            raise Interrupted
        images.append(self.paths[i])
        return real(self, i)

    monkeypatch.setattr(ImageDataset, "__getitem__", counted)
    return images


def arrays(path):
    store = open_store(path)
    names = ("final/patches", "final/prefix", "rows", "valid")
    return {name: store[name][:] for name in names}, store.attrs.asdict()


def assert_same_store(a, b):
    for name in a[0]:
        np.testing.assert_array_equal(a[0][name], b[0][name], err_msg=name)
    assert a[1]["failed"] == b[1]["failed"]


def test_a_resumed_job_computes_only_the_rest_and_equals_an_uninterrupted_one(manifest, tmp_path, loaded,
                                                                              caplog):
    whole = extract_activations(manifest, SPEC, CFG, 0, tmp_path / "whole.zarr")
    paths = read_manifest(manifest)["path"].tolist()
    assert loaded == paths and whole.n_images == N_IMAGES

    loaded.clear()
    loaded.stop_at = 7  # passes 1-3 done: rows 0-3 committed (one chunk), rows 4-5 still buffered
    out = tmp_path / "cut.zarr"
    with pytest.raises(Interrupted):
        extract_activations(manifest, SPEC, CFG, 0, out)
    assert not out.exists(), "an interrupted job must not publish its store"
    progress = json.loads((partial_path(out) / PROGRESS_FILE).read_text())
    assert progress["rows_done"] == 4

    loaded.clear()
    loaded.stop_at = None
    with caplog.at_level(logging.INFO):
        extract_activations(manifest, SPEC, CFG, 0, out)
    assert loaded == paths[4:], "only images 4..12 are computed again"
    assert "resuming a killed job at image 4 of 13" in caplog.text
    assert not partial_path(out).exists()
    resumed = arrays(out)
    assert_same_store(arrays(tmp_path / "whole.zarr"), resumed)
    assert resumed[1]["complete"] is True and resumed[1]["resumed_at"] == 4


def test_resume_restarts_on_the_batch_grid(manifest, tmp_path, loaded):
    cfg = ExtractConfig(n_parts=1, batch_size=3, num_workers=0, device="cpu", images_per_chunk=2)
    extract_activations(manifest, SPEC, cfg, 0, tmp_path / "whole.zarr")
    loaded.clear()
    loaded.stop_at = 10  # 9 images passed, 8 committed; batch and chunk grids meet every 6 images
    with pytest.raises(Interrupted):
        extract_activations(manifest, SPEC, cfg, 0, tmp_path / "cut.zarr")
    loaded.clear()
    loaded.stop_at = None
    extract_activations(manifest, SPEC, cfg, 0, tmp_path / "cut.zarr")
    assert loaded == read_manifest(manifest)["path"].tolist()[6:]
    assert_same_store(arrays(tmp_path / "whole.zarr"), arrays(tmp_path / "cut.zarr"))


def test_unreadable_images_found_before_the_kill_stay_flagged(manifest, tmp_path, loaded):
    victim = read_manifest(manifest)["path"].iloc[1]
    os.remove(victim)
    extract_activations(manifest, SPEC, CFG, 0, tmp_path / "whole.zarr")
    loaded.clear()
    loaded.stop_at = 9
    with pytest.raises(Interrupted):
        extract_activations(manifest, SPEC, CFG, 0, tmp_path / "cut.zarr")
    loaded.stop_at = None
    extract_activations(manifest, SPEC, CFG, 0, tmp_path / "cut.zarr")
    resumed = arrays(tmp_path / "cut.zarr")
    assert resumed[0]["valid"].tolist() == [True, False] + [True] * (N_IMAGES - 2)
    assert list(resumed[1]["failed"]) == [victim]
    assert_same_store(arrays(tmp_path / "whole.zarr"), resumed)


@pytest.mark.parametrize("damage", ["other_settings", "corrupt_progress"])
def test_a_partial_store_of_other_settings_or_damaged_is_started_afresh(manifest, tmp_path, loaded, caplog,
                                                                       damage):
    out = tmp_path / "cut.zarr"
    loaded.stop_at = 7
    with pytest.raises(Interrupted):
        extract_activations(manifest, SPEC, CFG, 0, out)
    loaded.clear()
    loaded.stop_at = None
    cfg = CFG
    if damage == "other_settings":
        cfg = ExtractConfig(n_parts=1, batch_size=2, num_workers=0, device="cpu", images_per_chunk=4,
                            keep_prefix=False)
    else:
        (partial_path(out) / PROGRESS_FILE).write_text('{"key": "abc", "rows_do')  # cut short by the kill
    with caplog.at_level(logging.INFO):
        extract_activations(manifest, SPEC, cfg, 0, out)
    assert len(loaded) == N_IMAGES
    assert "discarding" in caplog.text and str(partial_path(out)) in caplog.text
    assert open_store(out).attrs["resumed_at"] == 0
