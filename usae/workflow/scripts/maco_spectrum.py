"""Rule maco_spectrum: the amplitude spectrum and colour correlation of the run's training images."""

from usae.maco.stage import dataset_spectrum
from usae.runlog import configure_logging

snakemake = globals()["snakemake"]  # injected by Snakemake
configure_logging(snakemake.log[0])
dataset_spectrum(snakemake.input.manifest, snakemake.output[0], size=snakemake.params.size,
                 n_images=snakemake.params.n_images, seed=snakemake.params.seed)
