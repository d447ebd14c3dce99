"""The workflow on a cluster: every job a separate process that shares only the file system.

- The tiny pipeline runs through Snakemake's generic cluster executor with a local submit
  script (cluster/submit.sh): each job is started as a detached process with a clean
  environment and its own job id, exactly as a batch scheduler would.
- The SLURM profile (usae/workflow/profiles/slurm) is dry-run with the SLURM executor plugin, and
  its GPU jobs are submitted through the plugin to a fake SLURM (cluster/fake_slurm: an sbatch
  that records its arguments and refuses, no-op sacct, sinfo, ...) to check their sbatch options.
- The workstation profile lets one GPU job run at a time.
"""

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import REPO, planned_jobs, snakemake, write_config

CLUSTER = Path(__file__).with_name("cluster")
SLURM_PROFILE = REPO / "usae" / "workflow" / "profiles" / "slurm"
GPU_RULES = {"extract_activations", "train_usae", "evaluate_usae"}
# What a job may see of the environment: what submit.sh passes, and what sh adds itself.
CLEAN_ENV = {"PATH", "HOME", "LANG", "PWD", "OLDPWD", "SHLVL", "_"}
DRIVER_ONLY = "USAE_TEST_DRIVER_ONLY"  # set in the driver's environment, never in a job's


def run_driver(workdir: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Snakemake on the repository's workflow in ``workdir``; also returns the driver's pid."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), proc.pid


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """The tiny pipeline (one run) through the generic cluster executor and submit.sh."""
    workdir = tmp_path_factory.mktemp("cluster")
    write_config(workdir, runs={"usae": {}})
    scheduler = workdir / "scheduler"
    submit = f"sh {CLUSTER / 'submit.sh'} {scheduler} {{rule}}"
    proc, driver_pid = run_driver(
        workdir, "--executor", "cluster-generic", "--cluster-generic-submit-cmd", submit,
        "--jobs", "4", "--seconds-between-status-checks", "1", "--latency-wait", "10",
        env={DRIVER_ONLY: "1"},
    )
    assert proc.returncode == 0, f"cluster run failed:\n{proc.stdout}"
    return workdir, scheduler, job_stats(proc.stdout), driver_pid


def job_stats(out: str) -> dict[str, int]:
    """The jobs Snakemake planned, by rule (the 'Job stats' table it prints first)."""
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def submitted_jobs(scheduler: Path) -> list[tuple[str, str]]:
    lines = (scheduler / "submissions.tsv").read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines]


@pytest.mark.slow
def test_every_job_was_submitted_through_the_scheduler(cluster_run):
    workdir, scheduler, expected, _ = cluster_run
    jobs = submitted_jobs(scheduler)
    # Every job of the DAG but the target rule `all` (no action, run by the driver itself).
    assert Counter(rule for _, rule in jobs) == Counter({r: n for r, n in expected.items() if r != "all"})
    assert expected["extract_activations"] == 4  # 2 models x 2 manifest parts, each its own job
    for job_id, rule in jobs:
        job = scheduler / "jobs" / job_id
        assert (job / "exit").read_text().strip() == "0", (job / "stderr").read_text()
        assert re.search(rf"^(local)?rule {rule}:$", (job / "stderr").read_text(), re.M), job_id


@pytest.mark.slow
def test_each_job_ran_in_its_own_process_with_a_clean_environment(cluster_run):
    _, scheduler, _, driver_pid = cluster_run
    jobs = submitted_jobs(scheduler)
    pids = [int((scheduler / "jobs" / job_id / "pid").read_text()) for job_id, _ in jobs]
    assert len(set(pids)) == len(jobs)
    assert driver_pid not in pids and os.getpid() not in pids
    for job_id, _ in jobs:
        names = {line.split("=", 1)[0] for line in (scheduler / "jobs" / job_id / "env").read_text().splitlines()}
        assert DRIVER_ONLY not in names and names <= CLEAN_ENV, (job_id, names - CLEAN_ENV)


@pytest.mark.slow
def test_cluster_run_outputs_are_complete_and_the_model_loads(cluster_run):
    torch = pytest.importorskip("torch")
    import usae

    workdir, _, _, _ = cluster_run
    results = workdir / "results"
    for model in ("a14", "b16"):
        assert (results / "tiny" / "aligned" / model / "final.zarr").is_dir()
        assert (results / "tiny" / "aligned" / model / "final.stats.json").is_file()
    run = results / "runs" / "usae"
    assert (run / "train_log.parquet").is_file()
    assert (run / "eval" / "metrics.json").is_file()
    assert (run / "report" / "index.html").is_file()
    model = usae.USAE.load(run / "model")
    assert model.names == ["a14", "b16"]
    codes = model.encode("b16", torch.randn(3, model.dims["b16"]))
    assert codes.shape == (3, model.cfg.n_latents)
    assert ((codes != 0).sum(dim=1) <= model.cfg.k).all()
    # What the jobs recorded on the shared file system is all the driver needs: nothing reruns.
    assert planned_jobs(workdir) == {}


