"""The Snakemake workflow, shipped inside the package: where its files are, and a working folder to run it from.

A ``pip install usae`` (not only a clone) runs the pipeline::

    usae workflow init my_run && cd my_run        # config.yaml and the profiles, to edit
    snakemake -s "$(usae workflow snakefile)" --cores 2
"""

from __future__ import annotations

import shutil
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parent
"""The packaged workflow: ``Snakefile``, ``rules/``, ``scripts/``, ``schemas/``, ``report/``, ``profiles/``."""

EDITABLE = ("config.yaml", "profiles")
"""What a user edits, copied into a working folder; the rest is read from the package where it lies."""


def snakefile() -> Path:
    """The workflow's main Snakefile (``snakemake -s``)."""
    return WORKFLOW_DIR / "Snakefile"


def init_folder(folder: str | Path, *, force: bool = False) -> list[Path]:
    """Make ``folder`` (created if needed) a working folder of the workflow: a copy of the
    default ``config.yaml`` and of the execution profiles (``profiles/workstation``,
    ``profiles/slurm``). Snakemake run there writes ``results/`` and ``.snakemake/`` there.

    Args:
        folder: the working folder.
        force: replace copies that exist already (an edited config.yaml is lost).

    Returns:
        The paths written, in :data:`EDITABLE` order.

    Raises:
        FileExistsError: naming every file or folder that exists already, unless ``force``.
    """
    folder = Path(folder)
    targets = [folder / name for name in EDITABLE]
    present = [str(t) for t in targets if t.exists()]
    if present and not force:
        raise FileExistsError(f"{', '.join(present)} exist(s) already; edit them, or pass --force to "
                              "replace them with the packaged defaults")
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in zip(EDITABLE, targets):
        source = WORKFLOW_DIR / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target)
    return targets
