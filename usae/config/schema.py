"""The JSON schema of ``config.yaml``, generated from the ``setting()`` of every key.

The schema is documentation for editors and for Snakemake's ``validate`` (which also fills
in defaults); the checks that run are :mod:`usae.config.checks`, from the same metadata.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from usae.config.checks import json_type
from usae.config.pipeline import PipelineConfig
from usae.config.settings import REQUIRED, Spec, file_default, options, settings

DESCRIPTION = "usae pipeline configuration (config.yaml). Every key has a default except `models`."


def config_schema() -> dict[str, Any]:
    """The whole schema (JSON schema draft 2020-12) as plain data."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "description": DESCRIPTION,
            **section_schema(PipelineConfig)}


def section_schema(cls: type, *, defaults: bool = True) -> dict[str, Any]:
    """Schema of one config dataclass; without ``defaults`` for a run's partial overrides.

    A run's ``sae`` and ``train`` hold only the keys it changes, so filling in defaults
    there (as Snakemake's ``validate`` does) would override the shared sections.
    """
    properties, required = {}, []
    for f, hint, spec in settings(cls):
        properties[f.name] = field_schema(hint, spec, file_default(f), defaults=defaults)
        if file_default(f) is REQUIRED and defaults:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if required:
        out["required"] = required
    return {**out, "properties": properties}


def field_schema(hint: Any, spec: Spec, default: Any, *, defaults: bool) -> dict[str, Any]:
    """Schema of one key: its type and limits, default and description."""
    members = [m for m in options(hint) if m is not type(None)]
    nullable = len(members) < len(options(hint)) or spec.has_absent
    if len(members) == 1:
        out = value_schema(members[0], spec, defaults=defaults)
        if nullable:
            out["type"] = [out["type"], "null"]
            if "enum" in out:  # a choice or nothing (models.*.weights_format)
                out["enum"] = [*out["enum"], None]
    else:  # a text choice or a number (models.*.layer): each with its own limits
        out = {"oneOf": [value_schema(m, spec, defaults=defaults) for m in members]}
    if defaults and default is not REQUIRED:
        out["default"] = plain_default(default)
    out["description"] = spec.text
    nested = ("properties", "patternProperties")  # after the key's own lines, for a readable file
    return {**{k: v for k, v in out.items() if k not in nested}, **{k: v for k, v in out.items() if k in nested}}


def value_schema(hint: Any, spec: Spec, *, defaults: bool = True) -> dict[str, Any]:
    """Schema of one (non-union) type with the limits of ``spec`` that apply to it."""
    if spec.overrides:
        return section_schema(hint, defaults=False)
    if dataclasses.is_dataclass(hint):
        return section_schema(hint, defaults=defaults)
    out: dict[str, Any] = {"type": json_type(hint)}
    if hint in (int, float):
        out.update(_bounds(spec))
    elif hint is str:
        if spec.allowed() is not None:
            out["enum"] = list(spec.allowed())
        if spec.pattern is not None:
            out["pattern"] = f"^{spec.pattern.regex}$"
    elif typing.get_origin(hint) is tuple:
        out.update(_array(hint, spec))
    elif typing.get_origin(hint) is dict:
        out.update(_mapping(hint, spec, defaults))
    return out


def _bounds(spec: Spec) -> dict[str, Any]:
    bounds = {"minimum": spec.minimum, "exclusiveMinimum": spec.exclusive_minimum, "maximum": spec.maximum}
    return {k: v for k, v in bounds.items() if v is not None}


def _array(hint: Any, spec: Spec) -> dict[str, Any]:
    args = typing.get_args(hint)
    out: dict[str, Any] = {"items": {"type": json_type(args[0]), **_bounds(spec)}}
    if args[-1] is not Ellipsis:
        out.update(minItems=len(args), maxItems=len(args))
    elif spec.min_items:
        out["minItems"] = spec.min_items
    if spec.unique:
        out["uniqueItems"] = True
    return out


def _mapping(hint: Any, spec: Spec, defaults: bool) -> dict[str, Any]:
    entry = typing.get_args(hint)[1]
    if not dataclasses.is_dataclass(entry):
        return {}
    schema = section_schema(entry, defaults=defaults)
    if not any(file_default(f) is REQUIRED for f, _, _ in settings(entry)):
        schema["type"] = ["object", "null"]  # every key optional: an empty entry may be written as null
    out: dict[str, Any] = {"additionalProperties": False, "patternProperties": {f"^{spec.keys.regex}$": schema}}
    if spec.min_items:
        out["minProperties"] = spec.min_items
    return out


def plain_default(value: Any) -> Any:
    """A default as YAML/JSON data: sections become ``{}`` (their keys have their own defaults)."""
    if dataclasses.is_dataclass(value):
        return {}
    if isinstance(value, tuple):
        return list(value)
    return value
