"""Settings of a run on activation arrays (``usae train/evaluate/report --acts``), with or without a config.

Such a run uses the keys of a config that do not concern images or backbones: ``sae.*`` and
``train.*`` (of one run), the held-out split (``dataset.val_fraction``, ``dataset.seed``),
the standardisation (``prepare.standardize``, ``prepare.stats_images``, ``prepare.seed``)
and ``evaluate.*``. They come from a config's run (``-c``, ``--run``) or, without a file,
from the defaults and ``--set`` overrides of those keys alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from usae.config.base import as_mapping, check_keys, from_dict
from usae.config.data import ManifestConfig, PrepareConfig
from usae.config.evaluate import EvaluateConfig
from usae.config.overrides import Override, apply_overrides
from usae.config.pipeline import PipelineConfig
from usae.config.train import SAEConfig, TrainConfig

logger = logging.getLogger(__name__)

SECTIONS: dict[str, tuple[type, tuple[str, ...] | None]] = {
    "sae": (SAEConfig, None), "train": (TrainConfig, None), "evaluate": (EvaluateConfig, None),
    "dataset": (ManifestConfig, ("val_fraction", "seed")),
    "prepare": (PrepareConfig, ("standardize", "stats_images", "seed")),
}
"""Section -> its dataclass and the keys that apply to arrays (None: all of them)."""


@dataclass(frozen=True)
class ArraysSettings:
    """What a run on activation arrays is trained and evaluated with (see the module docstring)."""

    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: ManifestConfig = field(default_factory=ManifestConfig)
    """Only ``val_fraction`` and ``seed`` apply: the held-out split."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """Only ``standardize``, ``stats_images`` and ``seed`` apply."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def settings_from_overrides(overrides: Iterable[str | Override],
                            sections: Iterable[str] = tuple(SECTIONS)) -> ArraysSettings:
    """The defaults with ``--set`` overrides of the keys of ``sections`` that apply to arrays.

    Raises:
        ValueError: an override of another section or of a key that does not apply to
            arrays, an unknown key or a bad value (named as in a config file).
    """
    sections = tuple(sections)
    data = apply_overrides({}, overrides)
    check_keys(PipelineConfig, data, "top level")
    others = sorted(set(data) - set(sections))
    if others:
        raise ValueError(f"--set {others}: without a config file (-c), only these apply here: {_allowed(sections)}")
    built: dict[str, Any] = {}
    for name, value in data.items():
        cls, keys = SECTIONS[name]
        value = as_mapping(name, value)
        check_keys(cls, value, name)  # a misspelt key is named as such before "does not apply"
        foreign = sorted(set(value) - set(keys)) if keys is not None else []
        if foreign:
            raise ValueError(f"--set {', '.join(f'{name}.{k}' for k in foreign)}: does not apply to activation "
                             f"arrays; of {name}, only {', '.join(f'{name}.{k}' for k in keys)} do")
        built[name] = from_dict(cls, value, section=name)
    return ArraysSettings(**built)


def settings_from_config(cfg: PipelineConfig, run: str | None) -> ArraysSettings:
    """The settings of run ``run`` of a config (``--run``; may be left out when it has one run).

    Raises:
        ValueError: ``run`` is not a run of the config, or is None and the config has several.
    """
    if run is None:
        if len(cfg.runs) > 1:
            raise ValueError(f"the config has {len(cfg.runs)} runs {sorted(cfg.runs)}: choose the one whose sae and "
                             f"train settings to use with --run")
        run = next(iter(cfg.runs))
        logger.info("settings of the config's only run, %r", run)
    if run not in cfg.runs:
        raise ValueError(f"--run {run!r} not in the config's runs {sorted(cfg.runs)}")
    chosen = cfg.runs[run]
    return ArraysSettings(sae=chosen.sae, train=chosen.train, dataset=cfg.dataset, prepare=cfg.prepare,
                          evaluate=cfg.evaluate)


def _allowed(sections: tuple[str, ...]) -> str:
    return ", ".join(f"{s}.*" if SECTIONS[s][1] is None else ", ".join(f"{s}.{k}" for k in SECTIONS[s][1])
                     for s in sections)
