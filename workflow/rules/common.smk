# Config validation, path patterns and input functions shared by every rule file.

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import usae
from usae import paths
from usae.backbones.geometry import check_geometry
from usae.config import load_config, to_dict

validate(config, "../schemas/config.schema.yaml")
try:
    PIPE = load_config(config)
    if workflow.is_main_process:  # once, in the driver; cluster jobs re-read the Snakefile
        check_geometry(PIPE)  # shapes from weightless models: layer depth, common grid
except ValueError as err:
    raise WorkflowError(f"invalid config: {err}") from None

RESULTS = PIPE.results
DATASET = PIPE.dataset.name


def stage_pattern(pattern, **fields):
    """A usae.paths pattern with the fixed fields filled and the wildcards left open."""
    keep = {"dataset": DATASET, "model": "{model}", "layer": "{layer}", "part": "{part}",
            "rule": "{rule}", "name": "{name}", "run": "{run}"}
    keep.update(fields)
    return pattern.format(root=RESULTS, **keep)


def log_path(rule, name):
    return stage_pattern(paths.LOG, rule=rule, name=name)


def benchmark_path(rule, name):
    return stage_pattern(paths.BENCHMARK, rule=rule, name=name)


wildcard_constraints:
    model="|".join(sorted(PIPE.models)),
    layer=r"final|block\d+",
    part=r"\d+",
    run="|".join(sorted(PIPE.runs)),


def model_spec(wildcards):
    """The one model's settings, as a plain dict in a fixed key order."""
    spec = PIPE.models[wildcards.model]
    if spec.layer_tag != wildcards.layer:
        raise WorkflowError(f"{wildcards.model}: layer {wildcards.layer} is not the configured {spec.layer_tag}")
    return to_dict(spec)


def extraction_parts(wildcards):
    return [
        stage_pattern(paths.EXTRACT_PART, model=wildcards.model, layer=wildcards.layer, part=k)
        for k in range(PIPE.extract.n_parts)
    ]


def aligned_stores():
    return [
        stage_pattern(paths.ALIGNED, model=key, layer=spec.layer_tag)
        for key, spec in sorted(PIPE.models.items())
    ]


def run_stores(wildcards):
    """Aligned stores of the run's models, in the run's model order."""
    run = PIPE.runs[wildcards.run]
    return [stage_pattern(paths.ALIGNED, model=m, layer=PIPE.models[m].layer_tag) for m in run.models]


def run_params(wildcards):
    """Exactly what one run's training depends on, as plain data in a fixed key order."""
    run = PIPE.runs[wildcards.run]
    return {"models": list(run.models), "sae": to_dict(run.sae), "train": to_dict(run.train)}


def trained_models():
    return [stage_pattern(paths.RUN_MODEL, run=key) for key in sorted(PIPE.runs)]


def evaluations():
    return [stage_pattern(paths.RUN_EVAL, run=key) for key in sorted(PIPE.runs)]


def reports():
    return [stage_pattern(paths.RUN_REPORT, run=key) for key in sorted(PIPE.runs)]


def all_runs_evaluated(wildcards):
    """Every run's model and evaluation: each report compares all runs."""
    keys = sorted(PIPE.runs)
    return [stage_pattern(paths.RUN_MODEL, run=k) for k in keys] + [stage_pattern(paths.RUN_EVAL, run=k) for k in keys]
