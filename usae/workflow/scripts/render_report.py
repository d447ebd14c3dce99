"""Rule render_report: the static report site of one run, comparing all runs."""

from pathlib import Path

from usae.report.build import build_report
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
run_dir = Path(snakemake.params.run_dir)
others = {name: run_dir.parent / name for name in snakemake.params.runs}
maco = [snakemake.input.maco] if isinstance(snakemake.input.maco, str) else list(snakemake.input.maco)
build_report(run_dir, snakemake.input.manifest, snakemake.output[0], other_runs=others,
             maco_dir=maco[0] if maco else None, test_sets=snakemake.params.test_sets)
