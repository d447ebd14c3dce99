"""Rule extract_activations: one backbone, its layers, one manifest part -> one Zarr store."""

import torch

from usae import paths
from usae.activations.extract import extract_activations
from usae.config import BackboneSpec, ExtractConfig, from_dict, load_config, with_run_settings
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
specs = [from_dict(BackboneSpec, spec, section=f"models.{spec['key']}")
         for spec in snakemake.params.specs]
cfg = with_run_settings(from_dict(ExtractConfig, snakemake.params.cfg, section="extract"),
                        load_config(snakemake.config).extract)
extract_activations(snakemake.input.manifest, specs, cfg, int(snakemake.wildcards.part),
                    paths.store_of(snakemake.output.store))
