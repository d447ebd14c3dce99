"""Where every stage writes, as functions of the pipeline config: the one copy of the
results layout, used by the rule files (``usae/workflow/rules/*.smk``) and the ``usae`` command.

A function's wildcard arguments default to Snakemake placeholders (``"{model}"``), so
``aligned(cfg)`` is a rule's output pattern and ``aligned(cfg, "dino", "final")`` a
concrete path. The data paths take ``dataset=``: a test set's name (``config test_sets``), or
:data:`TEST_SET` for the test-set rules' patterns; the training dataset when left out. The ``{root}``/``{dataset}`` patterns below are the layout itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from usae.config.data import extraction_group, extraction_groups

if TYPE_CHECKING:
    from usae.config import PipelineConfig

MANIFEST = "{root}/{dataset}/manifest.parquet"
SYNTHETIC_DIR = "{root}/{dataset}/synthetic"
EXTRACT_PART = "{root}/{dataset}/acts/{backbone}/part{part}.zarr"
ALIGNED = "{root}/{dataset}/aligned/{model}/{layer}.zarr"
ALIGNED_STATS = "{root}/{dataset}/aligned/{model}/{layer}.stats.json"
RUN_DIR = "{root}/runs/{run}"
RUN_MODEL = "{root}/runs/{run}/model"
RUN_LOG = "{root}/runs/{run}/train_log.parquet"
RUN_EVAL = "{root}/runs/{run}/eval"
RUN_EVAL_ON = "{root}/runs/{run}/eval_{test_set}"
RUN_REPORT = "{root}/runs/{run}/report"
RUN_MACO = "{root}/runs/{run}/maco"
MACO_SPECTRUM = "{root}/{dataset}/maco_spectrum.npz"
COMPARE = "{root}/compare"
LOG = "{root}/logs/{rule}/{name}.log"
BENCHMARK = "{root}/benchmarks/{rule}/{name}.tsv"
GEOMETRY_CACHE = "{root}/.cache/geometry"

MODEL, LAYER, PART, RUN, TEST_SET, BACKBONE = "{model}", "{layer}", "{part}", "{run}", "{test_set}", "{backbone}"
"""Snakemake wildcard placeholders: the default of every wildcard argument below."""


STORE_MARKER = "zarr.json"
"""The file of a Zarr store that Snakemake tracks in place of the store's folder (see :func:`store_marker`)."""
EVAL_METRICS = "metrics.json"
"""An evaluation's summary in its folder (:func:`run_eval`), with the ``evaluate`` settings it used (key ``config``)."""
MACO_REPORT = "maco.json"
"""The MACO stage's summary in its folder (:func:`run_maco`), with the ``maco`` settings it used (key ``settings``)."""


def store_marker(store: str | Path) -> str:
    """The file a rule names for Zarr store ``store``: its root metadata, which appears with the
    store (stores are published whole, by a rename) and is rewritten when it is marked complete.

    A ``directory()`` output would do the same job, but Snakemake writes a
    ``.snakemake_timestamp`` file into every such folder, and zarr warns about that unknown
    file whenever a user lists the store's members.
    """
    return f"{store}/{STORE_MARKER}"


def store_of(marker: str | Path) -> str:
    """The store of a :func:`store_marker` path (rule inputs and outputs name markers)."""
    text = str(marker)
    if not text.endswith(f"/{STORE_MARKER}"):
        raise ValueError(f"{text} is no store marker (expected <store>/{STORE_MARKER})")
    return text.removesuffix(f"/{STORE_MARKER}")


def stage_path(pattern: str, root: str | Path = "results", **fields: object) -> Path:
    """Fill a pattern of this module with concrete values."""
    return Path(pattern.format(root=root, **fields))


def _fill(pattern: str, cfg: PipelineConfig, dataset: str | None = None, **fields: object) -> str:
    return pattern.format(root=cfg.results, dataset=dataset or cfg.dataset.name, **fields)


def dataset_config(cfg: PipelineConfig, dataset: str | None = None):
    """The ``dataset`` section of the training data (None) or of test set ``dataset``.

    Raises:
        ValueError: ``dataset`` is neither the training dataset nor a configured test set.
    """
    if dataset is None or dataset == cfg.dataset.name:
        return cfg.dataset
    if dataset not in cfg.test_sets:
        raise ValueError(f"test set {dataset!r} is not configured; test_sets has {sorted(cfg.test_sets)}")
    return cfg.test_sets[dataset]


def manifest(cfg: PipelineConfig, *, dataset: str | None = None) -> str:
    return _fill(MANIFEST, cfg, dataset)


def synthetic_images(cfg: PipelineConfig, *, dataset: str | None = None) -> str | None:
    """Folder of the generated images and their planted factors; None unless the source is synthetic."""
    return _fill(SYNTHETIC_DIR, cfg, dataset) if dataset_config(cfg, dataset).source == "synthetic" else None


def extract_part(cfg: PipelineConfig, backbone: str = BACKBONE, part: int | str = PART, *,
                 dataset: str | None = None) -> str:
    """Part ``part`` of extraction job ``backbone`` (:func:`usae.config.extraction_groups`: one job serves the
    models that differ only in ``layer``)."""
    return _fill(EXTRACT_PART, cfg, dataset, backbone=backbone, part=part)


