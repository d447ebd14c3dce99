"""A cluster job re-reads the Snakefile: that parse must not import torch, timm or transformers.

Every job pays for what the Snakefile imports (about 25 s here for the three); only the
driver checks model shapes, so only the driver may import them. The test parses the
workflow for real, in the mode Snakemake's executors give jobs (``--mode remote``), and
reads the imports from ``python -X importtime``.
"""

import re
import subprocess
import sys

from pipeline_helpers import REPO, write_config

HEAVY = ("torch", "timm", "transformers")


def _imported(workdir, *args):
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "1", "-n", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set(re.findall(r"^import time:.*\|\s+([\w.]+)$", proc.stderr, re.M))


def test_job_parse_imports_no_torch(tmp_path):
    write_config(tmp_path)
    modules = _imported(tmp_path, "--mode", "remote")
    assert "usae.config" in modules  # the config was read
    assert not [m for m in HEAVY if m in modules], "a job's parse of the Snakefile imported a model library"


def test_driver_parse_checks_the_geometry(tmp_path):
    write_config(tmp_path)
    assert "usae.backbones.geometry" in _imported(tmp_path)
