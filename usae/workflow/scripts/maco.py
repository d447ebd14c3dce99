"""Rule maco: one optimised image per model for each chosen concept of one run, with its scores."""

import torch

from usae.config import BackboneSpec, MacoConfig, from_dict
from usae.maco.stage import run_maco
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
cfg = from_dict(MacoConfig, snakemake.params.cfg, section="maco")
specs = {m: from_dict(BackboneSpec, spec, section=f"models.{m}") for m, spec in snakemake.params.specs.items()}
run_maco(snakemake.input.model, snakemake.input.eval, snakemake.input.manifest, snakemake.input.spectrum, specs, cfg,
         snakemake.output[0])
