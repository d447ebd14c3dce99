"""Rule extract_activations: one model, one layer, one manifest part -> one Zarr store."""

import torch

from usae import paths
from usae.activations.extract import extract_activations
from usae.config import BackboneSpec, ExtractConfig, from_dict
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
spec = from_dict(BackboneSpec, snakemake.params.spec, section=f"models.{snakemake.wildcards.model}")
cfg = from_dict(ExtractConfig, snakemake.params.cfg, section="extract")
extract_activations(snakemake.input.manifest, spec, cfg, int(snakemake.wildcards.part),
                    paths.store_of(snakemake.output.store))
