"""Rule train_usae: train (or resume) one run's USAE on the aligned stores of its models."""

import torch

from usae import paths
from usae.config import SAEConfig, TrainConfig, from_dict, load_config, with_run_settings
from usae.config.tracking import workflow_tracking
from usae.runlog import configure_logging
from usae.training.loop import train_from_stores

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run = snakemake.params.run
section = f"runs.{snakemake.wildcards.run}"
stores = dict(zip(run["models"], [paths.store_of(p) for p in snakemake.input.stores]))
train = with_run_settings(from_dict(TrainConfig, run["train"], section=f"{section}.train"),
                          load_config(snakemake.config).runs[snakemake.wildcards.run].train)
train_from_stores(stores, from_dict(SAEConfig, run["sae"], section=f"{section}.sae"), train,
                  snakemake.output.model.removesuffix("/model"),
                  tracking=workflow_tracking(snakemake.config))
