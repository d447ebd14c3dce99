"""Time of a ``snakemake -n`` start: models checked from scratch vs recorded as checked, same config, one run.

    python benchmarks/bench_driver_start.py [--config config.yaml] [--repeats 3] [--out PATH]

Every start of the workflow checks the config before any job (``usae/workflow/rules/common.smk``):
each key, the data sizes, and each model's shapes, read by building the model without weights
(torch, the model library, an ONNX file converted). Models that passed are recorded in
``<results>/.cache/geometry`` (:mod:`usae.backbones.geometry_cache`). This times a dry run of
``--config`` in a scratch folder, alternating: ``cold`` (the records deleted first, as at a
first start or after an upgrade) and ``warm`` (recorded by the start before). The dry run plans
the whole pipeline, as the first command after a config change does. Weights files are read
from the weights cache, so fill it first (``usae weights -c CONFIG``) for pretrained models.

Prints min / median / max seconds of each and the ratio of the medians, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def dry_run(workdir: Path) -> float:
    """Seconds of one ``snakemake -n`` of the repository's workflow in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", "-n"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--repeats", type=int, default=3, help="starts of each kind, interleaved")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/driver_start.json"))
    args = parser.parse_args()
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="usae-driver-") as scratch:
        workdir = Path(scratch)
        cfg = yaml.safe_load(Path(args.config).read_text())
        cfg["results"] = str(workdir / "results")
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
        records = workdir / "results/.cache/geometry"
        dry_run(workdir)  # untimed: the page cache holds the libraries for both kinds alike
        for _ in range(args.repeats):
            shutil.rmtree(records, ignore_errors=True)
            times["cold"].append(dry_run(workdir))
            times["warm"].append(dry_run(workdir))
    summary = {kind: {"min": min(t), "median": statistics.median(t), "max": max(t), "runs": t}
               for kind, t in times.items()}
    summary["cold_over_warm"] = summary["cold"]["median"] / summary["warm"]["median"]
    summary["config"] = args.config
    for kind in ("cold", "warm"):
        s = summary[kind]
        print(f"{kind}: {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} s (min / median / max)")
    print(f"cold / warm (medians): {summary['cold_over_warm']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
