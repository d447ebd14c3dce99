"""What the pre-run model checks found, kept so that the next start of the workflow skips them.

:func:`usae.backbones.geometry.check_geometry` builds every model of a config (without
weights) to read its shapes, which imports torch and the model library and, for an ONNX
file, converts the graph: 3 to 8 seconds at every ``snakemake`` start, dry runs included.
A model that passed is recorded here, one JSON file per model, named by the hash of
everything the outcome depends on:

* the model's settings (``models.<name>``, all of them);
* the versions of torch and of the model libraries (timm, torchvision, transformers, onnx,
  onnx2torch), and the source of this package's adapters and weight handling;
* for a weights file or folder (which the ONNX family reads its shapes from, and whose
  presence the check verifies): its path, size and modification time, of every file in a folder.

Any change to one of them is a new name, so a record is never stale, only unused. Not
recorded: models whose weights come from a library's hub (whether they are reachable
changes with the network and the hub's cache) and families registered by a plugin (their
code is not hashed here). A record that cannot be read or written is ignored: the check
then runs as without this cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path

from usae.backbones.layout import TokenLayout
from usae.config import BackboneSpec, to_dict
from usae.fingerprint import fingerprint
from usae.registry import BACKBONES
from usae.weights.fetch import locate_weights

logger = logging.getLogger(__name__)

LIBRARIES = ("torch", "timm", "torchvision", "transformers", "onnx", "onnx2torch")
"""Packages whose version can change what a model's shapes are."""

_SOURCES = (Path(__file__).parent, Path(__file__).parents[1] / "weights")
"""This package's adapters and weight handling: their source is part of every record's name."""


class GeometryCache:
    """Token layouts of models that passed the pre-run checks, in ``folder`` (created when first written)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, spec: BackboneSpec) -> TokenLayout | None:
        """The recorded layout of ``spec`` in its present state, or None."""
        name = record_name(spec)
        if name is None:
            return None
        try:
            return TokenLayout.from_dict(json.loads((self.folder / f"{name}.json").read_text())["layout"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            logger.debug("models.%s: ignoring unreadable geometry record %s (%s)", spec.key, name, err)
            return None

    def put(self, spec: BackboneSpec, layout: TokenLayout) -> None:
        """Record that ``spec`` passed with ``layout``; written whole or not at all."""
        name = record_name(spec)
        if name is None:
            return
        record = json.dumps({"layout": layout.to_dict(), "model": to_dict(spec)}, sort_keys=True, default=str)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.folder, suffix=".tmp", delete=False) as f:
                f.write(record)
            os.replace(f.name, self.folder / f"{name}.json")
        except OSError as err:  # read-only results folder, full disk: the check only gets slower
            logger.debug("models.%s: geometry not recorded in %s (%s)", spec.key, self.folder, err)


def record_name(spec: BackboneSpec) -> str | None:
    """The hash that names ``spec``'s record (module docstring), or None if it is not recorded."""
    if spec.pretrained and spec.weights is None:
        return None  # the library's hub
    if BACKBONES.declared(spec.library) is None:
        return None  # a plugin's family
    files = None
    if spec.weights is not None:
        files = _file_states(locate_weights(spec)[1])
        if files is None:
            return None
    return fingerprint({"model": to_dict(spec), "files": files, "versions": library_versions(),
                        "code": source_hash()})


@functools.cache  # once a process: each model's record name needs it, at 6 ms a reading here
def library_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`LIBRARIES` (None if missing), read without importing them."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache  # once a process, like the code it hashes
def source_hash() -> str:
    """SHA-256 over the source files of :data:`_SOURCES`, names and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for folder in _SOURCES for p in folder.glob("*.py")):
        digest.update(f"{path.parent.name}/{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_states(path: Path) -> list[list] | None:
    """(path, size, mtime) of a weights file, or of every file in a weights folder; None if it does not exist."""
    if path.is_file():
        paths = [path]
    elif path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    states = []
    for p in paths:
        stat = p.stat()
        states.append([str(p), stat.st_size, stat.st_mtime_ns])
    return states


__all__ = ["GeometryCache", "library_versions", "record_name", "source_hash"]
