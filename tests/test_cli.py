"""The ``usae`` command: --version, --set on every command, --threads where a command uses it."""

from pathlib import Path

import numpy as np
import pytest
import torch

import usae
from usae.cli import COMMANDS, THREADED, TORCH_THREADS, build_parser, main
from usae.sae.model import USAE

TINY = str(Path(__file__).parent / "workflow" / "tiny_config.yaml")


pytestmark = pytest.mark.usefixtures("restore_logging_and_threads")  # main() sets both, as an entry point does


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"usae {usae.__version__}\n"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_set_and_threads_only_where_used(command):
    extra = ["PATH"] if command == "verify" else []
    args = build_parser().parse_args([command, "--set", "sae.k=8", "--set", "train.lr=0.1", *extra])
    assert args.set == ["sae.k=8", "train.lr=0.1"]
    assert hasattr(args, "threads") == (command in THREADED)
    if command not in THREADED:
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--threads", "3", *extra])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_override_stops_every_command_with_the_config_message(command, capsys):
    # stderr, not caplog: main() configures logging as an entry point does, replacing handlers
    assert main([command, "-c", TINY, "--set", "sae.kk=3"]) == 2
    assert "sae: unknown key(s) ['kk'] (did you mean 'k'?)" in capsys.readouterr().err
    assert main([command, "-c", TINY, "--set", "sae.k"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_set_without_a_config_is_refused(capsys):
    assert main(["verify", "some.zarr", "--set", "sae.k=3"]) == 2
    assert "--set changes a config: give one with -c" in capsys.readouterr().err


def _arrays(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 3)).astype(np.float32)
    paths = {}
    for name, d in (("m0", 5), ("m1", 7)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], base @ rng.normal(size=(3, d)).astype(np.float32))
    return paths


TRAIN_SET = ["--set", "sae.n_latents=24", "--set", "sae.k=3", "--set", "sae.aux_k=0", "--set", "train.max_steps=4",
             "--set", "train.batch_tokens=50", "--set", "train.buffer_tokens=100", "--set", "train.device=cpu",
             "--set", "train.read_threads=1", "--set", "sae.decode=sparse"]


def test_train_on_arrays_takes_overrides_and_threads(tmp_path):
    paths = _arrays(tmp_path)
    acts = [f"--acts={n}={p}" for n, p in paths.items()]
    assert main(["train", *acts, "--out", str(tmp_path / "run"), "--threads", "1", *TRAIN_SET]) == 0
    model = USAE.load(tmp_path / "run" / "model")
    assert (model.cfg.n_latents, model.cfg.k) == (24, 3) and model.meta["steps"] == 4
    assert torch.get_num_threads() == 1


def test_train_on_arrays_with_a_config_applies_overrides_to_its_run(tmp_path):
    paths = _arrays(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("models: {m0: {name: x}, m1: {name: y}}\nruns: {usae: {}}\n")
    acts = [f"--acts={n}={p}" for n, p in paths.items()]
    assert main(["train", "-c", str(cfg), *acts, "--out", str(tmp_path / "run"), *TRAIN_SET,
                 "--set", "runs.usae.sae.k=2"]) == 0
    assert USAE.load(tmp_path / "run" / "model").cfg.k == 2


def test_threads_set_torch_threads_for_the_commands_whose_rules_do(monkeypatch):
    seen = {}
    for command in TORCH_THREADS:
        monkeypatch.setitem(COMMANDS, command, lambda cfg, args, c=command: seen.update({c: torch.get_num_threads()}))
    monkeypatch.setattr("usae.cli._config", lambda args: None)
    for i, command in enumerate(TORCH_THREADS):
        assert main([command, "--threads", str(1 + i % 2)]) == 0
    assert seen == {c: 1 + i % 2 for i, c in enumerate(TORCH_THREADS)}


def _saved_run(tmp_path: Path) -> Path:
    from usae.config import SAEConfig

    USAE({"m0": 5, "m1": 7}, SAEConfig(n_latents=24, k=3), seed=1).save(tmp_path / "run" / "model")
    return tmp_path / "run"


def test_push_writes_the_folder_it_would_upload(tmp_path, capsys, no_network):
    run = _saved_run(tmp_path)
    assert main(["push", "--run", str(run), "--repo", "me/tiny", "--out", str(tmp_path / "out")]) == 0
    assert f"{run}: written to {tmp_path / 'out'}" in capsys.readouterr().out
    assert torch.equal(USAE.from_pretrained(tmp_path / "out").W_dec["m1"], USAE.load(run / "model").W_dec["m1"])
    assert 'USAE.from_pretrained("me/tiny")' in (tmp_path / "out" / "README.md").read_text()


def test_push_names_what_is_missing_or_refused(tmp_path, capsys, offline_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's results/ is relative
    assert main(["push", "--run", str(tmp_path)]) == 2
    assert "push needs --repo" in capsys.readouterr().err
    assert main(["push", "-c", TINY, "--run", "k2", "--repo", "me/tiny"]) == 2  # a run name of the config
    assert f"missing: {Path('results/runs/k2/model') / 'model.safetensors'}" in capsys.readouterr().err
    assert main(["push", "--run", str(_saved_run(tmp_path)), "--repo", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert f"pushing {tmp_path / 'run'} to me/tiny failed: " in err and "offline mode is enabled" in err


def test_extract_and_prepare_by_hand_share_one_backbones_parts(tmp_path, monkeypatch, capsys):
    """`usae extract --model` runs the model's whole backbone (every layer the config asks of it) into one set of
    parts; `usae prepare` reads each layer from them and deletes them with the last layer prepared."""
    import yaml

    cfg = yaml.safe_load(Path(TINY).read_text())
    a14 = cfg["models"].pop("a14")
    cfg["models"] = {"a14": {**a14, "layer": 0}, "a14_b1": {**a14, "layer": 1}, "b16": cfg["models"]["b16"]}
    cfg["runs"] = {"usae": {}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["manifest", "-c", "config.yaml"]) == 0
    assert main(["extract", "-c", "config.yaml", "--model", "a14_b1"]) == 0
    out = capsys.readouterr().out
    parts = [tmp_path / f"results/tiny/acts/a14/part{k}.zarr" for k in range(2)]
    assert all(f"{p.relative_to(tmp_path)} (a14, a14_b1)" in out for p in parts)
    assert not (tmp_path / "results/tiny/acts/b16").exists()  # another backbone: not asked for
    assert main(["prepare", "-c", "config.yaml", "--model", "a14"]) == 0
    assert all(p.exists() for p in parts), "a14_b1's layer is not prepared yet"
    assert main(["prepare", "-c", "config.yaml", "--model", "a14_b1"]) == 0
    assert "its extraction parts are deleted" in capsys.readouterr().out and not any(p.exists() for p in parts)
    for store in ("a14/block0.zarr", "a14_b1/block1.zarr"):
        assert (tmp_path / "results/tiny/aligned" / store / "zarr.json").is_file()
