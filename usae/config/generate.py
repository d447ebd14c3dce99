"""Write the files generated from the config declarations: the schema and the README table.

    python -m usae.config.generate           # rewrite both
    python -m usae.config.generate --check   # exit 1 if either is out of date

Every key's default, allowed values and description are declared once, with
``setting()`` in ``usae/config/*.py``; ``usae/workflow/schemas/config.schema.yaml`` and the
table between the ``config-table`` markers in README.md are written from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from usae.config.checks import range_text
from usae.config.pipeline import PipelineConfig
from usae.config.schema import config_schema, plain_default
from usae.config.settings import REQUIRED, Spec, file_default, options, settings

COMMAND = "python -m usae.config.generate"
SCHEMA = Path("usae/workflow/schemas/config.schema.yaml")
README = Path("README.md")
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"
HEADER = f"# Generated from usae/config/*.py by `{COMMAND}`: edit the settings there, not this file.\n"


def schema_text() -> str:
    """The schema file's text."""
    return HEADER + yaml.safe_dump(config_schema(), sort_keys=False, width=10_000, allow_unicode=True)


def table_rows(cls: type = PipelineConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, meaning) of every key under ``cls``, in declaration order.

    A section contributes its keys; a mapping of sections (``models``, ``runs``) a row of
    its own, then its entries' keys under ``<name>``.
    """
    rows = []
    for f, hint, spec in settings(cls):
        key = prefix + f.name
        members = [m for m in options(hint) if m is not type(None)]
        if spec.overrides is None and dataclasses.is_dataclass(members[0]):
            rows += table_rows(members[0], f"{key}.")
            continue
        default = file_default(f)
        rows.append((key, "required" if default is REQUIRED else f"`{_yaml(plain_default(default))}`",
                     allowed_text(hint, spec), spec.text))
        if typing.get_origin(members[0]) is dict and dataclasses.is_dataclass(typing.get_args(members[0])[1]):
            rows += table_rows(typing.get_args(members[0])[1], f"{key}.<name>.")
    return rows


def allowed_text(hint: Any, spec: Spec) -> str:
    """What a key accepts, in words: ``integer >= 1``, ``` `scalar`, `none` ```, ..."""
    if spec.overrides:
        return f"any `{spec.overrides}` key"
    members = options(hint)
    words = [_allowed(m, spec) for m in members if m is not type(None)]
    if type(None) in members or spec.has_absent:
        words.append("`null`")
    return " or ".join(words)


def _allowed(hint: Any, spec: Spec) -> str:
    bounds = range_text(spec)
    if hint is str:
        if spec.allowed() is not None:
            return ", ".join(f"`{c}`" for c in spec.allowed())
        return f"name of {spec.pattern.text}" if spec.pattern else "text"
    if hint is bool:
        return "`true`, `false`"
    if hint in (int, float):
        return " ".join(filter(None, ("integer" if hint is int else "number", bounds)))
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if args[-1] is Ellipsis:
            return f"list of {spec.item} names"
        return " ".join(filter(None, (f"{len(args)} numbers", bounds)))
    if spec.keys is not None:
        return f"mapping; names of {spec.keys.text}"
    return "mapping"


def _yaml(value: Any) -> str:
    """A default as it would be written in config.yaml (flow style)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def table_text() -> str:
    """The Markdown table of every key."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{key}` | {default} | {allowed} | {doc} |" for key, default, allowed, doc in table_rows()]
    return "\n".join(lines) + "\n"


def readme_text(current: str) -> str:
    """``current`` (README.md) with the table between the markers regenerated."""
    head, start, rest = current.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md lacks the markers {START} ... {END} around the configuration table")
    return f"{head}{START}\n{table_text()}{END}{tail}"


def stale(root: Path) -> list[Path]:
    """The generated files under ``root`` whose text differs from what would be generated."""
    expected = {SCHEMA: schema_text(), README: readme_text((root / README).read_text())}
    return [path for path, text in expected.items() if (root / path).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="repository root")
    args = parser.parse_args(argv)
    paths = stale(args.root)
    if args.check:
        for path in paths:
            sys.stderr.write(f"{path} is out of date; run `{COMMAND}`\n")
        return 1 if paths else 0
    (args.root / SCHEMA).write_text(schema_text())
    (args.root / README).write_text(readme_text((args.root / README).read_text()))
    for path in paths:
        sys.stdout.write(f"rewrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
