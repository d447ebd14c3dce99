"""Commands around the stages: verify stores, push a run to the hub, compare runs, find the
packaged workflow; and choosing a config's models and runs (``--model``, ``--run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from usae import paths
from usae.config import PipelineConfig


def chosen_models(cfg: PipelineConfig, chosen: list[str] | None) -> list[str]:
    unknown = sorted(set(chosen or []) - set(cfg.models))
    if unknown:
        raise ValueError(f"--model {unknown} not in the config's models {sorted(cfg.models)}")
    return chosen or list(cfg.models)


def chosen_runs(cfg: PipelineConfig, chosen: str | None) -> list[str]:
    """The runs a command works on: ``--run`` if given (checked), else every run of the config."""
    if chosen is not None and chosen not in cfg.runs:
        raise ValueError(f"--run {chosen!r} not in the config's runs {sorted(cfg.runs)}")
    return [chosen] if chosen else list(cfg.runs)


def cmd_verify(cfg: PipelineConfig | None, args: argparse.Namespace) -> int:
    """Check stores in full (every chunk read); one line per problem, a summary, 1 if any is damaged.

    With ``-c``, every extraction part and aligned store of the config's models (see :func:`config_stores`).
    """
    from usae.activations.verify import verify_store

    stores = [Path(p) for p in args.paths] + (config_stores(cfg) if cfg is not None else [])
    damaged = 0
    for store in stores:
        problems = verify_store(store)
        damaged += bool(problems)
        print("\n".join(problems) if problems else f"{store}: ok")
    print(f"verified {len(stores)} store(s): {len(stores) - damaged} sound, {damaged} damaged")
    return 1 if damaged else 0


def config_stores(cfg: PipelineConfig) -> list[Path]:
    """The extraction parts and aligned stores of the config's models that exist; prints what is absent.

    One not built yet is listed as absent and is not a problem (Snakemake builds it). With
    ``extract.keep: false`` a model's parts are deleted once its aligned store is written: those
    are said to be deleted, not absent.
    """
    stores: list[Path] = []
    listed: set[Path] = set()  # parts shared by the models of one backbone are listed once
    for key in chosen_models(cfg, None):
        layer = cfg.models[key].layer_tag
        parts, aligned = [Path(p) for p in paths.extract_parts(cfg, key)], Path(paths.aligned(cfg, key, layer))
        deleted = not cfg.extract.keep and aligned.exists()
        if deleted and not all(p.exists() for p in parts):
            print(f"{aligned}: extraction parts deleted once it was written (extract.keep: false)")
        built = [p for p in parts if (p.exists() or not deleted) and p not in listed] + [aligned]
        listed.update(built)
        stores += [p for p in built if p.exists()]
        for absent in (p for p in built if not p.exists()):
            print(f"{absent}: absent (not built yet)")
    return stores


def cmd_push(cfg: PipelineConfig | None, args: argparse.Namespace) -> None:
    """Push a run's model to the Hugging Face hub with a generated card (or write that folder, ``--out``).

    ``--run`` is a run folder, or with ``-c`` a run name of that config.
    """
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from usae.sae.hub import push_run

    missing = [option for option in ("run", "repo") if not getattr(args, option)]
    if missing:
        raise ValueError(f"push needs {' and '.join('--' + m for m in missing)}")
    run_dir = Path(paths.run_dir(cfg, chosen_runs(cfg, args.run)[0]) if cfg is not None else args.run)
    try:
        done = push_run(run_dir, args.repo, private=args.private or None, out=args.out)
    except (HfHubHTTPError, OfflineModeIsEnabled) as err:
        raise ValueError(f"pushing {run_dir} to {args.repo} failed: {err} (check the repo id and your token: "
                         "`hf auth login` or HF_TOKEN; HF_HUB_OFFLINE must be unset)") from None
    print(f"{run_dir}: {'written to' if args.out else 'pushed to ' + args.repo + ':'} {done}")


def cmd_workflow(args: argparse.Namespace) -> None:
    """Where the packaged workflow is, or a working folder to run it from (no config read)."""
    from usae import workflow

    if args.action == "init":
        for path in workflow.init_folder(args.folder, force=args.force):
            print(f"{path}: written")
        print(f'run it there: cd {args.folder} && snakemake -s "$(usae workflow snakefile)" --cores 2')
    else:
        print(workflow.snakefile() if args.action == "snakefile" else workflow.WORKFLOW_DIR)


def workflow_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workflow", help="the packaged Snakemake workflow: its Snakefile, or a folder to run it in")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("snakefile", help="print the Snakefile's path, for snakemake -s")
    actions.add_parser("path", help="print the workflow's folder (rules, scripts, schemas, profiles)")
    init = actions.add_parser("init", help="copy config.yaml and the profiles into FOLDER, to edit and run there")
    init.add_argument("folder", metavar="FOLDER")
    init.add_argument("--force", action="store_true", help="replace copies that exist already")


def cmd_compare(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    """The page comparing the config's runs (or those given with ``--run``), default ``<results>/compare``."""
    from usae.report.compare import compare_config_runs

    print(compare_config_runs(cfg, args.run, args.out))
