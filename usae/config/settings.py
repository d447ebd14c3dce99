"""One declaration per config key: ``setting()`` stores its default, allowed values and
description in the dataclass field, and :class:`Section` checks every field from it.

The JSON schema and the README table are generated from the same metadata
(``python -m usae.config.generate``), so a key's range or choices are written only here.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from usae.registry import Registry

REQUIRED: Any = object()
"""Default of a key every config must give (``setting(REQUIRED, ...)``)."""

_UNSET: Any = object()


@dataclass(frozen=True)
class Pattern:
    """A regular expression a text must match in full, and how to say it to a user."""

    regex: str
    text: str

    def matches(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None


NAME = Pattern("[A-Za-z0-9_-]+", "only letters, digits, '_' and '-'")
"""Names of models and runs: they become folder names and Snakemake wildcard values."""


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What one config key allows and means: the metadata ``setting()`` puts on its field."""

    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    choices: tuple[str, ...] | Registry | None = None
    pattern: Pattern | None = None
    keys: Pattern | None = None
    min_items: int = 0
    unique: bool = False
    item: str = "entry"
    absent: Any = _UNSET
    overrides: str | None = None
    changes_results: bool = True
    quiet_default: bool = False

    @property
    def text(self) -> str:
        """The description a person reads (schema, README table): ``doc``, and what changing the key reruns."""
        if self.changes_results:
            return self.doc
        return (f"{self.doc} Changes how the work runs, not what it computes: changing it reruns no job, and "
                "work stopped under another value resumes.")

    def allowed(self) -> tuple[str, ...] | None:
        """The choices; a registry's names are read now, so plugins registered later count."""
        if isinstance(self.choices, Registry):
            return self.choices.names()
        return self.choices

    @property
    def has_absent(self) -> bool:
        return self.absent is not _UNSET


def setting(default: Any, doc: str, **limits: Any) -> Any:
    """A dataclass field declared once: default, one-line description and allowed values.

    Args:
        default: The default; :data:`REQUIRED` for none. A dataclass type means "that
            section with its own defaults"; a dict or list default is copied per instance.
        doc: One-line description (Markdown), shown in the schema and the README table.
        **limits: Fields of :class:`Spec`: ``minimum``, ``maximum``, ``exclusive_minimum``
            (numbers, or the items of a numeric tuple); ``choices`` (a tuple or a
            :class:`usae.registry.Registry`) and ``pattern`` (texts); ``keys`` (names of a
            mapping's entries); ``min_items``, ``unique`` and ``item`` (collections);
            ``absent`` (what a config file may write instead: null or a missing key mean
            this value, resolved by :func:`usae.config.load_config`); ``overrides`` (the
            section a run's partial settings override); ``changes_results=False`` for a key
            that changes how the work runs but not what it computes (threads, checkpoint
            cadence): it is left out of what resuming checks (:func:`usae.config.base.result_settings`);
            ``quiet_default=True`` for a key added after results were made, whose default is what
            they were made with: while it has that default it is left out of the same (and so of the
            rules' params), so adding the key reruns no job and keeps old checkpoints resumable.
    """
    meta = {"usae": Spec(doc=doc, **limits)}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def spec_of(f: dataclasses.Field) -> Spec | None:
    """The :class:`Spec` of a field, or None for a field that is not a config key (``key``)."""
    return f.metadata.get("usae")


def settings(cls: type) -> list[tuple[dataclasses.Field, Any, Spec]]:
    """Every config key of a section class: (field, resolved type hint, spec), in order."""
    hints = hints_of(cls)
    return [(f, hints[f.name], spec) for f in dataclasses.fields(cls) if (spec := spec_of(f)) is not None]


@cache
def hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def options(hint: Any) -> tuple[Any, ...]:
    """The members of a union type (``int | None`` -> ``(int, NoneType)``), else ``(hint,)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def file_default(f: dataclasses.Field) -> Any:
    """The value a config file gets when it leaves the key out (:data:`REQUIRED` if none)."""
    spec = spec_of(f)
    if spec is not None and spec.has_absent:
        return spec.absent
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED
