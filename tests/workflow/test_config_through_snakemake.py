"""What `snakemake` itself says about config files and data sizes, before any job (dry runs)."""

import pytest
from pipeline_helpers import snakemake, write_config

pytestmark = pytest.mark.slow


def _refused(workdir, *args) -> str:
    proc = snakemake(workdir, "-n", *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert not (workdir / "results").exists()
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(("changes", "message"), [
    ({"dataset.val_fraction": 0.0}, "invalid config: dataset.val_fraction = 0.0 leaves no validation image among "
     "the 24 images (split by a seeded hash of each id); evaluation needs at least one: raise dataset.val_fraction"),
    ({"dataset.synthetic.n_images": 1}, "invalid config: dataset.synthetic.n_images = 1: at least 2 images are "
     "needed, one to train on and one to validate on"),
    ({"train.batch_tokens": 1000, "train.buffer_tokens": 4096}, "invalid config: train.batch_tokens = 1000 is more "
     "than the 882 training tokens (18 training images of 24 x 49 tokens at prepare.grid = 7); lower it to at most "
     "882"),
])
def test_data_too_small_for_the_config_stops_before_any_job(tmp_path, changes, message):
    write_config(tmp_path, **changes)
    assert message in _refused(tmp_path)
