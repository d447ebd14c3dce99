"""Training from disk: resume equals uninterrupted, logs, refusals, external arrays."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from usae.activations.sources import open_arrays
from usae.config import SAEConfig, TrainConfig
from usae.sae.model import USAE
from usae.training.loop import train_usae
from usae.training.schemes import source_of_step

SAE = SAEConfig(n_latents=48, k=4, aux_k=8, dead_tokens=200, decode="sparse")  # auto would time, not reproduce


def arrays(tmp_path, n=600, widths=(6, 10), seed=0, bad=None):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4)).astype(np.float32)
    paths = {}
    for i, d in enumerate(widths):
        x = base @ rng.normal(size=(4, d)).astype(np.float32) + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
        if bad is not None and i == 1:
            x[bad] = np.nan
        paths[f"m{i}"] = tmp_path / f"m{i}.npy"
        np.save(paths[f"m{i}"], x)
    return paths


def config(**kw):
    base = dict(max_steps=24, batch_tokens=50, buffer_tokens=200, lr=3e-3, log_every=4, checkpoint_every=5,
                device="cpu", read_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(run_dir):
    model = USAE.load(run_dir / "model")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    paths = arrays(tmp_path)
    full = train_usae(open_arrays(paths), SAE, config(), tmp_path / "full")
    cut = train_usae(open_arrays(paths), SAE, config(), tmp_path / "cut", stop_after=12)
    assert cut.steps == 13
    resumed = train_usae(open_arrays(paths), SAE, config(), tmp_path / "cut")
    assert resumed.steps == full.steps == 24
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    log_full = pd.read_parquet(full.log_path).drop(columns="tokens_per_s")
    log_cut = pd.read_parquet(resumed.log_path).drop(columns="tokens_per_s")
    pd.testing.assert_frame_equal(log_full, log_cut)


def test_batches_gathered_on_the_device_train_the_same_weights(tmp_path, monkeypatch, caplog):
    import usae.activations.loader as loader_module

    devices = []

    def spied(loader, epoch, buffer, skip, device, original=loader_module.stream_device_batches):
        devices.append(device)
        return original(loader, epoch, buffer, skip, device)

    monkeypatch.setattr(loader_module, "stream_device_batches", spied)
    paths = arrays(tmp_path)
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "host")
    assert devices == []
    assert "train.gather" not in caplog.text
    train_usae(open_arrays(paths), SAE, config(gather="device"), tmp_path / "device")
    assert devices == [torch.device("cpu")]
    assert "train.gather = 'device' on a CPU" in caplog.text
    a, b = weights(tmp_path / "host"), weights(tmp_path / "device")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_run_resumes_under_other_threads_checkpoint_cadence_and_gather(tmp_path, caplog):
    """Settings declared not to change results stay out of the checkpoints' fingerprint."""
    paths = arrays(tmp_path)
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "full")
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "cut", stop_after=12)
    with caplog.at_level("INFO", logger="usae.training.checkpoint"):
        resumed = train_usae(open_arrays(paths), SAE, config(read_threads=2, checkpoint_every=7, gather="device"),
                             tmp_path / "cut")
    assert "(step 13)" in caplog.text
    assert resumed.steps == 24
    kept = sorted(int(p.name[5:14]) for p in (tmp_path / "cut" / "checkpoints").glob("step_*.pt"))
    assert kept == [21, 24]  # resumed at 13 with a checkpoint every 7 steps (every 5: 20, 24)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_changed_settings_do_not_resume_from_old_checkpoints(tmp_path):
    paths = arrays(tmp_path)
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", stop_after=12)
    fresh = train_usae(open_arrays(paths), SAE, config(lr=1e-3), tmp_path / "run")
    train_usae(open_arrays(paths), SAE, config(lr=1e-3), tmp_path / "ref")
    a, b = weights(tmp_path / "run"), weights(tmp_path / "ref")
    assert fresh.steps == 24 and all(torch.equal(a[k], b[k]) for k in a)


