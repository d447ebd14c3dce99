# Config reading, wildcard constraints and input functions shared by every rule file.
# Paths come from usae.paths (shared with the `usae` command); wildcards stay open there.
#
# Cluster jobs re-read the Snakefile, so everything imported at this level is paid by
# every job: only usae.config and usae.paths (no torch, timm or transformers).

import re

from snakemake.exceptions import WorkflowError

import usae
from usae import paths
from usae.config import extraction_groups, load_config, part_settings, result_settings, to_dict
from usae.config.files import read_config_file

DEFAULT_CONFIG = "config.yaml"

try:
    # A --configfile is the whole config: keys it leaves out take the defaults declared in
    # usae/config, never config.yaml's values (a `configfile:` directive would merge the two).
    # config.yaml is read only without a --configfile, by what that directive runs, which
    # records it (report, cluster source archive) and applies --config key=value on top.
    for _given in workflow.overwrite_configfiles:  # parsed by Snakemake already; ours also refuses repeated keys
        read_config_file(_given)
    if not workflow.overwrite_configfiles:
        read_config_file(DEFAULT_CONFIG)  # Snakemake's message for bad YAML names no file, line or column
        workflow.configfile(DEFAULT_CONFIG)
    PIPE = load_config(config)  # the same checks and messages as the `usae` command
    if workflow.is_main_process:  # once, in the driver: it builds every model not recorded as checked
        from usae.backbones.geometry import check_geometry
        from usae.data.sizes import check_data_sizes

        check_data_sizes(PIPE)  # splits and batch sizes, from the config or an existing manifest
        check_geometry(PIPE, paths.geometry_cache(PIPE))  # shapes from weightless models: layer depth, grid
except (ValueError, FileNotFoundError) as err:
    raise WorkflowError(f"invalid config: {err}") from None
EXTRACTION_GROUPS = extraction_groups(PIPE.models)  # one extraction job serves the models that differ only in layer

if workflow.is_main_process:  # a damaged model would otherwise pass as done, and its evaluation rerun fail
    from usae.sae.integrity import damaged_models

    if damaged := damaged_models(paths.for_runs(PIPE, paths.run_model)):
        raise WorkflowError("\n".join(damaged))

    from snakemake.logging import logger
    from usae.training.staleness import stale_outputs

    for stale in stale_outputs(PIPE):  # Snakemake's params trigger needs .snakemake/metadata
        logger.warning(stale)


wildcard_constraints:
    model="|".join(sorted(PIPE.models)),
    backbone="|".join(sorted(EXTRACTION_GROUPS)),
    layer="|".join(sorted({re.escape(spec.layer_tag) for spec in PIPE.models.values()})),  # final, block<i>, names
    part=r"\d+",
    run="|".join(sorted(PIPE.runs)),


def backbone_specs(wildcards):
    """The settings of every model one extraction job serves (same model, one layer each), as plain dicts."""
    return [to_dict(PIPE.models[key]) for key in EXTRACTION_GROUPS[wildcards.backbone]]


def check_layer(wildcards):
    """The model's layer tag, refusing a path whose layer is not the configured one."""
    spec = PIPE.models[wildcards.model]
    if spec.layer_tag != wildcards.layer:
        raise WorkflowError(f"{wildcards.model}: layer {wildcards.layer} is not the configured {spec.layer_tag}")
    return spec.layer_tag


def extraction_output(store):
    """An extraction part's output, its store marker: temp() unless extract.keep, so that once the aligned store
    exists a deleted part is no reason to rerun. prepare_activations deletes the whole store; Snakemake's own
    temp removal would delete only the marker and then finds it gone, which it allows."""
    marker = paths.store_marker(store)
    return marker if PIPE.extract.keep else temp(marker)


def extraction_settings():
    """The extract keys a part depends on (part_settings): not `num_workers`, which the script reads from the
    whole config, nor `keep`, which only says how long a part stays (prepare's param)."""
    return part_settings(PIPE.extract)


def extraction_parts(wildcards):
    """Every extraction part that holds the model's layer, as store markers (paths.store_marker)."""
    return [paths.store_marker(p) for p in paths.extract_parts(PIPE, wildcards.model)]


def run_stores(wildcards):
    """Aligned stores of the run's models, in the run's model order, as store markers."""
    return [paths.store_marker(p) for p in paths.run_stores(PIPE, wildcards.run).values()]


def run_params(wildcards):
    """Exactly what one run's training depends on, as plain data in a fixed key order: the train keys that
    change how it runs, not what it computes, are left out (the script reads them from the whole config),
    so changing them reruns nothing, and so are keys added later while at the default that older results
    were made with, so adding a key reruns nothing either (result_settings)."""
    run = PIPE.runs[wildcards.run]
    return {"models": list(run.models), "sae": result_settings(run.sae), "train": result_settings(run.train)}


def all_runs_evaluated(wildcards):
    """Every run's model and evaluation: each report compares all runs."""
    return paths.for_runs(PIPE, paths.run_model, paths.run_eval)
