"""``--set KEY=VALUE`` overrides: parsed as YAML, applied to the parsed file, then checked as a file is."""

from pathlib import Path

import pytest

from usae.config.files import load_config_file, read_config_file
from usae.config.overrides import apply_overrides, parse_override

TINY = Path(__file__).parent / "workflow" / "tiny_config.yaml"


@pytest.mark.parametrize(("text", "expected"), [
    ("sae.k=16", (("sae", "k"), 16)),
    ("train.lr=0.001", (("train", "lr"), 0.001)),
    ("train.lr=1e-3", (("train", "lr"), 0.001)),  # YAML 1.2's float: YAML 1.1 (and a file) reads it as text
    ("train.lr=-2.5E+2", (("train", "lr"), -250.0)),
    ("sae.k=1e2", (("sae", "k"), 100.0)),  # an integer key says "write it as the integer 100"
    ("models.a14.layer='1e3'", (("models", "a14", "layer"), "1e3")),  # quoted: text
    ("sae.batchnorm=true", (("sae", "batchnorm"), True)),
    ("dataset.path=null", (("dataset", "path"), None)),
    ("runs.k16.models=[a14, b16]", (("runs", "k16", "models"), ["a14", "b16"])),
    ("models.a14.layer=block8", (("models", "a14", "layer"), "block8")),
    ("models.a14.layer='8'", (("models", "a14", "layer"), "8")),
    ("dataset.name=a=b", (("dataset", "name"), "a=b")),  # only the first '=' splits
])
def test_values_are_read_as_yaml(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("sae.k", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("sae..k=3", "expected KEY=VALUE"),
    ("sae.k=[1, 2", "not valid YAML"),
])
def test_malformed_overrides_are_refused_by_text(text, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_override(text)
    assert repr(text) in str(err.value)


def test_overrides_create_sections_in_order_and_leave_the_input_alone():
    data = {"sae": {"k": 4}, "runs": None, "train": {"lr": 0.1}}
    out = apply_overrides(data, ["sae.k=16", "runs.k8.sae.k=8", "train.lr=0.2", "sae.k=32"])
    assert out == {"sae": {"k": 32}, "runs": {"k8": {"sae": {"k": 8}}}, "train": {"lr": 0.2}}
    assert data == {"sae": {"k": 4}, "runs": None, "train": {"lr": 0.1}}


def test_an_override_below_a_plain_value_is_refused():
    with pytest.raises(ValueError, match=r"--set sae\.k\.x: sae\.k is 4, not a section"):
        apply_overrides({"sae": {"k": 4}}, ["sae.k.x=1"])


def test_overrides_reach_every_section_of_a_config_file():
    cfg = load_config_file(TINY, ["sae.k=16", "train.lr=0.001", "models.a14.layer=block1",
                                  "runs.k2.sae.k=8", "evaluate.tau=0.5"])
    assert cfg.sae.k == 16 and cfg.runs["usae"].sae.k == 16  # inherited by runs that do not set it
    assert cfg.runs["k2"].sae.k == 8
    assert cfg.train.lr == 0.001 and cfg.runs["usae"].train.lr == 0.001
    assert cfg.models["a14"].layer == "block1" and cfg.evaluate.tau == 0.5
    assert load_config_file(TINY).sae.k == 4  # the file is unchanged


def test_a_new_run_from_the_command_line():
    cfg = load_config_file(TINY, ["runs.wide.sae.n_latents=128"])
    assert cfg.runs["wide"].sae.n_latents == 128 and cfg.runs["wide"].models == ("a14", "b16")


@pytest.mark.parametrize(("override", "message"), [
    ("sae.k=0", "sae.k = 0 is out of range; it must be >= 1"),
    ("sae.kk=3", r"sae: unknown key\(s\) \['kk'\] \(did you mean 'k'\?\)"),
    ("train.lr=fast", "train.lr"),
    ("train.lr=[1e-3]", r"train.lr"),
    ("sae.k=1e1", r"sae.k = 10.0 .*write it as the integer 10"),
    ("runs.k2.sae.k=100", "runs.k2.sae.k = 100 must be smaller than runs.k2.sae.n_latents = 64"),
    ("tracking=wandb", "tracking = 'wandb' is not of type 'object'"),  # a section: tracking.backend=wandb
    ("trackin.backend=wandb", r"top level: unknown key\(s\) \['trackin'\] \(did you mean 'tracking'\?\)"),
])
def test_a_bad_override_gets_the_message_of_a_bad_file(override, message):
    with pytest.raises(ValueError, match=message):
        load_config_file(TINY, [override])
    written = apply_overrides(read_config_file(TINY), [override])
    with pytest.raises(ValueError, match=message):  # the same as writing it in the file
        from usae.config import load_config

        load_config(written)
