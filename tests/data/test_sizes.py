"""Data sizes checked before the first expensive job: splits from the config or an existing manifest."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from usae import paths
from usae.cli import main
from usae.config import load_config
from usae.data.manifest import build_manifest
from usae.data.sizes import SplitCounts, check_data_sizes, split_counts

MODELS = {"m": {"name": "vit_small_patch16_224", "pretrained": False}}


def _config(tmp_path, dataset=None, **sections):
    return load_config({"results": str(tmp_path / "results"), "models": MODELS, "dataset": dataset or {},
                        **sections})


def _refused(cfg) -> str:
    with pytest.raises(ValueError) as caught:
        check_data_sizes(cfg)
    return str(caught.value)


def test_the_generated_sets_splits_are_known_from_the_config_and_match_its_manifest(tmp_path):
    cfg = _config(tmp_path, {"synthetic": {"n_images": 12, "image_size": 32}, "val_fraction": 0.3})
    before = split_counts(cfg)
    assert before == SplitCounts(11, 1)
    table = build_manifest(cfg.dataset, paths.manifest(cfg), workers=1)
    assert (table["split"] == "train").sum() == before.n_train and (table["split"] == "val").sum() == before.n_val
    assert split_counts(cfg) == SplitCounts(11, 1, tmp_path / "results/synthetic/manifest.parquet")


@pytest.mark.parametrize(("dataset", "message"), [
    ({"synthetic": {"n_images": 1}},
     "dataset.synthetic.n_images = 1: at least 2 images are needed, one to train on and one to validate on"),
    ({"val_fraction": 0.0},
     "dataset.val_fraction = 0.0 leaves no validation image among the 640 images (split by a seeded hash of each "
     "id); evaluation needs at least one: raise dataset.val_fraction"),
    ({"val_fraction": 1.0},
     "dataset.val_fraction = 1.0 leaves no training image among the 640 images (split by a seeded hash of each id); "
     "training needs at least one: lower dataset.val_fraction"),
])
def test_a_missing_split_is_refused_before_any_job(tmp_path, dataset, message):
    cfg = _config(tmp_path, {"synthetic": {"n_images": 640}, **dataset})
    assert _refused(cfg) == message


def test_a_batch_larger_than_the_training_tokens_names_the_numbers(tmp_path):
    cfg = _config(tmp_path, {"synthetic": {"n_images": 640}}, prepare={"grid": 7},
                  train={"batch_tokens": 50_000, "buffer_tokens": 100_000})
    assert _refused(cfg) == (
        "train.batch_tokens = 50000 is more than the 25,235 training tokens (515 training images of 640 x 49 tokens "
        "at prepare.grid = 7); lower it to at most 25235")
    fits = {"synthetic": {"n_images": 640}}, {"grid": 7}, {"batch_tokens": 25_235, "buffer_tokens": 100_000}
    assert check_data_sizes(_config(tmp_path, fits[0], prepare=fits[1], train=fits[2])) == SplitCounts(515, 125)
    runs = {"small": {}, "big": {"train": {"batch_tokens": 30_000}}}  # a run's own batch is named under the run
    cfg = _config(tmp_path, fits[0], prepare=fits[1], train=fits[2], runs=runs)
    assert _refused(cfg).startswith("runs.big.train.batch_tokens = 30000 is more than the 25,235 training tokens")


def _folder(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name)


def test_an_existing_manifest_of_the_same_settings_gives_the_counts(tmp_path):
    """A folder with only train/ images: the source's split wins, whatever val_fraction says."""
    _folder(tmp_path / "imgs", [f"train/cat/{i}.png" for i in range(3)])
    cfg = _config(tmp_path, {"name": "mine", "source": "folder", "path": str(tmp_path / "imgs")})
    assert split_counts(cfg) is None and check_data_sizes(cfg) is None  # not known before the manifest
    build_manifest(cfg.dataset, paths.manifest(cfg), workers=1)
    manifest = tmp_path / "results/mine/manifest.parquet"
    assert _refused(cfg) == (
        f"the manifest {manifest} has no validation image among its 3 usable images (the source's own split, else "
        "dataset.val_fraction = 0.2); evaluation needs at least one: raise dataset.val_fraction or add validation "
        "images")
    other = _config(tmp_path, {"name": "mine", "source": "folder", "path": str(tmp_path / "imgs"), "seed": 1})
    assert split_counts(other) is None  # built with other settings: it will be rebuilt, so it says nothing


def test_the_usae_command_checks_the_data_sizes_first(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"results": str(tmp_path / "results"), "models": MODELS,
                                      "dataset": {"val_fraction": 1.0, "synthetic": {"n_images": 4}}}))
    assert main(["manifest", "-c", str(config)]) == 2
    assert ("dataset.val_fraction = 1.0 leaves no training image among the 4 images" in capsys.readouterr().err)
    assert not (tmp_path / "results").exists()
