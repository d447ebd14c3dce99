# usae: Universal Sparse Autoencoders as a Snakemake pipeline.
# Stages: manifest -> extract -> prepare -> train -> evaluate -> report.
# Run: snakemake --cores N   (see README.md)

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


# No `configfile:` here: it would merge a --configfile into config.yaml. A --configfile is the
# whole config; config.yaml is read only without one (workflow/rules/common.smk).


include: "workflow/rules/common.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/maco.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        paths.all_targets(PIPE),
