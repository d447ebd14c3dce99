"""Rule evaluate_usae: metrics, concept table and heatmaps of one run on the validation tokens."""

import torch

from usae import paths
from usae.config import EvaluateConfig, from_dict
from usae.config.tracking import workflow_tracking
from usae.evaluation.run import evaluate_run
from usae.runlog import configure_logging
from usae.tracking import track_evaluation

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
cfg = from_dict(EvaluateConfig, snakemake.params.cfg, section="evaluate")
stores = dict(zip(snakemake.params.models, [paths.store_of(p) for p in snakemake.input.stores]))
metrics = evaluate_run(snakemake.input.model, stores, cfg, snakemake.output[0],
                       manifest_path=snakemake.input.manifest, synthetic_dir=snakemake.params.synthetic)
track_evaluation(workflow_tracking(snakemake.config), snakemake.input.model, metrics)
