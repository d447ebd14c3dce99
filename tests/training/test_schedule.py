"""Learning-rate schedule: linear warm-up, then cosine decay to lr_end at the last step."""

import math

import pytest

from usae.training.schedule import learning_rate

LR, END = 3e-4, 1e-6


def lrs(total: int, warmup: float) -> list[float]:
    return [learning_rate(s, total, lr=LR, lr_end=END, warmup=warmup) for s in range(total)]


def test_warmup_is_linear_and_ends_at_lr():
    values = lrs(100, 0.1)  # w = 10
    warm = values[:10]
    assert warm[0] == pytest.approx(END + (LR - END) / 10)
    steps = [b - a for a, b in zip(warm, warm[1:])]
    assert all(s == pytest.approx((LR - END) / 10) for s in steps)
    assert warm[9] == pytest.approx(LR)
    assert values[10] == pytest.approx(LR)  # cosine starts at its top


def test_cosine_reaches_lr_end_exactly_and_decreases():
    for total, warmup in [(100, 0.1), (37, 0.05), (10, 0.0)]:
        values = lrs(total, warmup)
        assert values[-1] == END
        w = round(warmup * total)
        after = values[w:]
        assert all(b < a for a, b in zip(after, after[1:]))
        assert all(END <= v <= LR * (1 + 1e-12) for v in values)
    # past the end it stays at lr_end
    assert learning_rate(150, 100, lr=LR, lr_end=END, warmup=0.1) == END


def test_no_warmup_starts_at_lr():
    assert learning_rate(0, 50, lr=LR, lr_end=END, warmup=0.0) == LR


def test_midpoint_by_hand():
    # warmup 0: t = step / (total - 1); step 50 of 101 is t = 0.5, cos = 0
    assert learning_rate(50, 101, lr=LR, lr_end=END, warmup=0.0) == pytest.approx((LR + END) / 2)
    # with warm-up: w = round(0.1 * 110) = 11, span = 110 - 1 - 11 = 98, midpoint at 11 + 49
    assert learning_rate(60, 110, lr=LR, lr_end=END, warmup=0.1) == pytest.approx((LR + END) / 2)
    # a quarter of the way: (1 + cos(pi / 4)) / 2
    q = END + (LR - END) * (1 + math.cos(math.pi / 4)) / 2
    assert learning_rate(25, 101, lr=LR, lr_end=END, warmup=0.0) == pytest.approx(q)


@pytest.mark.parametrize("warmup", [0.0, 0.05, 0.5, 1.0])
def test_single_step(warmup):
    value = learning_rate(0, 1, lr=LR, lr_end=END, warmup=warmup)
    assert math.isfinite(value) and END <= value <= LR


def test_two_steps():
    assert lrs(2, 0.0) == [LR, END]
