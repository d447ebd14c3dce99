"""Training checkpoints: round trip, keeping the newest two, skipping truncated files, and
matching on the run's fingerprint."""

import pytest
import torch

import usae.training.checkpoint as ckpt
from usae.fingerprint import fingerprint
from usae.training.checkpoint import KEEP, latest_checkpoint, save_checkpoint

FP = fingerprint({"lr": 3e-4, "models": ["vit", "dino"]})


def state(step: int, fp: str = FP) -> dict:
    return {"fingerprint": fp, "step": step, "weights": torch.full((3, 2), float(step)), "rng": [step]}


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", 7, state(7))
    assert path == tmp_path / "ckpt" / "step_000000007.pt"
    loaded = latest_checkpoint(tmp_path / "ckpt", FP)
    assert loaded["step"] == 7 and loaded["rng"] == [7] and loaded["fingerprint"] == FP
    assert torch.equal(loaded["weights"], torch.full((3, 2), 7.0))


def test_no_directory_or_empty(tmp_path):
    assert latest_checkpoint(tmp_path / "missing", FP) is None
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint(tmp_path / "empty", FP) is None


def test_keeps_newest_two(tmp_path):
    assert KEEP == 2
    for step in (1, 5, 9, 10, 12):
        save_checkpoint(tmp_path, step, state(step))
    assert names(tmp_path) == ["step_000000010.pt", "step_000000012.pt"]  # no temporary files either
    assert latest_checkpoint(tmp_path, FP)["step"] == 12


def test_truncated_newest_falls_back(tmp_path):
    save_checkpoint(tmp_path, 1, state(1))
    newest = save_checkpoint(tmp_path, 2, state(2))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    loaded = latest_checkpoint(tmp_path, FP)
    assert loaded is not None and loaded["step"] == 1
    newest.write_bytes(b"")
    assert latest_checkpoint(tmp_path, FP)["step"] == 1


def test_only_unreadable_gives_none(tmp_path):
    (tmp_path / "step_000000003.pt").write_bytes(b"not a checkpoint")
    assert latest_checkpoint(tmp_path, FP) is None


def test_other_fingerprint_gives_none(tmp_path):
    other = fingerprint({"lr": 1e-3, "models": ["vit", "dino"]})
    assert other != FP
    save_checkpoint(tmp_path, 4, state(4, other))
    save_checkpoint(tmp_path, 5, state(5, other))
    assert latest_checkpoint(tmp_path, FP) is None
    assert latest_checkpoint(tmp_path, other)["step"] == 5


def test_ignores_unrelated_files(tmp_path):
    save_checkpoint(tmp_path, 3, state(3))
    (tmp_path / "step_3.pt").write_bytes(b"x")  # not 9 digits
    (tmp_path / "notes.txt").write_text("hello")
    assert latest_checkpoint(tmp_path, FP)["step"] == 3
    save_checkpoint(tmp_path, 4, state(4))
    save_checkpoint(tmp_path, 5, state(5))
    assert set(names(tmp_path)) == {"step_000000004.pt", "step_000000005.pt", "step_3.pt", "notes.txt"}


def test_fingerprint_stable_under_key_order():
    a = {"sae": {"k": 32, "n_latents": 6144}, "train": {"lr": 3e-4, "seed": 0}, "data": ["x", "y"]}
    b = {"data": ["x", "y"], "train": {"seed": 0, "lr": 3e-4}, "sae": {"n_latents": 6144, "k": 32}}
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64 and int(fingerprint(a), 16) >= 0
    assert fingerprint(a) != fingerprint({**a, "data": ["y", "x"]})  # list order matters
    assert fingerprint(a) != fingerprint({**a, "train": {"lr": 3e-4, "seed": 1}})


def test_remove_stale(tmp_path):
    remove_stale = getattr(ckpt, "remove_stale", None)
    if remove_stale is None:
        pytest.skip("no remove_stale in this version")
    other = fingerprint({"other": True})
    save_checkpoint(tmp_path, 1, state(1, other))
    save_checkpoint(tmp_path, 2, state(2))
    (tmp_path / "step_000000003.pt").write_bytes(b"truncated")
    remove_stale(tmp_path, FP)
    assert names(tmp_path) == ["step_000000002.pt"]
    assert latest_checkpoint(tmp_path, FP)["step"] == 2
