"""Rule build_manifest: list, check and split the images of config section `dataset`."""

from usae.config import ManifestConfig, from_dict
from usae.data.manifest import build_manifest
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
cfg = from_dict(ManifestConfig, snakemake.params.cfg, section="dataset")
build_manifest(cfg, snakemake.output[0], workers=snakemake.threads)
