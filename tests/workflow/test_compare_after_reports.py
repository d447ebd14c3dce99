"""The comparison page links every run's report, so the workflow builds it after the reports."""

import re
from pathlib import Path

from pipeline_helpers import snakemake, write_config


def test_compare_runs_waits_for_every_report(tmp_path: Path) -> None:
    write_config(tmp_path)
    dot = snakemake(tmp_path, "--dag").stdout
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)', dot, re.M))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)
    reports = {n for n, rule in labels.items() if rule == "render_report"}
    (compare,) = [n for n, rule in labels.items() if rule == "compare_runs"]
    assert len(reports) >= 2
    assert {a for a, b in edges if b == compare} >= reports
