"""Command-line overrides of a config: ``--set KEY.PATH=VALUE``, applied before the checks.

An override is as if the value were written at that place in the file: the value is read
as YAML (``16``, ``0.001``, ``true``, ``null``, ``[dinov2, siglip]``, ``block8``; ``1e-3``
too, which YAML alone reads as text), missing sections on the way are created, and the
result goes through :func:`load_config` like any file, so a bad value or an unknown key
gets the usual message naming the key.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import yaml

from usae.config.checks import EXPONENT

Override = tuple[tuple[str, ...], Any]
"""A parsed override: the key path (``("runs", "usae", "sae", "k")``) and its value."""


def parse_override(text: str) -> Override:
    """``"sae.k=16"`` -> ``(("sae", "k"), 16)``; the value is parsed as YAML.

    Raises:
        ValueError: no ``=``, an empty key or key part, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or not all(parts):
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set sae.k=16")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(value, str) and EXPONENT.fullmatch(raw.strip()):  # unquoted only: '1e3' stays text
        value = float(value)  # YAML 1.1 reads 1e-3 as text; on a command line it is meant as a number
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str | Override]) -> dict[str, Any]:
    """A copy of the parsed config ``data`` with each override set, in order (the last wins).

    A missing or ``null`` section on the way becomes a mapping (``runs.k16.sae.k=16`` on a
    file without ``runs`` writes ``runs: {k16: {sae: {k: 16}}}``, as the file would).

    Raises:
        ValueError: a key on the way holds a value that is not a mapping (``sae.k.x=1``).
    """
    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item) if isinstance(item, str) else item
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                where = ".".join(parts[: depth + 1])
                raise ValueError(f"--set {'.'.join(parts)}: {where} is {node!r}, not a section with keys")
        node[parts[-1]] = value
    return data

