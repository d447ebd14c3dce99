"""What a run keeps on disk: extraction parts are deleted once their aligned store is written (the default,
``extract.keep: false``) and kept with ``extract.keep: true``; neither makes anything rerun that should not."""

import numpy as np
import pytest
import yaml
from pipeline_helpers import TINY, planned_jobs, snakemake, write_config

from usae.activations.store import open_store

pytestmark = pytest.mark.slow

UNTIL_PREPARE = ("--until", "prepare_activations")


def part_stores(workdir):
    return sorted((workdir / "results/tiny/acts").rglob("*.zarr"))


def test_a_run_keeps_no_extraction_part(built):
    assert part_stores(built) == [] and not list((built / "results/tiny/acts").iterdir())
    log = (built / "results/logs/prepare_activations/b16_final.log").read_text()
    assert "deleted extraction part results/tiny/acts/b16/part1.zarr" in log
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


def test_layers_of_one_backbone_share_their_extraction_and_its_deletion(tmp_path):
    """Two layers of a14 are one extraction job a part, each prepared from its group; the parts go with the last."""
    a14 = yaml.safe_load(TINY.read_text())["models"]["a14"]
    write_config(tmp_path, **{"models.a14": {**a14, "layer": 0}, "models.a14_b1": {**a14, "layer": 1},
                              "runs": {"usae": {}}})
    assert planned_jobs(tmp_path, *UNTIL_PREPARE) == {"build_manifest": 1, "extract_activations": 4,
                                                      "prepare_activations": 3}
    snakemake(tmp_path, *UNTIL_PREPARE)
    assert part_stores(tmp_path) == []
    logs = tmp_path / "results/logs"
    assert "extract a14+a14_b1 part 0/2" in (logs / "extract_activations/a14_part0.log").read_text()
    deleted = [p.name for p in (logs / "prepare_activations").iterdir()
               if "deleted extraction part results/tiny/acts/a14/part0.zarr" in p.read_text()]
    assert len(deleted) == 1 and deleted[0] in ("a14_block0.log", "a14_b1_block1.log")  # the later of the two
    block0, block1 = (open_store(tmp_path / f"results/tiny/aligned/{m}.zarr") for m in ("a14/block0", "a14_b1/block1"))
    assert block0.attrs["model"]["key"] == "a14" and block1.attrs["model"]["key"] == "a14_b1"
    assert not np.array_equal(block0["train/tokens"][:], block1["train/tokens"][:])
    assert planned_jobs(tmp_path, *UNTIL_PREPARE) == {}
