"""Reading config files: YAML errors by file, line and column, for `usae` and `python -m usae.config`."""

from pathlib import Path

import pytest

from usae.cli import main as usae_main
from usae.config.__main__ import main as check_main
from usae.config.files import load_config_file, read_config_file

REPO = Path(__file__).resolve().parents[1]

BAD = {
    "flow.yaml": ("models:\n  a: {name: x\n  b: 1\n",
                  "line 3, column 4: expected ',' or '}', but got ':' (parsing a flow mapping, begun on line 2)"),
    "tab.yaml": ("models:\n\ta: 1\n", "line 2, column 1: found character '\\t' that cannot start any token (YAML "
                 "indents with spaces, never tabs)"),
    "twice.yaml": ("train: {lr: 0.1}\nmodels: {a: {name: x}}\ntrain:\n  lr: 0.2\n",
                   "line 3, column 1: key 'train' is written twice (first on line 1)"),
    "quote.yaml": ('results: "out\n', "line 2, column 1: found unexpected end of stream (scanning a quoted scalar, "
                   "begun on line 1)"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_yaml_is_named_by_file_line_and_column(tmp_path, name):
    text, message = BAD[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        read_config_file(path)
    assert str(caught.value) == f"{path}, {message}"


def test_a_file_that_is_no_mapping_or_missing_says_so(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- models\n- runs\n")
    with pytest.raises(ValueError, match=r"list.yaml: a config is a mapping of sections \(results:, dataset:, "
                                         r"models:, ...\), not a list"):
        read_config_file(path)
    with pytest.raises(FileNotFoundError, match="config file .*absent.yaml does not exist"):
        read_config_file(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert read_config_file(tmp_path / "empty.yaml") == {}


def test_shipped_configs_read_as_plain_yaml_does():
    import yaml

    for path in ["config.yaml", "tests/workflow/tiny_config.yaml", *map(str, (REPO / "presets").glob("*.yaml"))]:
        assert read_config_file(REPO / path) == yaml.safe_load((REPO / path).read_text()), path


def test_the_usae_command_names_line_and_column_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(BAD["flow.yaml"][0])
    assert usae_main(["manifest", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3, column 4: expected ',' or '}}'" in err and "Traceback" not in err


def test_python_m_usae_config_checks_files_as_snakemake_would(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD["flow.yaml"][0])
    typo = tmp_path / "typo.yaml"
    typo.write_text("models: {a: {name: x}}\nsae: {kk: 3}\n")
    tiny = str(REPO / "tests/workflow/tiny_config.yaml")
    assert check_main([tiny, str(bad), str(typo)]) == 2
    out, err = capsys.readouterr()
    assert out == f"{tiny}: ok (2 models, 3 runs, 18 training and 6 validation images)\n"
    assert [line for line in err.splitlines() if line.startswith("invalid config")] == [
        f"invalid config: {bad}, {BAD['flow.yaml'][1]}",
        f"invalid config: {typo}: sae: unknown key(s) ['kk'] (did you mean 'k'?); allowed: ['activation', 'aux_coef', "
        "'aux_k', 'batchnorm', 'cross_coef', 'dead_tokens', 'decode', 'k', 'loss', 'n_latents']"]
    assert load_config_file(tiny).models.keys() == {"a14", "b16"}


def test_merge_keys_share_settings_and_a_written_key_overrides(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("models:\n  a: &base {name: x, layer: l1, image_size: 64}\n"
                    "  b: {<<: *base, layer: l2}\n  c:\n    <<: *base\n    name: y\n")
    models = read_config_file(path)["models"]
    assert models["b"] == {"name": "x", "layer": "l2", "image_size": 64}
    assert models["c"] == {"name": "y", "layer": "l1", "image_size": 64}
    path.write_text("models:\n  a: &base {name: x}\n  b: {<<: *base, layer: l2, layer: l3}\n")
    with pytest.raises(ValueError, match="key 'layer' is written twice"):
        read_config_file(path)


def test_the_depth_preset_gives_each_depth_its_backbone_and_own_layer():
    cfg = load_config_file(REPO / "presets" / "depth.yaml")
    layers = {key: spec.layer for key, spec in cfg.models.items()}
    assert layers["mobilenet_d2"] == "features.8" and layers["dinov2_d4"] == "/backbone/encoder/layer.11/Add_1_output_0"
    assert len(set(layers.values())) == 8
    for family in ("mobilenet", "dinov2"):
        specs = [spec for key, spec in cfg.models.items() if key.startswith(family)]
        assert len({(s.library, s.name, s.weights, s.weights_sha256) for s in specs}) == 1
