"""Write-then-rename: a failed write leaves the finished result alone and a full disk is named."""

import errno
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from usae.atomic import atomic_path

FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="needs Linux /dev/full")


def _write_into_full_disk(tmp: Path, writer) -> None:
    os.symlink(FULL, tmp)  # the writer opens the temporary path and hits a full disk
    writer(tmp)


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyError("interrupted")
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


@needs_dev_full
@pytest.mark.parametrize("writer", [
    pytest.param(lambda p: torch.save({"w": torch.zeros(1000)}, p), id="torch.save"),
    pytest.param(lambda p: pd.DataFrame({"a": range(1000)}).to_parquet(p), id="parquet"),
    pytest.param(lambda p: p.write_bytes(b"x" * 10_000), id="plain write"),
])
def test_full_disk_is_named_with_the_path(tmp_path, writer):
    target = tmp_path / "checkpoints" / "step_000000200.pt"
    target.parent.mkdir()
    target.write_bytes(b"finished")
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        _write_into_full_disk(tmp, writer)
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"[Errno 28] no space left on device: {target}")
    assert target.read_bytes() == b"finished"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="^shape mismatch$"), atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("x")
        raise RuntimeError("shape mismatch")
