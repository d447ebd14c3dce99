"""Reading a config file: YAML parsed with messages that name the file, line and column.

The ``usae`` command reads ``-c FILE`` here, and the Snakefile reads ``config.yaml`` here
when no ``--configfile`` is given; ``python -m usae.config FILE`` checks a file the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from usae.config.overrides import apply_overrides
from usae.config.pipeline import PipelineConfig, load_config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the
    last one silently: a second ``train:`` section would replace the first). Merge keys
    (``<<: *anchor``) work as in YAML 1.1: a key written beside them overrides the merged one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # the safe loader's own merge (flatten_mapping) runs in super()
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # an unhashable key: the safe loader's own message names it
            if key in seen:
                first = seen[key]
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice (first on line {first.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed mapping of a YAML config file (an empty file is an empty config).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid YAML (naming the file, line and column, and what was
            found there), repeats a key, or does not hold a mapping of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with path.open(encoding="utf-8") as fh:
        try:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as err:
            raise ValueError(_yaml_message(path, err)) from None
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping of sections (results:, dataset:, models:, ...), "
                         f"not a {type(data).__name__}")
    return data


def load_config_file(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read and check a config file: :func:`read_config_file`, the command line's ``--set``
    overrides (:func:`usae.config.overrides.apply_overrides`), then :func:`load_config`."""
    return load_config(apply_overrides(read_config_file(path), overrides))


def _yaml_message(path: Path, err: yaml.MarkedYAMLError) -> str:
    """``config.yaml, line 3, column 4: expected ',' or '}', but got ':' (in a flow mapping begun on line 2)``."""
    mark = err.problem_mark or err.context_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = err.problem or err.context or "invalid YAML"
    if "'\\t'" in problem:
        problem += " (YAML indents with spaces, never tabs)"
    context = ""
    if err.context and err.problem and err.context_mark is not None:
        context = f" ({err.context.removeprefix('while ')}, begun on line {err.context_mark.line + 1})"
    return f"{where}: {problem}{context}"
