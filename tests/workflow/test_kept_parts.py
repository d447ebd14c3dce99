"""What a run keeps on disk: extraction parts are deleted once their aligned store is written (the default,
``extract.keep: false``) and kept with ``extract.keep: true``; neither makes anything rerun that should not."""

import pytest
from pipeline_helpers import planned_jobs, snakemake, write_config

from usae.activations.store import open_store

pytestmark = pytest.mark.slow

UNTIL_PREPARE = ("--until", "prepare_activations")


def part_stores(workdir):
    return sorted((workdir / "results/tiny/acts").rglob("*.zarr"))


def test_a_run_keeps_no_extraction_part(built):
    assert part_stores(built) == [] and not list((built / "results/tiny/acts").iterdir())
    log = (built / "results/logs/prepare_activations/b16_final.log").read_text()
    assert "deleted extraction part results/tiny/acts/b16/final/part1.zarr" in log
    for model in ("a14", "b16"):
        assert open_store(built / f"results/tiny/aligned/{model}/final.zarr").attrs["complete"]


def test_a_second_run_runs_nothing(pipeline_copy):
    """A deleted part is no reason to rerun: its output is temporary."""
    marker = pipeline_copy / "results/tiny/aligned/a14/final.zarr/zarr.json"
    before = marker.stat().st_mtime_ns
    proc = snakemake(pipeline_copy)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert marker.stat().st_mtime_ns == before


def test_kept_parts_stay_and_turning_keep_off_deletes_them(pipeline_copy):
    write_config(pipeline_copy, **{"extract.keep": True})
    assert planned_jobs(pipeline_copy, *UNTIL_PREPARE) == {"extract_activations": 4, "prepare_activations": 2}
    snakemake(pipeline_copy, *UNTIL_PREPARE)
    parts = part_stores(pipeline_copy)
    assert len(parts) == 4 and all(open_store(p).attrs["stage"] == "extract" for p in parts)
    assert not [f for p in parts for f in p.rglob(".snakemake*")]  # named by their zarr.json, as when temporary
    # The aligned stores came out byte for byte as before: Snakemake sees nothing after them to redo.
    assert planned_jobs(pipeline_copy) == {}
    write_config(pipeline_copy, **{"extract.keep": True, "prepare.standardize": "per_dim"})
    assert planned_jobs(pipeline_copy, *UNTIL_PREPARE) == {"prepare_activations": 2}  # no extraction: kept

    write_config(pipeline_copy)  # keep false again: preparing once more deletes them
    assert planned_jobs(pipeline_copy, *UNTIL_PREPARE) == {"prepare_activations": 2}
    snakemake(pipeline_copy, *UNTIL_PREPARE)
    assert part_stores(pipeline_copy) == [] and planned_jobs(pipeline_copy) == {}
