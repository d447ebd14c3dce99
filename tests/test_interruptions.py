"""Real interruptions: `usae` stage processes killed with SIGKILL mid-way, then rerun.

A killed extraction job resumes after its committed chunks and writes the store an
uninterrupted job writes; a killed training job resumes from its last checkpoint and ends
with the weights of an uninterrupted run. (The whole Snakemake process is killed in
tests/workflow/test_killed_pipeline.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from usae.activations.store import PROGRESS_FILE, open_store, partial_path
from usae.sae.model import USAE
from usae.training.checkpoint import find_checkpoints

pytestmark = pytest.mark.slow

CONFIG = {
    "results": "results",
    "dataset": {"name": "kill", "source": "synthetic", "val_fraction": 0.25,
                "synthetic": {"n_images": 64, "image_size": 64, "max_objects": 1}},
    "models": {
        "big": {"name": "vit_small_patch16_224", "pretrained": False, "image_size": 224,
                "kwargs": {"depth": 4, "embed_dim": 192, "num_heads": 3}},
        "small": {"name": "vit_small_patch16_224", "pretrained": False, "image_size": 64,
                  "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2}},
    },
    "extract": {"n_parts": 1, "batch_size": 4, "num_workers": 0, "device": "cpu", "images_per_chunk": 4},
    "prepare": {"grid": 4, "stats_images": 16, "images_per_chunk": 8},
    "sae": {"n_latents": 64, "k": 4, "aux_k": 8, "dead_tokens": 2000, "decode": "sparse"},
    "train": {"max_steps": 400, "batch_tokens": 64, "buffer_tokens": 512, "device": "cpu", "log_every": 10,
              "checkpoint_every": 20, "read_threads": 1},
    "runs": {"cut": {"models": ["small"]}, "whole": {"models": ["small"]}},
    "evaluate": {"device": "cpu"},
}


def usae(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "usae.cli", *args, "-c", "config.yaml"], cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"usae {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "usae.cli", *args, "-c", "config.yaml"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> float:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; return the time of the kill."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}; nothing was interrupted")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return time.time()


def workdir_with_config(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return path


def test_killed_extraction_job_resumes_and_equals_an_uninterrupted_one(tmp_path):
    cut, whole = workdir_with_config(tmp_path / "cut"), workdir_with_config(tmp_path / "whole")
    for workdir in (cut, whole):
        usae(workdir, "manifest")
    store = cut / "results/kill/acts/big/part0.zarr"
    progress = partial_path(store) / PROGRESS_FILE

    def committed() -> int:
        try:
            return json.loads(progress.read_text())["rows_done"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    killed_at = kill_when(start(cut, "extract", "--model", "big"), lambda: committed() >= 8,
                          "extraction committed 8 images")
    done = committed()
    assert 8 <= done < 64 and not store.exists()

    rerun = usae(cut, "extract", "--model", "big")
    assert f"resuming a killed job at image {done} of 64" in rerun.stderr
    usae(whole, "extract", "--model", "big")
    a, b = open_store(store), open_store(whole / "results/kill/acts/big/part0.zarr")
    for name in ("final/patches", "final/prefix", "rows", "valid"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    assert a.attrs["resumed_at"] == done and b.attrs["resumed_at"] == 0
    first_chunk = store / "final" / "patches" / "c" / "0" / "0" / "0"
    assert first_chunk.stat().st_mtime < killed_at, "chunks committed before the kill must not be recomputed"


def test_killed_training_resumes_from_its_last_checkpoint_with_the_same_result(tmp_path):
    workdir = workdir_with_config(tmp_path / "w")
    for stage in ("manifest", "extract", "prepare"):
        usae(workdir, stage, *(["--model", "small"] if stage != "manifest" else []))
    checkpoints = workdir / "results/runs/cut/checkpoints"

    def saved_steps() -> list[int]:
        return sorted(c.step for c in find_checkpoints(checkpoints))

    kill_when(start(workdir, "train", "--run", "cut"), lambda: any(s >= 60 for s in saved_steps()),
              "a checkpoint at step 60 or later")
    last = max(saved_steps())
    assert last < 400 and not (workdir / "results/runs/cut/model").exists()

    rerun = usae(workdir, "train", "--run", "cut")
    assert f"(step {last})" in rerun.stderr and "resuming from" in rerun.stderr
    usae(workdir, "train", "--run", "whole")
    resumed = USAE.load(workdir / "results/runs/cut/model").state_dict()
    uninterrupted = USAE.load(workdir / "results/runs/whole/model").state_dict()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    assert os.path.getsize(workdir / "results/runs/cut/train_log.parquet") > 0
