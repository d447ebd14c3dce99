"""Helpers shared by the config dataclasses: building them from plain dicts and back."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Collection, TypeVar

from usae.config.checks import Section
from usae.config.settings import file_default, settings, spec_of

T = TypeVar("T")


def as_mapping(where: str, data: Any) -> dict[str, Any]:
    """A copy of ``data`` as a dict (None counts as empty); ValueError naming ``where`` otherwise."""
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    return dict(data or {})


def from_dict(cls: type[T], data: dict[str, Any] | None, *, section: str = "", **extra: Any) -> T:
    """Build a config dataclass from a plain dict, rejecting unknown keys by name.

    Nested dataclass fields are built recursively; lists become tuples where the field
    is annotated as a tuple.
    """
    where = section or cls.__name__
    data = as_mapping(where, data)
    check_keys(cls, data, where, supplied=set(extra))
    data.update(extra)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_in(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, section=f"{section}.{key}" if section else key)
        kwargs[key] = value
    if section and issubclass(cls, Section):
        kwargs["where"] = section  # a section's messages name where it was written (runs.k16.train.lr)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def check_keys(cls: type, data: dict[str, Any], where: str, supplied: Collection[str] = ()) -> None:
    """Refuse keys of ``data`` that are no field of ``cls`` or that the caller ``supplied``:
    name them, the allowed settings and, for a likely typo, the key meant (``sae: unknown
    key(s) ['kk'] (did you mean 'k'?)``). A field that is no setting (``key``, the name of a
    model or run) is accepted from ``data`` (``to_dict`` output) unless supplied, never listed.
    """
    allowed = sorted(f.name for f in dataclasses.fields(cls) if spec_of(f) is not None)
    accepted = {f.name for f in dataclasses.fields(cls)} - set(supplied)
    unknown = sorted(set(data) - accepted, key=str)
    if not unknown:
        return
    meant = {key: close[0] for key in unknown if (close := difflib.get_close_matches(str(key), allowed, n=1))}
    if len(unknown) == 1 and meant:
        hint = f" (did you mean {meant[unknown[0]]!r}?)"
    else:
        hint = f" (did you mean {', '.join(f'{m!r} for {k!r}' for k, m in meant.items())}?)" if meant else ""
    raise ValueError(f"{where}: unknown key(s) {unknown}{hint}; allowed: {allowed}")


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-friendly dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def _how_it_runs(cls: type) -> list[str]:
    """The keys of a section declared ``changes_results=False``."""
    return [f.name for f, _, spec in settings(cls) if not spec.changes_results]


def result_settings(section: Any) -> dict[str, Any]:
    """A section's keys as :func:`to_dict` gives them, without those declared ``changes_results=False``
    and those declared ``quiet_default`` while at their default: what a stage's resumable work (training
    checkpoints, extraction parts) must agree on to be resumed, and what the rules' params hold."""
    neutral = set(_how_it_runs(type(section)))
    quiet = {f.name: file_default(f) for f, _, spec in settings(type(section)) if spec.quiet_default}
    return {key: value for key, value in to_dict(section).items()
            if key not in neutral and not (key in quiet and value == quiet[key])}


def with_run_settings(section: Any, whole: Any) -> Any:
    """``section`` (rebuilt from a rule's params, which hold its :func:`result_settings`) with the keys declared
    ``changes_results=False`` taken from ``whole``, the same section of the workflow's whole config: the rules
    leave those keys out of their params so that changing one reruns no job."""
    return dataclasses.replace(section, **{key: getattr(whole, key) for key in _how_it_runs(type(section))})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
