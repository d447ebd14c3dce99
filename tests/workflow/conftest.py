"""The tiny pipeline, built once per test session, and a private copy of it for each test that changes it.

``built`` is never modified by a test, so the workflow tests pass alone and in any order.
A test that edits the config or reruns jobs takes ``pipeline_copy`` instead: the whole
working directory (config, results, Snakemake's metadata) copied with its modification times,
so Snakemake sees the copy exactly as up to date as the original.
"""

import shutil

import pytest
from pipeline_helpers import snakemake, write_config


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    write_config(workdir)
    snakemake(workdir)
    return workdir


@pytest.fixture
def pipeline_copy(built, tmp_path):
    copy = tmp_path / "pipeline"
    shutil.copytree(built, copy, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return copy
