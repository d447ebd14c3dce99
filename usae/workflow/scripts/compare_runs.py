"""Rule compare_runs: one page comparing every run of the config."""

from pathlib import Path

from usae.report.compare import build_comparison
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
build_comparison({name: Path(folder) for name, folder in snakemake.params.runs.items()},
                 Path(snakemake.output[0]).parent, snakemake.params.test_sets)
