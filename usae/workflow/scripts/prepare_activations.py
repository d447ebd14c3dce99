"""Rule prepare_activations: align one model's grid, standardise, write the aligned store."""

import torch

from usae import paths
from usae.activations.prepare import prepare_activations
from usae.config import PrepareConfig, from_dict
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
cfg = from_dict(PrepareConfig, snakemake.params.cfg, section="prepare")
prepare_activations([paths.store_of(p) for p in snakemake.input.parts], snakemake.input.manifest, cfg,
                    paths.store_of(snakemake.output.store), snakemake.output.stats, layer=snakemake.params.layer,
                    num_workers=snakemake.threads,
                    reference_stats=snakemake.input.get("reference"),  # a test set's: the training data's
                    keep_parts=snakemake.params.keep,  # false: deleted once every layer they hold is prepared
                    sharing=snakemake.params.sharing)