def extract_parts(cfg: PipelineConfig, model: str, *, dataset: str | None = None) -> list[str]:
    """Every extraction part that holds model ``model``'s layer, in part order."""
    backbone = extraction_group(cfg.models, model)
    return [extract_part(cfg, backbone, k, dataset=dataset) for k in range(cfg.extract.n_parts)]


def sharing_stats(cfg: PipelineConfig, model: str, *, dataset: str | None = None) -> list[str]:
    """The statistics files of the other models whose layers share ``model``'s extraction parts."""
    keys = next(keys for keys in extraction_groups(cfg.models).values() if model in keys)
    return [aligned_stats(cfg, key, cfg.models[key].layer_tag, dataset=dataset) for key in keys if key != model]


def aligned(cfg: PipelineConfig, model: str = MODEL, layer: str = LAYER, *, dataset: str | None = None) -> str:
    return _fill(ALIGNED, cfg, dataset, model=model, layer=layer)


def aligned_stats(cfg: PipelineConfig, model: str = MODEL, layer: str = LAYER, *, dataset: str | None = None) -> str:
    return _fill(ALIGNED_STATS, cfg, dataset, model=model, layer=layer)


def model_stores(cfg: PipelineConfig, models: list[str] | tuple[str, ...], *,
                 dataset: str | None = None) -> dict[str, str]:
    """Aligned store of each of ``models`` at its configured layer, in the order given."""
    return {m: aligned(cfg, m, cfg.models[m].layer_tag, dataset=dataset) for m in models}


def run_stores(cfg: PipelineConfig, run: str, *, dataset: str | None = None) -> dict[str, str]:
    """Aligned store of each model of run ``run``, in the run's model order."""
    return model_stores(cfg, cfg.runs[run].models, dataset=dataset)


def run_dir(cfg: PipelineConfig, run: str = RUN) -> str:
    return _fill(RUN_DIR, cfg, run=run)


def run_model(cfg: PipelineConfig, run: str = RUN) -> str:
    return _fill(RUN_MODEL, cfg, run=run)


def run_log(cfg: PipelineConfig, run: str = RUN) -> str:
    return _fill(RUN_LOG, cfg, run=run)


def run_eval(cfg: PipelineConfig, run: str = RUN) -> str:
    return _fill(RUN_EVAL, cfg, run=run)


def run_eval_on(cfg: PipelineConfig, run: str = RUN, test_set: str = TEST_SET) -> str:
    """Evaluation of run ``run`` on test set ``test_set``: the same files as :func:`run_eval`."""
    return _fill(RUN_EVAL_ON, cfg, run=run, test_set=test_set)


def test_set_evals(cfg: PipelineConfig, run: str) -> dict[str, str]:
    """The evaluation of run ``run`` on each test set, by test set name (sorted)."""
    return {name: run_eval_on(cfg, run, name) for name in sorted(cfg.test_sets)}


def run_report(cfg: PipelineConfig, run: str = RUN) -> str:
    return _fill(RUN_REPORT, cfg, run=run)


def run_maco(cfg: PipelineConfig, run: str = RUN) -> str:
    return _fill(RUN_MACO, cfg, run=run)


def maco_spectrum(cfg: PipelineConfig) -> str:
    return _fill(MACO_SPECTRUM, cfg)


def compare_dir(cfg: PipelineConfig) -> str:
    """Folder of the page comparing the config's runs (``index.html``)."""
    return _fill(COMPARE, cfg)


def compare_page(cfg: PipelineConfig) -> str:
    """The comparison page; built by the workflow when the config has two or more runs."""
    return f"{compare_dir(cfg)}/index.html"


def maco_runs(cfg: PipelineConfig) -> list[str]:
    """Runs that get coordinated images: every run of two or more models, when ``maco.enabled``."""
    return sorted(r for r, run in cfg.runs.items() if len(run.models) > 1) if cfg.maco.enabled else []


def for_runs(cfg: PipelineConfig, *outputs: Callable[[PipelineConfig, str], str]) -> list[str]:
    """Each of ``outputs`` (``run_model``, ``run_eval``, ...) of every run: output by output, runs sorted."""
    return [output(cfg, run) for output in outputs for run in sorted(cfg.runs)]


def all_targets(cfg: PipelineConfig) -> list[str]:
    """What a full run builds: every model's aligned store (its :func:`store_marker`), then each
    run's model, evaluation and report, its evaluation on each test set; the comparison page when
    there are two or more runs."""
    stores = [store_marker(s) for s in model_stores(cfg, sorted(cfg.models)).values()]
    on_test_sets = [path for run in sorted(cfg.runs) for path in test_set_evals(cfg, run).values()]
    return (stores + for_runs(cfg, run_model, run_eval, run_report) + on_test_sets
            + [run_maco(cfg, run) for run in maco_runs(cfg)] + ([compare_page(cfg)] if len(cfg.runs) > 1 else []))


def log(cfg: PipelineConfig, rule: str, name: str) -> str:
    """Log file of one job of ``rule``; ``name`` may hold wildcards (``"{model}_{layer}"``)."""
    return _fill(LOG, cfg, rule=rule, name=name)


def benchmark(cfg: PipelineConfig, rule: str, name: str) -> str:
    """Benchmark table of one job of ``rule``, named like its log."""
    return _fill(BENCHMARK, cfg, rule=rule, name=name)


def geometry_cache(cfg: PipelineConfig) -> str:
    """Records of the models that passed the pre-run checks (:mod:`usae.backbones.geometry_cache`); no
    rule's output."""
    return _fill(GEOMETRY_CACHE, cfg)
