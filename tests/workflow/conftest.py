"""The tiny pipeline, built once per test session and shared by the workflow tests."""

import pytest
from pipeline_helpers import snakemake, write_config


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    write_config(workdir)
    snakemake(workdir)
    return workdir
