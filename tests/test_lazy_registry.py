"""The lazy registry: entries import on first use, unknown names list the choices."""

import subprocess
import sys

import pytest

from usae.registry import Registry


def test_lazy_entry_imports_on_first_get():
    reg = Registry("thing")
    reg.lazy("join", "os.path:join")
    import os.path

    assert reg.names() == ("join",) and "join" in reg
    assert reg.get("join") is os.path.join


def test_register_decorator_and_duplicates():
    reg = Registry("thing")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert reg.get("double")(3) == 6
    with pytest.raises(ValueError, match="thing 'double' is already registered"):
        reg.lazy("double", "os.path:join")


def test_unknown_name_lists_choices_and_names_the_setting():
    reg = Registry("training scheme")
    reg.lazy("paper", "os.path:join")
    with pytest.raises(ValueError, match=r"train.scheme = 'nope' is unknown; available: \['paper'\]"):
        reg.get("nope", setting="train.scheme")


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="must look like 'package.module:attribute'"):
        Registry("thing").lazy("x", "os.path.join")


def test_declaring_the_registries_imports_no_torch():
    code = "import sys, usae.registry as r; r.SCHEMES.names(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
