"""Own activations end to end, through the ``usae`` command: train, evaluate and report from .npy files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from usae.activations.holdout import validation_rows
from usae.arrays import run_folder
from usae.cli import main
from usae.sae.model import USAE

SETTINGS = ["--set", "sae.n_latents=32", "--set", "sae.k=4", "--set", "sae.aux_k=8", "--set", "sae.decode=dense",
            "--set", "train.max_steps=40", "--set", "train.batch_tokens=128", "--set", "train.lr=1e-2",
            "--set", "train.device=cpu", "--set", "train.read_threads=1", "--set", "train.log_every=20",
            "--set", "dataset.val_fraction=0.25", "--set", "dataset.seed=1", "--set", "prepare.standardize=per_dim"]


pytestmark = pytest.mark.usefixtures("restore_logging_and_threads")  # main() sets both, as an entry point does


def _npy(folder: Path, shape: tuple[int, ...]) -> dict[str, Path]:
    """Two models seeing the same 4 latent factors through their own linear maps, offset and scaled."""
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(*shape, 4))
    paths = {}
    for name, d, scale, shift in (("vit", 12, 3.0, 5.0), ("cnn", 8, 0.2, -1.0)):
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], (factors @ rng.normal(size=(4, d)) * scale + shift).astype(np.float32))
    return paths


def _acts(paths: dict[str, Path]) -> list[str]:
    return [f"--acts={name}={path}" for name, path in paths.items()]


def test_own_npy_activations_from_training_to_report(tmp_path, capsys):
    """The README's walk-through: train, evaluate, report."""
    paths, run = _npy(tmp_path, (100, 16)), tmp_path / "runs" / "mine"
    assert main(["train", *_acts(paths), "--out", str(run), "--threads", "1", *SETTINGS]) == 0
    model = USAE.load(run / "model")
    split = model.meta["provenance"]["split"]
    val = validation_rows(100, 0.25, seed=1)
    assert (split["unit"], split["n_val"], split["seed"]) == ("image", val.sum(), 1)
    assert model.meta["standardization"]["cnn"]["kind"] == "per_dim"

    assert main(["evaluate", "--model", str(run), "--threads", "1", "--set", "evaluate.top_n=3"]) == 0
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["concepts.parquet", "heatmaps.zarr", "metrics.json"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (metrics["n_images"], metrics["n_tokens"]) == (val.sum(), val.sum() * 16)  # the held-out rows only
    assert min(np.diag(metrics["r2_per_dim"])) > 0.5 and metrics["config"]["top_n"] == 3
    top_rows = np.concatenate(pd.read_parquet(run / "eval" / "concepts.parquet")["top_rows_vit"].to_list())
    assert set(top_rows[top_rows >= 0]) <= set(np.flatnonzero(val))

    assert main(["report", "--model", str(run / "model"), "--out", str(tmp_path / "report")]) == 0
    index = tmp_path / "report" / "index.html"
    assert capsys.readouterr().out.strip().endswith(str(index))
    page = index.read_text()
    assert 'id="no-images-banner"' in page and 'id="reconstruction"' in page and 'class="thumb"' not in page
    assert str(paths["vit"].resolve()) in page  # the array stands for the backbone in the setup table


def test_flat_arrays_are_split_by_row_and_evaluated_on_the_held_out_rows(tmp_path):
    paths, run = _npy(tmp_path, (1500,)), tmp_path / "flat"
    assert main(["train", *_acts(paths), "--out", str(run), "--threads", "1", *SETTINGS]) == 0
    assert USAE.load(run / "model").meta["provenance"]["split"]["unit"] == "token"
    assert main(["evaluate", "--model", str(run), "--threads", "1", "--split", "train"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n_tokens"] == (~validation_rows(1500, 0.25, seed=1)).sum()
    assert metrics["config"]["batch_images"] == 32 * 196  # a block is as many tokens as 32 images of 14 x 14


def test_report_evaluates_a_run_first_when_it_has_no_evaluation(tmp_path):
    paths, run = _npy(tmp_path, (1500,)), tmp_path / "flat"
    assert main(["train", *_acts(paths), "--out", str(run), "--threads", "1", *SETTINGS]) == 0
    assert main(["report", "--model", str(run), "--threads", "1"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n_tokens"] == validation_rows(1500, 0.25, seed=1).sum()
    assert (run / "report" / "index.html").is_file()


def test_settings_from_a_config_with_several_runs_need_run(tmp_path, capsys):
    paths = _npy(tmp_path, (40, 4))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("models: {m: {name: x}}\nruns: {small: {sae: {k: 2}}, big: {sae: {k: 3}}}\n"
                   "sae: {n_latents: 16, k: 2, aux_k: 0}\ntrain: {max_steps: 2, batch_tokens: 32, device: cpu}\n")
    assert main(["train", "-c", str(cfg), *_acts(paths), "--out", str(tmp_path / "run")]) == 2
    assert "the config has 2 runs ['big', 'small']: choose" in capsys.readouterr().err
    assert main(["train", "-c", str(cfg), "--run", "big", *_acts(paths), "--out", str(tmp_path / "run")]) == 0
    assert USAE.load(tmp_path / "run" / "model").cfg.k == 3


def test_commands_on_a_run_refuse_what_does_not_fit(tmp_path, capsys):
    assert main(["report"]) == 2
    assert "usae report needs --model RUN_DIR" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path)]) == 2
    assert f"no trained model in {tmp_path}: expected {tmp_path / 'model' / 'config.json'}" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--set", "sae.k=3"]) == 2
    assert "only these apply here: evaluate.*" in capsys.readouterr().err


def test_run_folder_takes_the_run_or_its_model_folder(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    assert run_folder(tmp_path / "run") == run_folder(tmp_path / "run" / "model") == tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no trained model in"):
        run_folder(tmp_path)
