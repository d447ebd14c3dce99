# The workflow ships inside the package (usae/workflow/), so that `pip install usae` can run it
# too (`snakemake -s "$(usae workflow snakefile)"`); from a clone, `snakemake --cores N` runs it
# through this file. Included as the main Snakefile would be: an `include:` directive would keep
# this (rule-less) file's default target, so `rule all` would no longer run by default.

workflow.include("usae/workflow/Snakefile", overwrite_default_target=True)
