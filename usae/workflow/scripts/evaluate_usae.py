"""Rules evaluate_usae and evaluate_test_set: metrics, concept table and heatmaps of one run on the
validation tokens, or on every image of a test set."""

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
test_set = snakemake.params.get("test_set", False)
metrics = evaluate_run(snakemake.input.model, stores, cfg, snakemake.output[0],
                       manifest_path=snakemake.input.manifest, synthetic_dir=snakemake.params.synthetic,
                       test_set=test_set)
if not test_set:  # a tracked run's evaluation is its training data's
    track_evaluation(workflow_tracking(snakemake.config), snakemake.input.model, metrics)