def test_moved_data_resumes_its_checkpoints(tmp_path, caplog):
    paths = arrays(tmp_path)
    where = {"stores": {"m0": "/old/results/m0.zarr"}, "manifest_hash": "abc"}
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", provenance=where, stop_after=12)
    moved = {**where, "stores": {"m0": "/new/results/m0.zarr"}}
    with caplog.at_level("INFO", logger="usae.training.checkpoint"):
        resumed = train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", provenance=moved)
    assert "(step 13)" in caplog.text
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "ref", provenance=moved)
    a, b = weights(tmp_path / "run"), weights(tmp_path / "ref")
    assert resumed.steps == 24 and all(torch.equal(a[k], b[k]) for k in a)
    assert USAE.load(tmp_path / "run" / "model").meta["provenance"]["stores"] == moved["stores"]
    changed = {**moved, "manifest_hash": "def"}  # other data content: never resumed
    fresh = train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", provenance=changed, stop_after=2)
    assert fresh.steps == 3


def test_a_run_that_cannot_start_deletes_no_checkpoint(tmp_path):
    paths = arrays(tmp_path)
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", stop_after=12)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    (tmp_path / "broken").mkdir()
    broken = arrays(tmp_path / "broken", bad=slice(0, 600))
    with pytest.raises(ValueError, match="NaN or inf"):
        train_usae(open_arrays(broken), SAE, config(lr=1e-3), tmp_path / "run")
    assert sorted((tmp_path / "run" / "checkpoints").iterdir()) == checkpoints
    resumed = train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", stop_after=14)
    assert resumed.steps == 15  # went on from step 13, not from scratch


def test_log_has_the_promised_columns_and_decoders_stay_unit(tmp_path):
    cfg = config(max_steps=120, log_every=20, checkpoint_every=50, lr=1e-2)
    result = train_usae(open_arrays(arrays(tmp_path)), SAE, cfg, tmp_path / "run")
    log = pd.read_parquet(result.log_path)
    for col in ("step", "lr", "l0", "tokens_per_s", "loss_m0", "loss_m1", "dead_m0", "dead_m1", "source_m0"):
        assert col in log.columns, col
    assert log["step"].tolist() == [19, 39, 59, 79, 99, 119]
    assert log["lr"].iloc[-1] == pytest.approx(1e-6)
    assert (log["l0"] <= 4).all() and log[["source_m0", "source_m1"]].to_numpy().sum() == 120
    assert log["loss_m0"].iloc[-1] < 0.5 * log["loss_m0"].iloc[0]
    model = USAE.load(result.model_dir)
    for name in ("m0", "m1"):
        torch.testing.assert_close(model.dictionary(name).norm(dim=1), torch.ones(48))
    assert model.meta["scheme"] == "paper" and model.meta["steps"] == 120


def test_paper_scheme_source_is_seeded_and_uniform():
    draws = [source_of_step(0, s, 3) for s in range(3000)]
    assert draws == [source_of_step(0, s, 3) for s in range(3000)]
    assert draws != [source_of_step(1, s, 3) for s in range(3000)]
    assert np.allclose(np.bincount(draws) / 3000, 1 / 3, atol=0.03)


