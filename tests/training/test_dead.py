"""Dead-latent bookkeeping: tokens since each latent fired, per model, and its checkpointed state."""

import torch

from usae.training.dead import DeadLatents


def test_dead_latents_semantics():
    dead = DeadLatents(["vit", "dino"], 4, torch.device("cpu"))
    assert dead.since["vit"].tolist() == [0, 0, 0, 0]
    dead.update("vit", torch.tensor([True, False, False, False]), 10)
    assert dead.since["vit"].tolist() == [0, 10, 10, 10]
    dead.update("vit", torch.tensor([False, True, False, False]), 5)
    assert dead.since["vit"].tolist() == [5, 0, 15, 15]
    assert dead.since["dino"].tolist() == [0, 0, 0, 0]  # per model
    assert dead.mask("vit", 15).tolist() == [False, False, True, True]  # dead when >= threshold
    assert dead.mask("vit", 16).tolist() == [False, False, False, False]
    frac = dead.fraction(5)
    assert set(frac) == {"vit", "dino"}
    assert frac["vit"].item() == 0.75 and frac["dino"].item() == 0.0


def test_dead_latents_state_round_trip():
    dead = DeadLatents(["vit"], 3, torch.device("cpu"))
    dead.update("vit", torch.tensor([False, True, False]), 7)
    dead.refresh(7)
    state = dead.state_dict()
    dead.update("vit", torch.tensor([False, False, False]), 1)
    assert state["since"]["vit"].tolist() == [7, 0, 7]  # a copy
    other = DeadLatents(["vit"], 3, torch.device("cpu"))
    other.load_state_dict(state)
    assert other.since["vit"].tolist() == [7, 0, 7]
    assert other.index["vit"].tolist() == [0, 2]


def test_dead_window_scales_with_the_run_and_the_validation_set():
    from usae.training.dead import dead_window

    assert dead_window(5000, source_tokens=10, validation_tokens=3, batch_tokens=1) == 5000  # a number stays
    # auto: the validation token count, when the run gives each model at least 4x that as source ...
    assert dead_window("auto", source_tokens=400_000, validation_tokens=10_000, batch_tokens=512) == 10_000
    # ... else a quarter of its source tokens, so the counter can reach the window within the run
    assert dead_window("auto", source_tokens=20_000, validation_tokens=10_000, batch_tokens=512) == 5_000
    assert dead_window("auto", source_tokens=20_000, validation_tokens=None, batch_tokens=512) == 2_000
    assert dead_window("auto", source_tokens=1_000, validation_tokens=10_000, batch_tokens=512) == 512  # one batch
