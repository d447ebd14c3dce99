"""Where every stage writes, as patterns shared by the Snakefile and the ``usae`` command.

Fields in braces are Snakemake wildcards; ``format`` them to get concrete paths.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "{root}/{dataset}/manifest.parquet"
SYNTHETIC_DIR = "{root}/{dataset}/synthetic"
EXTRACT_PART = "{root}/{dataset}/acts/{model}/{layer}/part{part}.zarr"
ALIGNED = "{root}/{dataset}/aligned/{model}/{layer}.zarr"
ALIGNED_STATS = "{root}/{dataset}/aligned/{model}/{layer}.stats.json"
RUN_DIR = "{root}/runs/{run}"
RUN_MODEL = "{root}/runs/{run}/model"
RUN_LOG = "{root}/runs/{run}/train_log.parquet"
RUN_EVAL = "{root}/runs/{run}/eval"
RUN_REPORT = "{root}/runs/{run}/report"
LOG = "{root}/logs/{rule}/{name}.log"
BENCHMARK = "{root}/benchmarks/{rule}/{name}.tsv"


def stage_path(pattern: str, root: str | Path = "results", **fields: object) -> Path:
    """Fill a pattern of this module with concrete values."""
    return Path(pattern.format(root=root, **fields))
