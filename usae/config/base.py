"""Helpers shared by the config dataclasses: range and choice checks, dict round trips."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def check_choice(section: str, key: str, value: Any, allowed: tuple) -> None:
    """Raise ValueError naming ``section.key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{section}.{key} = {value!r} is not allowed; choose one of {list(allowed)}")


def check_range(section: str, key: str, value: Any, lo: float | None = None,
                hi: float | None = None, lo_open: bool = False) -> None:
    """Raise ValueError naming ``section.key`` and the allowed range when ``value`` is outside it."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
    if bad:
        low = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        high = "" if hi is None else f"<= {hi}"
        raise ValueError(f"{section}.{key} = {value!r} is out of range; it must be {' and '.join(filter(None, (low, high)))}")


def from_dict(cls: type[T], data: dict[str, Any] | None, *, section: str = "", **extra: Any) -> T:
    """Build a config dataclass from a plain dict, rejecting unknown keys by name.

    Nested dataclass fields are built recursively; lists become tuples where the field
    is annotated as a tuple.
    """
    where = section or cls.__name__
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    data = dict(data or {})
    data.update(extra)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names - set(extra))}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_in(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, section=f"{section}.{key}" if section else key)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-friendly dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
