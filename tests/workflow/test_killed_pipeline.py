"""The whole Snakemake process group killed with SIGKILL mid-run; the documented commands finish it.

README ("Running the pipeline"): after a crash or a kill, `snakemake --unlock` then the
same command with `--rerun-incomplete`.
"""

import base64
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from pipeline_helpers import REPO, planned_jobs, snakemake, write_config

from usae.sae.model import USAE

pytestmark = pytest.mark.slow


def test_killed_snakemake_is_finished_by_the_documented_commands(built, tmp_path):
    # Parts kept (extract.keep), so that finished extraction jobs can be checked as not redone; with
    # the default they are temp() and prepare deletes them (tests/workflow/test_kept_parts.py).
    write_config(tmp_path, **{"extract.keep": True})
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # A store is named in the rules by its zarr.json (usae.paths.store_marker), which appears when it is published;
    # Snakemake creates the store's folder when the job starts.
    first_store = tmp_path / "results/tiny/aligned/a14/final.zarr/zarr.json"
    deadline = time.monotonic() + 300
    while not first_store.exists():
        if driver.poll() is not None:
            pytest.fail(f"snakemake ended (exit {driver.returncode}) before the first aligned store appeared")
        if time.monotonic() > deadline:
            os.killpg(driver.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the first aligned store")
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and every job it started
    driver.wait(timeout=60)
    # Outputs of jobs Snakemake saw finish; a job killed after writing its output is redone, rightly.
    cut_short = {base64.b64decode(m.name).decode() for m in (tmp_path / ".snakemake/incomplete").glob("*")}
    outputs = [*(tmp_path / "results/tiny/acts").glob("*/part*.zarr/zarr.json"), first_store]
    finished = {p: p.stat().st_mtime_ns for p in outputs if str(p.relative_to(tmp_path)) not in cut_short}
    assert len(finished) >= 2, "the a14 extraction parts were finished before its preparation started"
    assert not (tmp_path / "results/runs/usae/model").exists(), "killed too late: nothing left to finish"

    blocked = snakemake(tmp_path, check=False)  # the plain command refuses, and says what to do
    message = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0 and ("--unlock" in message or "--rerun-incomplete" in message)
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete")

    assert planned_jobs(tmp_path) == {}, "the rerun left work undone"
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was finished before the kill but was recomputed"
    for run in ("usae", "k2", "solo_b16"):
        resumed = USAE.load(tmp_path / f"results/runs/{run}/model").state_dict()
        uninterrupted = USAE.load(built / f"results/runs/{run}/model").state_dict()
        for key, value in uninterrupted.items():
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{run}: {key}")
    assert (tmp_path / "results/runs/usae/report/index.html").exists()
