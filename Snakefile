# usae: Universal Sparse Autoencoders as a Snakemake pipeline.
# Stages: manifest -> extract -> prepare -> train -> evaluate -> report.
# Run: snakemake --cores N   (see README.md)

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        paths.all_targets(PIPE),
