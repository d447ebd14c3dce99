"""Experiment tracking: the config refuses a missing package, and the offline modes of TensorBoard
and W&B receive every training row once (across a kill and resume) and the evaluation metrics.

wandb and tensorboard are the ``tracking`` extra, not test dependencies (together about 35 MB of
wheels and 120 MB installed): the tests that run them skip when they are not installed.
"""

import json
import struct
import sys

import numpy as np
import pandas as pd
import pytest

from usae.activations.sources import open_arrays
from usae.config import SAEConfig, TrackingConfig, TrainConfig, load_config
from usae.fingerprint import fingerprint
from usae.tracking import evaluation_values, run_id, track_evaluation
from usae.training.checkpoint import find_checkpoints
from usae.training.loop import train_usae

SAE = SAEConfig(n_latents=32, k=4, aux_k=8, dead_tokens=200, decode="sparse")
TRAIN = TrainConfig(max_steps=24, batch_tokens=50, buffer_tokens=200, lr=3e-3, log_every=4, checkpoint_every=5,
                    device="cpu", read_threads=1)
METRICS = {"models": ["m0", "m1"], "n_tokens": 100, "tau": 0.1, "config": {"top_n": 8}, "definitions": {"x": "y"},
           "usae_version": "0.1.0", "r2_per_dim": [[0.9, 0.5], [0.4, 0.8]], "l0": {"m0": 4.0, "m1": 3.5},
           "dead_fraction": {"m0": 0.25, "m1": None}, "pearson_log_cofires_log_energy": None}


def test_evaluation_values_are_the_metrics_numbers_flat_by_model():
    assert evaluation_values(METRICS) == {
        "eval/n_tokens": 100.0, "eval/tau": 0.1,
        "eval/r2_per_dim/m0/m0": 0.9, "eval/r2_per_dim/m0/m1": 0.5,
        "eval/r2_per_dim/m1/m0": 0.4, "eval/r2_per_dim/m1/m1": 0.8,
        "eval/l0/m0": 4.0, "eval/l0/m1": 3.5, "eval/dead_fraction/m0": 0.25}


def test_run_id_and_name():
    key = fingerprint({"a": 1})
    assert run_id(key) == key[:16] and len(run_id(key)) == 16
    assert TrackingConfig().run_name("solo_dino") == "solo_dino"
    assert TrackingConfig(name="sweep-{run}-k16").run_name("usae") == "sweep-usae-k16"


@pytest.mark.parametrize(("backend", "package"), [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_tracking_package_stops_the_config_naming_the_key(monkeypatch, backend, package):
    monkeypatch.setitem(sys.modules, package, None)  # find_spec then reports it missing, as when not installed
    with pytest.raises(ValueError, match=(rf"^tracking.backend = '{backend}' needs the {package} package, which is "
                                          rf"not installed: pip install 'usae\[tracking\]' \(or pip install "
                                          rf"{package}\)$")):
        load_config({"models": {"m": {"name": "x"}}, "tracking": {"backend": backend}})


def test_tracking_settings_are_checked_by_name():
    with pytest.raises(ValueError, match=r"tracking.backend = 'mlflow' is not allowed; choose one of \['none', "
                                         r"'tensorboard', 'wandb'\]"):
        TrackingConfig(backend="mlflow")
    with pytest.raises(ValueError, match="tracking.mode = 'online!' is not allowed"):
        TrackingConfig(mode="online!")
    with pytest.raises(ValueError, match=r"tracking.tags lists a tag twice: \['a', 'a'\]"):
        TrackingConfig(tags=("a", "a"))


def test_no_tracking_writes_no_tracker_files(tmp_path):
    train_usae(open_arrays(_arrays(tmp_path)), SAE, TRAIN, tmp_path / "run", tracking=TrackingConfig())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "model", "train_log.parquet"]


def _arrays(tmp_path, n=600, widths=(6, 10)):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n, 4)).astype(np.float32)
    paths = {f"m{i}": tmp_path / f"m{i}.npy" for i in range(len(widths))}
    for (name, path), d in zip(paths.items(), widths):
        np.save(path, base @ rng.normal(size=(4, d)).astype(np.float32))
    return paths