def rule_names() -> set[str]:
    names = set()
    for path in (REPO / "usae" / "workflow" / "rules").glob("*.smk"):
        names |= set(re.findall(r"^rule (\w+):", path.read_text(), re.M))
    return names


def dry_run_resources(out: str) -> dict[str, list[dict[str, str]]]:
    """Each planned job's resources, by rule, from a dry run's job listing."""
    found: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if head and res:
            pairs = (item.split("=", 1) for item in res.group(1).split(", "))
            found.setdefault(head.group(1), []).append({k: v for k, v in pairs})
    return found


@pytest.mark.slow
def test_slurm_profile_schedules_every_rule_with_its_resources(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    write_config(tmp_path, **{"extract.device": "auto", "train.device": "auto", "evaluate.device": "auto"})
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    out = snakemake(tmp_path, "-n", "--workflow-profile", str(SLURM_PROFILE)).stdout
    jobs = dry_run_resources(out)
    assert set(jobs) == rule_names() | {"all"}
    for rule, listed in jobs.items():
        if rule == "all":
            continue
        for res in listed:
            assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, rule
            assert "slurm_partition" in res and "slurm_account" in res, rule
            assert res.get("gpu", "0") == ("1" if rule in GPU_RULES else "0"), (rule, res)
            for key, value in profile["set-resources"].get(rule, {}).items():
                assert res[key] == str(value), (rule, key, res[key], value)


@pytest.mark.slow
def test_slurm_profile_submits_gpu_jobs_with_their_sbatch_options(cluster_run, tmp_path):
    """Extraction and training submitted through the SLURM plugin to a fake SLURM."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    built, _, _, _ = cluster_run
    shutil.copytree(built / "results", tmp_path / "results")
    write_config(tmp_path, runs={"usae": {}}, **{"extract.device": "auto", "train.device": "auto"})
    # The profile as a user edits it: partitions and account of the site.
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="cpu", slurm_account="testacct")
    for resources in profile["set-resources"].values():
        resources["slurm_partition"] = "gpu"
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    bin_dir, records = tmp_path / "bin", tmp_path / "sbatch_calls"
    shutil.copytree(CLUSTER / "fake_slurm", bin_dir)
    records.mkdir()
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    part, model = "results/tiny/acts/a14/part0.zarr/zarr.json", "results/runs/usae/model"  # store: its marker
    proc, _ = run_driver(
        tmp_path, "--workflow-profile", str(tmp_path / "profile"), "--retries", "0",
        "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
        # Only these two jobs, both ready at once: prepared stores count as given inputs.
        "--rerun-triggers", "mtime", "--allowed-rules", "extract_activations", "train_usae",
        "--force", part, model,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(records),
             "FAKE_SLURM_ACCOUNT": "testacct"},
    )
    # The fake sbatch records each call and refuses it: both jobs fail, nothing runs.
    assert proc.returncode != 0 and "nothing submitted" in proc.stdout, proc.stdout
    calls = {}
    for path in records.glob("sbatch.*"):
        args = path.read_bytes().decode().split("\0")[:-1]
        rule = re.match(r"rule_(\w+?)_wildcards", args[args.index("--comment") + 1]).group(1)
        calls[rule] = args
    assert set(calls) == {"extract_activations", "train_usae"}, proc.stdout
    threads = profile["set-threads"]
    for rule, args in calls.items():
        res = profile["set-resources"][rule]

        def option(flag, args=args):
            return args[args.index(flag) + 1]

        assert option("-p") == "gpu" and option("-A") == "testacct", args
        assert "--gpus=1" in args, args
        assert option("--mem") == str(res["mem_mb"]) and option("-t") == str(res["runtime"]), args
        assert f"--cpus-per-task={threads[rule]}" in args, args
        assert "--requeue" in args, args  # slurm-requeue: preempted jobs go back to the queue


def test_workstation_profile_runs_one_gpu_job_at_a_time():
    profile = yaml.safe_load((REPO / "usae" / "workflow" / "profiles" / "workstation" / "config.yaml").read_text())
    assert profile["resources"] == {"gpu": 1}
    # The limit binds only jobs that declare the resource: every rule that may use CUDA does.
    bodies = dict(re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)",
                             "".join(p.read_text() for p in (REPO / "usae" / "workflow" / "rules").glob("*.smk")), re.M))
    for rule in GPU_RULES:
        declared = re.search(r"^\s+gpu=(?!0,)", bodies[rule], re.M) is not None  # not a fixed gpu=0
        assert declared or profile.get("set-resources", {}).get(rule, {}).get("gpu") == 1, rule
