"""Check config files as ``snakemake`` and ``usae`` do at start, without running anything.

    python -m usae.config FILE [FILE ...]

Snakemake parses a ``--configfile`` before the workflow starts, and for invalid YAML it
names neither the file nor the line; this names file, line and column. It then runs every
check made before the first job: each key, the data's split and batch sizes, and the
models' shapes (weightless models: seconds, nothing downloaded).
"""

from __future__ import annotations

import argparse
import sys

from usae.config.files import load_config_file


def check_file(path: str) -> str:
    """What a valid file configures, in one line; ValueError or FileNotFoundError otherwise."""
    from usae.backbones.geometry import check_geometry
    from usae.data.sizes import check_data_sizes

    cfg = load_config_file(path)
    counts = check_data_sizes(cfg)
    check_geometry(cfg)
    images = f"{counts.n_train} training and {counts.n_val} validation images" if counts else "images not counted yet"
    return f"{path}: ok ({len(cfg.models)} models, {len(cfg.runs)} runs, {images})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m usae.config", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="config files")
    status = 0
    for path in parser.parse_args(argv).files:
        try:
            sys.stdout.write(check_file(path) + "\n")
        except (ValueError, FileNotFoundError) as err:
            message = str(err) if str(err).startswith(path) else f"{path}: {err}"  # YAML messages name it already
            sys.stderr.write(f"invalid config: {message}\n")
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
