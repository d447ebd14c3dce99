"""Training checkpoints: round trip, keeping the newest two, skipping truncated files, and
matching on the run's fingerprint."""

import torch

from usae.fingerprint import fingerprint
from usae.training.checkpoint import KEEP, checkpoint_path, find_checkpoints, latest_checkpoint, save_checkpoint

FP = fingerprint({"lr": 3e-4, "models": ["vit", "dino"]})


def state(step: int, fp: str = FP) -> dict:
    return {"fingerprint": fp, "step": step, "weights": torch.full((3, 2), float(step)), "rng": [step]}


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", 7, state(7))
    assert path == tmp_path / "ckpt" / f"step_000000007.{FP[:12]}.pt"
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
    assert names(tmp_path) == [f"step_000000010.{FP[:12]}.pt", f"step_000000012.{FP[:12]}.pt"]  # no temporary files
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
    checkpoint_path(tmp_path, 3, FP).write_bytes(b"not a checkpoint")
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
    assert set(names(tmp_path)) == {f"step_000000004.{FP[:12]}.pt", f"step_000000005.{FP[:12]}.pt", "step_3.pt",
                                    "notes.txt"}


def test_fingerprint_stable_under_key_order():
    a = {"sae": {"k": 32, "n_latents": 6144}, "train": {"lr": 3e-4, "seed": 0}, "data": ["x", "y"]}
    b = {"data": ["x", "y"], "train": {"seed": 0, "lr": 3e-4}, "sae": {"n_latents": 6144, "k": 32}}
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64 and int(fingerprint(a), 16) >= 0
    assert fingerprint(a) != fingerprint({**a, "data": ["y", "x"]})  # list order matters
    assert fingerprint(a) != fingerprint({**a, "train": {"lr": 3e-4, "seed": 1}})


def test_other_settings_are_kept_until_this_run_writes_its_first_checkpoint(tmp_path):
    other = fingerprint({"other": True})
    save_checkpoint(tmp_path, 100, state(100, other))
    save_checkpoint(tmp_path, 200, state(200, other))
    (tmp_path / "step_000000300.pt").write_bytes(b"a checkpoint of an earlier name format")
    before = names(tmp_path)
    assert latest_checkpoint(tmp_path, FP) is None
    assert names(tmp_path) == before  # looking (a run that then cannot start) deletes nothing
    save_checkpoint(tmp_path, 5, state(5))
    assert names(tmp_path) == [f"step_000000005.{FP[:12]}.pt"]  # stale ones go, though their steps are higher
    assert latest_checkpoint(tmp_path, FP)["step"] == 5


def test_a_tag_collision_is_caught_by_the_full_fingerprint(tmp_path):
    twin = FP[:12] + "0" * 52
    assert twin != FP
    save_checkpoint(tmp_path, 1, state(1, twin))
    assert latest_checkpoint(tmp_path, FP) is None
    assert [c.step for c in find_checkpoints(tmp_path)] == [1]
