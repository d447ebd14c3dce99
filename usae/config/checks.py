"""Checking a config value against its ``setting()``: the one place types, ranges, choices
and patterns are enforced, for ``usae`` commands and Snakemake alike.

Messages name the key (``prepare.grid = 0 is out of range; it must be >= 1``); types are
named as in JSON schema (``'number'``), the vocabulary of the generated schema.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import typing
from typing import Any, ClassVar

from usae.config.rules import check_rules
from usae.config.settings import Spec, options, settings

EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Section:
    """Base of the config dataclasses: each instance checks itself when built.

    First every field against its ``setting()`` (type, range, choices, pattern), then the
    section's cross-field rules (:mod:`usae.config.rules`). ``where`` (not stored) is where
    the section was written, for messages: a run's ``train`` is ``runs.<name>.train``.
    """

    section_name: ClassVar[str] = ""
    where: dataclasses.InitVar[str | None] = None

    def config_path(self) -> str:
        """Where this section sits in ``config.yaml`` by default (``train``, ``models.dino``)."""
        return self.section_name

    def __post_init__(self, where: str | None) -> None:
        where = where or self.config_path()
        for f, hint, spec in settings(type(self)):
            value = check_field(f"{where}.{f.name}" if where else f.name, getattr(self, f.name), hint, spec)
            object.__setattr__(self, f.name, value)  # frozen: lists from YAML become tuples
        check_rules(self, where)


def json_type(hint: Any) -> str:
    """JSON-schema name of a (non-union) type hint: ``integer``, ``array``, ``object``, ..."""
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "array"
    if origin is dict or dataclasses.is_dataclass(hint) or hint is Any:
        return "object"
    raise TypeError(f"no JSON type for {hint!r}")


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` as JSON schema sees it (``true`` is no integer)."""
    if hint is Any:
        return True
    if hint is bool or hint is str or hint is type(None):
        return isinstance(value, hint)
    if hint is int or hint is float:
        kind = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return isinstance(value, (tuple, list))  # items are checked with their own messages
    if origin is dict:
        item = typing.get_args(hint)[1]
        return isinstance(value, dict) and all(conforms(v, item) for v in value.values())
    return isinstance(value, hint)


def check_field(where: str, value: Any, hint: Any, spec: Spec) -> Any:
    """Check one value of key ``where``; return it normalised (sequences become tuples).

    Raises:
        ValueError: naming ``where``, the value and what is allowed.
    """
    members = options(hint)
    member = next((m for m in members if conforms(value, m)), None)
    if member is None:
        names = " or ".join(repr(json_type(m)) for m in members)
        raise ValueError(f"{where} = {value!r} is not of type {names}{_number_hint(value, members)}")
    numeric = any(m in (int, float) for m in members)
    if member is str:
        _check_text(where, value, spec, numeric)
    elif member in (int, float):
        _check_range(where, value, spec, [value], str in members)
    elif typing.get_origin(member) is tuple:
        return _check_sequence(where, value, member, spec)
    elif typing.get_origin(member) is dict:
        _check_mapping(where, value, spec)
    return value


def _number_hint(value: Any, members: tuple[Any, ...]) -> str:
    """How to write a number the check refused: YAML 1.1 reads ``1e7`` and ``3e-4`` as text
    (a float needs a dot and a signed exponent), and ``1.0e+7`` is no integer."""
    numeric = [m for m in members if m in (int, float)]
    if isinstance(value, str) and numeric and EXPONENT.fullmatch(value):
        number = float(value)
        if int in numeric and number.is_integer():
            return f" (YAML reads {value} as text; write {int(number)})"
        mantissa, _, exponent = repr(number).partition("e")
        written = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else mantissa
        return f" (YAML reads {value} as text; write {written})"
    if isinstance(value, str) and numeric and _NUMBER.fullmatch(value.strip()):
        return (" (a number written as text: unquote it; `snakemake --config` passes the values inside {...} as "
                "text, so set such keys in a config file)")
    if isinstance(value, float) and value.is_integer() and int in numeric:
        return f" (write it as the integer {int(value)})"
    return ""


def range_text(spec: Spec) -> str:
    """The bounds of a numeric setting as a user reads them: ``>= 1 and <= 8``."""
    parts = [f"> {spec.exclusive_minimum}" if spec.exclusive_minimum is not None else "",
             f">= {spec.minimum}" if spec.minimum is not None else "",
             f"<= {spec.maximum}" if spec.maximum is not None else ""]
    return " and ".join(p for p in parts if p)


def _check_range(where: str, value: Any, spec: Spec, items: list, text_choices: bool) -> None:
    """Bounds of a number, or of every item of a numeric tuple (``value`` is then the tuple)."""
    low, exclusive, high = spec.minimum, spec.exclusive_minimum, spec.maximum
    if any((low is not None and x < low) or (exclusive is not None and x <= exclusive)
           or (high is not None and x > high) for x in items):
        subject = "each value" if isinstance(value, tuple) else "it"
        alternative = f", or one of {list(spec.allowed())}" if text_choices and spec.allowed() else ""
        raise ValueError(f"{where} = {value!r} is out of range; {subject} must be {range_text(spec)}{alternative}")


def _check_text(where: str, value: str, spec: Spec, numeric: bool) -> None:
    allowed = spec.allowed()
    if allowed is not None and value not in allowed:
        alternative = f" or an integer {range_text(spec)}" if numeric and range_text(spec) else ""
        raise ValueError(f"{where} = {value!r} is not allowed; choose one of {list(allowed)}{alternative}")
    if spec.pattern is not None and not spec.pattern.matches(value):
        raise ValueError(f"{where} = {value!r} must be a non-empty name using {spec.pattern.text}")


def _check_sequence(where: str, value: list | tuple, hint: Any, spec: Spec) -> tuple:
    args = typing.get_args(hint)
    item = args[0]
    if args[-1] is not Ellipsis and len(value) != len(args):
        raise ValueError(f"{where} = {value!r} must have {len(args)} values")
    if not all(conforms(v, item) for v in value):
        raise ValueError(f"{where} = {value!r} is not of type 'array' of {json_type(item)!r}")
    _check_count(where, value, spec)
    if spec.unique and len(set(value)) != len(value):
        raise ValueError(f"{where} lists a {spec.item} twice: {list(value)}")
    if item in (int, float):
        _check_range(where, tuple(value), spec, list(value), False)
    return tuple(float(v) for v in value) if item is float else tuple(value)


def _check_mapping(where: str, value: dict, spec: Spec) -> None:
    _check_count(where, value, spec)
    if spec.keys is not None:
        bad = [k for k in value if not (isinstance(k, str) and spec.keys.matches(k))]
        if bad:
            raise ValueError(f"{where}: names {bad} must use {spec.keys.text}")


def _check_count(where: str, value: dict | list | tuple, spec: Spec) -> None:
    if len(value) < spec.min_items:
        need = f"one {spec.item} is" if spec.min_items == 1 else f"{spec.min_items} {spec.item}s are"
        raise ValueError(f"{where}: at least {need} required")