def _killed_then_resumed(tmp_path, tracking):
    """Train, killed after step 12 with its newest checkpoint lost (so the tracker already has a row
    the resumed run logs again), then resumed to the end; the run folder and its Parquet log."""
    paths, run = _arrays(tmp_path), tmp_path / "run"
    train_usae(open_arrays(paths), SAE, TRAIN, run, tracking=tracking, stop_after=12)
    newest = max(find_checkpoints(run / "checkpoints"))
    newest.path.unlink()
    train_usae(open_arrays(paths), SAE, TRAIN, run, tracking=tracking)
    return run, pd.read_parquet(run / "train_log.parquet")


def test_tensorboard_holds_every_row_once_after_a_resume_and_the_evaluation(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is the `tracking` extra: pip install 'usae[tracking]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, log = _killed_then_resumed(tmp_path, TrackingConfig(backend="tensorboard"))
    track_evaluation(TrackingConfig(backend="tensorboard"), run / "model", METRICS)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3  # two training attempts, evaluation
    for name in ("m0", "m1"):
        loss = events.Scalars(f"train/loss/{name}")
        assert [e.step for e in loss] == log["step"].tolist() == [3, 7, 11, 15, 19, 23]
        np.testing.assert_allclose([e.value for e in loss], log[f"loss_{name}"], rtol=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx(log["lr"].tolist())
    r2 = events.Scalars("eval/r2_per_dim/m0/m1")
    assert [(e.step, e.value) for e in r2] == [(24, pytest.approx(0.5))]


def test_wandb_offline_run_is_resumed_by_id_and_gets_rows_and_evaluation(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is the `tracking` extra: pip install 'usae[tracking]'")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = TrackingConfig(backend="wandb", mode="offline", project="p", name="{run}-x", tags=("t1", "t2"))
    run, log = _killed_then_resumed(tmp_path, tracking)
    track_evaluation(tracking, run / "model", METRICS)
    key = json.loads((run / "model" / "config.json").read_text())["meta"]["fingerprint"]
    # One folder per start: both training attempts and the evaluation (W&B appends -1, -2 to a
    # folder name it has used within the same second).
    attempts = [_wandb_records(next(a.glob("*.wandb"))) for a in (run / "wandb").glob(f"offline-run-*-{run_id(key)}*")]
    assert len(attempts) == 3
    headers = [next(r.run for r in records if r.WhichOneof("record_type") == "run") for records in attempts]
    for header in headers:
        assert (header.run_id, header.display_name, header.project, list(header.tags)) == (
            run_id(key), "run-x", "p", ["t1", "t2"])
    histories = [_items(records, "history") for records in attempts]
    last = next(i for i, h in enumerate(histories) if log["step"].max() in h)
    resumed = histories[last]
    config = {i.key: json.loads(i.value_json) for i in headers[last].config.update}
    assert config["train"]["lr"] == 0.003 and config["models"] == ["m0", "m1"]
    assert sorted(resumed) == log["step"].tolist()  # offline, the resumed attempt sends every row again
    for _, row in log.iterrows():
        assert resumed[row["step"]]["train/loss/m0"] == pytest.approx(row["loss_m0"])
        assert resumed[row["step"]]["train/dead/m1"] == pytest.approx(row["dead_m1"])
    summaries = [values for records in attempts for values in _items(records, "summary").values()]
    evaluation = next(v for v in summaries if "eval/l0/m1" in v)
    assert evaluation["eval/r2_per_dim/m1/m0"] == pytest.approx(0.4) and evaluation["eval/l0/m1"] == pytest.approx(3.5)


def _items(records, kind):
    """The ``history`` rows by step, or the ``summary`` updates in order, of a W&B run file's records."""
    found = {}
    for n, record in enumerate(r for r in records if r.WhichOneof("record_type") == kind):
        items = record.history.item if kind == "history" else record.summary.update
        step = record.history.step.num if kind == "history" else n
        found[step] = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
    return found


def _wandb_records(path):
    """The records of a W&B run file (LevelDB log format: 32 KiB blocks of checksum, length, type, data)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is whole
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
