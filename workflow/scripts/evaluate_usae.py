"""Rule evaluate_usae: metrics, concept table and heatmaps of one run on the validation tokens."""

import torch

from usae.config import EvaluateConfig, from_dict
from usae.evaluation.run import evaluate_run
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
cfg = from_dict(EvaluateConfig, snakemake.params.cfg, section="evaluate")
stores = dict(zip(snakemake.params.models, snakemake.input.stores))
evaluate_run(snakemake.input.model, stores, cfg, snakemake.output[0], manifest_path=snakemake.input.manifest,
             synthetic_dir=snakemake.params.synthetic)
