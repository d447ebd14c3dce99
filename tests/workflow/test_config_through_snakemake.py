"""What `snakemake` itself says about config files and data sizes, before any job (dry runs)."""

import pytest
import yaml
from pipeline_helpers import TINY, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow


def _refused(workdir, *args) -> str:
    proc = snakemake(workdir, "-n", *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert not (workdir / "results").exists()
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(("changes", "message"), [
    ({"dataset.val_fraction": 0.0}, "invalid config: dataset.val_fraction = 0.0 leaves no validation image among "
     "the 24 images (split by a seeded hash of each id); evaluation needs at least one: raise dataset.val_fraction"),
    ({"dataset.synthetic.n_images": 1}, "invalid config: dataset.synthetic.n_images = 1: at least 2 images are "
     "needed, one to train on and one to validate on"),
    ({"train.batch_tokens": 1000, "train.buffer_tokens": 4096}, "invalid config: train.batch_tokens = 1000 is more "
     "than the 882 training tokens (18 training images of 24 x 49 tokens at prepare.grid = 7); lower it to at most "
     "882"),
])
def test_data_too_small_for_the_config_stops_before_any_job(tmp_path, changes, message):
    write_config(tmp_path, **changes)
    assert message in _refused(tmp_path)


def _one_model_file(path, **changes):
    """The tiny config cut down to model b16 (no runs: one run of every model), as dataset `one`."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["models"] = {"b16": cfg["models"]["b16"]}
    cfg["dataset"]["name"] = "one"
    cfg.pop("runs")
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_configfile_is_the_whole_config_not_a_patch_over_config_yaml(tmp_path):
    """config.yaml (two models, three runs) lies beside it: none of its models, runs or settings join."""
    write_config(tmp_path)
    one = _one_model_file(tmp_path / "one.yaml", extract={"n_parts": 1})
    jobs = planned_jobs(tmp_path, "--configfile", str(one))
    assert jobs == {"build_manifest": 1, "extract_activations": 1, "prepare_activations": 1, "train_usae": 1,
                    "evaluate_usae": 1, "render_report": 1, "all": 1}
    out = snakemake(tmp_path, "-n", "--configfile", str(one)).stdout
    assert "results/one/acts/b16/part0.zarr" in out and "a14" not in out and "runs/k2" not in out
    assert planned_jobs(tmp_path)["extract_activations"] == 4  # without --configfile: config.yaml's two models


def test_config_overrides_apply_on_top_of_either_file(tmp_path):
    write_config(tmp_path)
    one = _one_model_file(tmp_path / "one.yaml")
    for args in (["--configfile", str(one)], []):
        out = snakemake(tmp_path, "-n", *args, "--config", "results=elsewhere", "dataset={name: other}").stdout
        assert "elsewhere/other/aligned/b16/final.zarr" in out and "results/" not in out


def test_invalid_yaml_in_config_yaml_is_named_by_line_and_column(tmp_path):
    (tmp_path / "config.yaml").write_text("models:\n  a: {name: x\n  b: 1\n")
    message = _refused(tmp_path)
    assert "invalid config: config.yaml, line 3, column 4: expected ',' or '}', but got ':'" in message


def test_invalid_yaml_in_a_configfile_gets_snakemakes_own_message(tmp_path):
    """Snakemake parses --configfile before the workflow starts: its message is all the user sees
    (README: `python -m usae.config FILE` names the line and column)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  a: {name: x\n  b: 1\n")
    message = _refused(tmp_path, "--configfile", str(bad))
    assert "Config file is not valid JSON or YAML" in message and "line" not in message
    (tmp_path / "twice.yaml").write_text("train: {lr: 0.1}\ntrain: {lr: 0.2}\n")  # valid YAML to Snakemake
    assert f"invalid config: {tmp_path}/twice.yaml, line 2, column 1: key 'train' is written twice (first on line 1)" \
        in _refused(tmp_path, "--configfile", str(tmp_path / "twice.yaml"))


def test_no_config_at_all_says_which_file_is_missing(tmp_path):
    assert "invalid config: config file config.yaml does not exist" in _refused(tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"modelz": {}}, "invalid config: top level: unknown key(s) ['modelz'] (did you mean 'models'?); allowed: "
     "['dataset', 'evaluate', 'extract', 'maco', 'models', 'prepare', 'results', 'runs', 'sae', 'test_sets', "
     "'tracking', 'train']"),
    ({"sae.kk": 3}, "invalid config: sae: unknown key(s) ['kk'] (did you mean 'k'?); allowed: ['activation', "
     "'aux_coef', 'aux_k', 'batchnorm', 'cross_coef', 'dead_tokens', 'decode', 'k', 'loss', 'n_latents']"),
    ({"train.batch_tokens": 10_000_000}, "invalid config: train.batch_tokens = 10000000 is more than "
     "train.buffer_tokens = 1024: every batch is drawn from one shuffle buffer (buffer_tokens >= batch_tokens); "
     "lower batch_tokens or raise buffer_tokens"),
])
def test_config_mistakes_get_a_short_message_naming_the_key(tmp_path, changes, message):
    """One message of a few lines (no schema dump), naming the key where the user wrote it."""
    write_config(tmp_path, **changes)
    output = _refused(tmp_path)
    assert message in output and len(output.splitlines()) <= 4, output