def test_nan_input_is_refused_naming_the_array_and_row(tmp_path):
    paths = arrays(tmp_path, bad=slice(317, 319))
    with pytest.raises(ValueError, match=r"m1 \(.*m1.npy\): NaN or inf in 2 row\(s\) .*first: row 317\)"):
        train_usae(open_arrays(paths), SAE, config(scheme="all_sources"), tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


def test_a_diverging_loss_stops_with_the_step_and_model():
    from usae.training.loop import _check_finite

    window = torch.ones(4, 3)
    _check_finite(window, 100, ["a", "b", "c"])
    window[2, 1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 102: reconstruction of b is inf"):
        _check_finite(window, 100, ["a", "b", "c"])


def test_mismatched_arrays_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((11, 3), np.float32))
    with pytest.raises(ValueError, match="rows"):
        open_arrays({"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"})


def test_cli_trains_on_external_arrays(tmp_path):
    paths = arrays(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("models: {m0: {name: x}, m1: {name: y}}\n"
                   "sae: {n_latents: 48, k: 4, aux_k: 0}\n"
                   "train: {max_steps: 6, batch_tokens: 50, buffer_tokens: 200, device: cpu, log_every: 3}\n")
    proc = subprocess.run([sys.executable, "-m", "usae.cli", "train", "-c", str(cfg), "--acts", f"m0={paths['m0']}",
                           "--acts", f"m1={paths['m1']}", "--out", str(tmp_path / "ext")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model = USAE.load(tmp_path / "ext" / "model")
    assert model.dims == {"m0": 6, "m1": 10} and model.cfg.k == 4
    bad = subprocess.run([sys.executable, "-m", "usae.cli", "train", "--acts", f"m0={paths['m0']}", "--acts",
                          f"m1={tmp_path / 'missing.npy'}", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing.npy" in bad.stderr


def test_a_new_training_code_version_does_not_resume_old_checkpoints(tmp_path, monkeypatch):
    import usae

    paths = arrays(tmp_path)
    train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", stop_after=12)
    monkeypatch.setitem(usae.STAGE_VERSIONS, "train", usae.STAGE_VERSIONS["train"] + 1)
    fresh = train_usae(open_arrays(paths), SAE, config(), tmp_path / "run", stop_after=3)
    assert fresh.steps == 4  # started again from step 0, not from the checkpoint at step 13


@pytest.mark.parametrize(("scheme", "validation_tokens", "expected"), [
    # paper scheme, 2 models: each encodes 24 steps x 50 tokens / 2 = 600 tokens as source
    ("paper", None, 60), ("paper", 100, 100), ("paper", 1000, 150),
    ("all_sources", None, 120),  # every model is a source every step: 1200 tokens each
])
def test_auto_dead_window_is_resolved_for_the_run_and_saved(tmp_path, scheme, validation_tokens, expected):
    sae = SAEConfig(n_latents=48, k=4, aux_k=8, dead_tokens="auto", decode="sparse")
    result = train_usae(open_arrays(arrays(tmp_path)), sae, config(scheme=scheme, batch_tokens=50), tmp_path / "run",
                        validation_tokens=validation_tokens)
    assert USAE.load(result.model_dir).cfg.dead_tokens == max(50, expected)


def test_log_records_a_line_per_row_and_a_summary_and_no_bar_off_a_terminal(tmp_path, caplog, capfd):
    import logging
    import re

    paths = arrays(tmp_path)
    with caplog.at_level(logging.INFO, logger="usae.training.loop"):
        result = train_usae(open_arrays(paths), SAE, config(max_steps=10, log_every=4), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.name == "usae.training.loop"]
    rows = [line for line in lines if line.startswith("step ")]
    log = pd.read_parquet(result.log_path)
    assert [row.split(" |")[0] for row in rows] == ["step 4/10", "step 8/10", "step 10/10"]  # and the last step
    for line, (_, row) in zip(rows, log.iterrows()):
        assert f"loss m0 {row['loss_m0']:.4g} m1 {row['loss_m1']:.4g}" in line
        assert f"L0 {row['l0']:.1f}" in line and f"dead m0 {row['dead_m0']:.1%} m1 {row['dead_m1']:.1%}" in line
        assert re.search(r"\| \d+ tokens/s \| lr [0-9.e-]+$", line)
    summary = [line for line in lines if line.startswith("train: 10 of 10 steps")]
    assert len(summary) == 1 and "(10 run now)" in summary[0]
    assert f"final loss m0 {result.final_losses['m0']:.4g} m1 {result.final_losses['m1']:.4g}" in summary[0]
    err = capfd.readouterr().err  # pytest's stderr is no terminal: no bar ("train:  40%|####  | 4/10 [...]")
    assert not re.search(r"train:\s+\d+%\|", err) and "step/s" not in err and "\r" not in err
