"""What the data's size allows, checked before the first expensive job.

Without this check, an empty split or a batch larger than the data is only found after
extraction (preparation finds no training image) or after a whole training run
(evaluation finds no validation image). The number of images in each split can be known
sooner. For the generated set, the config gives the image ids, and the split is a seeded
hash of each id. For other sources, the manifest gives the counts once it exists and was
built with the same ``dataset`` settings. After preparation, every image has
``prepare.grid ** 2`` tokens. ``snakemake`` (in the driver) and the ``usae`` command run
this check when they start, as they do :func:`usae.backbones.geometry.check_geometry`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from usae import paths
from usae.config import PipelineConfig, to_dict
from usae.data.manifest import SETTINGS_ATTR, hashed_split, read_manifest, usable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitCounts:
    """Usable images of each split, and the manifest they were counted in (None: the config)."""

    n_train: int
    n_val: int
    manifest: Path | None = None

    @property
    def n_images(self) -> int:
        return self.n_train + self.n_val


def split_counts(cfg: PipelineConfig) -> SplitCounts | None:
    """The split sizes known before extraction, or None while they are not.

    A manifest counts only if it was built with the current ``dataset`` settings: one built
    with others will be rebuilt, and it may have other splits.
    """
    manifest = Path(paths.manifest(cfg))
    if manifest.is_file():
        table = read_manifest(manifest)
        if table.attrs.get(SETTINGS_ATTR) == to_dict(cfg.dataset):
            counts = usable(table)["split"].value_counts()
            return SplitCounts(int(counts.get("train", 0)), int(counts.get("val", 0)), manifest)
    if cfg.dataset.source == "synthetic":
        from usae.planted.images import image_ids

        splits = [hashed_split(image_id, cfg.dataset) for image_id in image_ids(cfg.dataset.synthetic.n_images)]
        return SplitCounts(splits.count("train"), splits.count("val"))
    return None


def check_data_sizes(cfg: PipelineConfig) -> SplitCounts | None:
    """Refuse a config whose data cannot give every run a training batch and a validation split.

    Returns:
        The split sizes, or None when they are not known yet (no manifest of the current
        settings; the manifest job builds it, and the next start checks it).

    Raises:
        ValueError: naming the setting and the numbers: fewer than two images, no training
            or no validation image, or a run's ``batch_tokens`` above the training tokens.
    """
    counts = split_counts(cfg)
    if counts is None:
        logger.info("dataset: split sizes are known once the manifest is built; they are checked at the next start "
                    "(and when training starts)")
        return None
    problems = _split_problems(cfg, counts) or _batch_problems(cfg, counts)
    if problems:
        raise ValueError("; ".join(problems))
    return counts


def _split_problems(cfg: PipelineConfig, counts: SplitCounts) -> list[str]:
    """Both splits must hold an image: training needs one, evaluation the other."""
    n, fraction, manifest = counts.n_images, cfg.dataset.val_fraction, counts.manifest
    if n < 2:
        total = (f"dataset.synthetic.n_images = {n}" if manifest is None
                 else f"the manifest {manifest} holds {n} usable image{'s' if n else ''}")
        return [f"{total}: at least 2 images are needed, one to train on and one to validate on"]
    for split, n_split, user, fix in (("validation", counts.n_val, "evaluation", "raise"),
                                      ("training", counts.n_train, "training", "lower")):
        if n_split:
            continue
        if manifest is None:
            head = (f"dataset.val_fraction = {fraction} leaves no {split} image among the {n} images (split by a "
                    "seeded hash of each id)")
            more = ""
        else:
            head = (f"the manifest {manifest} has no {split} image among its {n} usable images (the source's own "
                    f"split, else dataset.val_fraction = {fraction})")
            more = f" or add {split} images"
        return [f"{head}; {user} needs at least one: {fix} dataset.val_fraction{more}"]
    return []


def _batch_problems(cfg: PipelineConfig, counts: SplitCounts) -> list[str]:
    """A step takes ``batch_tokens`` tokens of the training split: each run's must fit in it."""
    per_image = cfg.prepare.grid ** 2
    available = counts.n_train * per_image
    problems: dict[str, str] = {}
    for name, run in sorted(cfg.runs.items()):
        batch = run.train.batch_tokens
        where = "train" if batch == cfg.train.batch_tokens else f"runs.{name}.train"
        if batch > available and where not in problems:
            problems[where] = (
                f"{where}.batch_tokens = {batch} is more than the {available:,} training tokens ({counts.n_train} "
                f"training images of {counts.n_images} x {per_image} tokens at prepare.grid = {cfg.prepare.grid}); "
                f"lower it to at most {available}")
    return list(problems.values())
