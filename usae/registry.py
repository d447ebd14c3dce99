"""Named, lazily imported entries: every pluggable choice of the pipeline in one place.

A :class:`Registry` maps a name (the value a user writes in ``config.yaml``) to an object
(a class or a function). Built-in entries are declared here as ``"module:attribute"``
strings and imported on first use, so reading the config, generating the schema and
parsing the Snakefile never import torch, timm or transformers. Plugins add entries with
the :meth:`Registry.register` decorator.

The config's choices (``models.*.library``, ``models.*.weights_format``, ``sae.activation``,
``sae.loss``, ``train.scheme``, ``tracking.backend``) are the names of these registries, so adding an entry is one line here
plus the object itself; the schema and the README table are regenerated from them
(``python -m usae.config.generate``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, where built-in objects are imported only when first asked for.

    Args:
        kind: What the entries are, for messages (``"training scheme"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._declared: dict[str, str] = {}

    def lazy(self, name: str, target: str) -> None:
        """Declare entry ``name`` as ``"package.module:attribute"``, imported on first :meth:`get`."""
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} must look like 'package.module:attribute'")
        self._add(name, target)
        self._declared[name] = target

    def declared(self, name: str) -> str | None:
        """The ``"module:attribute"`` a built-in entry was declared as (:meth:`lazy`), imported or not; None
        for an entry added by :meth:`register` or an unknown name."""
        return self._declared.get(name)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds the decorated object under ``name`` and returns it unchanged."""

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, entry: T | str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def names(self) -> tuple[str, ...]:
        """Every entry's name, in the order declared."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, setting: str | None = None) -> T:
        """The object registered as ``name``, imported if needed.

        Raises:
            ValueError: If ``name`` is unknown; the message names ``setting`` (the config key)
                when given and lists the registered names.
        """
        try:
            entry = self._entries[name]
        except KeyError:
            where = f"{setting} = {name!r}" if setting else f"{self.kind} {name!r}"
            raise ValueError(f"{where} is unknown; available: {list(self._entries)}") from None
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def _declare(kind: str, entries: dict[str, str]) -> Registry[Any]:
    registry: Registry[Any] = Registry(kind)
    for name, target in entries.items():
        registry.lazy(name, target)
    return registry


DEVICES = ("auto", "cpu", "cuda")
"""Device settings of every stage: ``auto`` picks CUDA when present."""

BACKBONES = _declare("backbone library", {
    "timm": "usae.backbones.timm_backbone:TimmBackbone",
    "transformers": "usae.backbones.hf_backbone:HFBackbone",
    "torchvision": "usae.backbones.torchvision_backbone:TorchvisionBackbone",
    "onnx": "usae.backbones.onnx_backbone:OnnxBackbone",
})
"""``models.<name>.library``: a :class:`usae.backbones.Backbone` subclass, built as ``cls(spec)``."""

ACTIVATIONS = _declare("sparse activation", {
    "topk": "usae.sae.activations:topk",
    "batchtopk": "usae.sae.activations:batch_topk",
})
"""``sae.activation``: how the k active latents of each token are chosen."""

LOSSES = _declare("reconstruction loss", {
    "mse": "usae.sae.losses:mse_loss",
    "l1": "usae.sae.losses:l1_loss",
    "paper": "usae.sae.losses:paper_loss",
})
"""``sae.loss``: the reconstruction error of one target model (plus any auxiliary term)."""

SCHEMES = _declare("training scheme", {
    "paper": "usae.training.schemes:PaperScheme",
    "all_sources": "usae.training.schemes:AllSourcesScheme",
    "sparc": "usae.training.schemes:SparcScheme",
})
"""``train.scheme``: which models are sources at a step and which parameters they update."""

WEIGHT_FORMATS = _declare("weights format", {
    "efficientnet_pytorch": "usae.weights.formats:EFFICIENTNET_PYTORCH",
})
"""``models.<name>.weights_format``: a :class:`usae.weights.formats.KeyFormat` that renames a
checkpoint's keys to a library's own (recognised from the keys when the setting is null)."""

TRACKERS = _declare("tracking backend", {
    "none": "usae.tracking:NoTracker",
    "tensorboard": "usae.tracking:TensorBoardTracker",
    "wandb": "usae.tracking:WandbTracker",
})
"""``tracking.backend``: where training rows and evaluation metrics are also sent (:mod:`usae.tracking`)."""

MACO_OBJECTIVES = _declare("activation-maximisation objective", {
    "mean": "usae.maco.objective:mean_over_tokens",
    "max": "usae.maco.objective:max_over_tokens",
    "centre": "usae.maco.objective:centre_tokens",
})
"""``maco.objective``: how a concept's value at every patch token becomes one number per image."""
