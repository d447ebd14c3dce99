"""The workflow shipped inside the package: ``usae workflow``, and a built wheel running it.

The wheel test installs into a fresh virtual environment that sees this environment's packages
through a ``.pth`` file (no download), from a copy of the sources, and runs in a folder outside
the repository, so only what the wheel ships can be found.
"""

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from usae import workflow
from usae.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "workflow" / "tiny_config.yaml"


@pytest.fixture(autouse=True)
def _restore_logging():
    """``main`` configures the root logger, as an entry point does."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:], logging.root.level = handlers, level


def test_workflow_files_are_in_the_package():
    assert workflow.snakefile() == REPO / "usae" / "workflow" / "Snakefile"
    for name in ("rules/common.smk", "rules/train.smk", "scripts/train_usae.py", "schemas/config.schema.yaml",
                 "report/workflow.rst", "profiles/slurm/config.yaml", "profiles/workstation/config.yaml"):
        assert (workflow.WORKFLOW_DIR / name).is_file(), name
    # One copy: the repository's config.yaml is the package's template (a link in the package).
    assert (workflow.WORKFLOW_DIR / "config.yaml").resolve() == REPO / "config.yaml"


def test_snakefile_and_path_commands_print_the_packaged_workflow(capsys):
    assert main(["workflow", "snakefile"]) == 0
    assert capsys.readouterr().out == f"{workflow.snakefile()}\n"
    assert main(["workflow", "path"]) == 0
    assert capsys.readouterr().out == f"{workflow.WORKFLOW_DIR}\n"


def test_init_copies_the_config_and_profiles_and_refuses_to_overwrite(tmp_path, capsys):
    folder = tmp_path / "my_run"
    assert main(["workflow", "init", str(folder)]) == 0
    assert (folder / "config.yaml").read_text() == (REPO / "config.yaml").read_text()
    assert not (folder / "config.yaml").is_symlink()
    assert sorted(p.relative_to(folder).as_posix() for p in (folder / "profiles").rglob("*") if p.is_file()) == [
        "profiles/slurm/config.yaml", "profiles/slurm/driver.sbatch", "profiles/workstation/config.yaml"]
    assert "snakemake -s" in capsys.readouterr().out
    (folder / "config.yaml").write_text("edited")
    assert main(["workflow", "init", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'config.yaml'}, {folder / 'profiles'} exist(s) already" in err and "--force" in err
    assert (folder / "config.yaml").read_text() == "edited"
    assert main(["workflow", "init", str(folder), "--force"]) == 0
    assert (folder / "config.yaml").read_text() == (REPO / "config.yaml").read_text()


@pytest.mark.slow
def test_a_built_wheel_runs_the_pipeline_outside_the_repository(tmp_path):
    """README "Installing from a wheel": ``usae workflow init``, then ``snakemake -s "$(usae workflow snakefile)"``."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".snakemake", "results", "build", "*.egg-info", "__pycache__", "tests", "benchmarks"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((tmp_path / "dist").glob("usae-*.whl"))
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=work, env=env, capture_output=True, text=True, timeout=600)
    work.mkdir()
    where = subprocess.run([python, "-c", "import usae; print(usae.__file__)"], **run).stdout.strip()
    assert Path(where).is_relative_to(Path(site)), where  # the wheel's usae, not the repository's
    assert subprocess.run([venv / "bin" / "usae", "workflow", "init", "."], **run).returncode == 0
    assert (work / "config.yaml").read_text() == (REPO / "config.yaml").read_text()  # the link's target shipped
    shutil.copyfile(TINY, work / "config.yaml")
    snakefile = subprocess.run([venv / "bin" / "usae", "workflow", "snakefile"], **run).stdout.strip()
    assert Path(snakefile).is_relative_to(Path(site)), snakefile
    dry = subprocess.run([python, "-m", "snakemake", "-s", snakefile, "--cores", "2", "-n"], **run)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "train_usae" in dry.stdout and "render_report" in dry.stdout
    manifest = subprocess.run([python, "-m", "snakemake", "-s", snakefile, "--cores", "2",
                               "results/tiny/manifest.parquet"], **run)  # one job: a packaged script runs
    assert manifest.returncode == 0, manifest.stdout + manifest.stderr
    assert (work / "results" / "tiny" / "manifest.parquet").is_file()
