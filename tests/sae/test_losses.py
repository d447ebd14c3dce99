"""Reconstruction and auxiliary losses against hand-computed 2x3 examples and numpy; the LOSSES entries."""

import numpy as np
import pytest
import torch

from usae.registry import LOSSES
from usae.sae.losses import (
    PAPER_AUX_WEIGHT,
    RECONSTRUCTION,
    DenseActivity,
    auxk,
    l1,
    l1_loss,
    mse,
    mse_loss,
    paper_dense_aux,
    paper_loss,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
X_HAT = torch.tensor([[1.0, 1.0, 1.0], [4.0, 7.0, 3.0]])  # x - x_hat = [[0, 1, 2], [0, -2, 3]]


def test_mse_hand():
    out = mse(X, X_HAT)
    assert out.shape == () and out.item() == pytest.approx((0 + 1 + 4 + 0 + 4 + 9) / 6)
    assert mse(X, X).item() == 0.0


def test_l1_hand():
    out = l1(X, X_HAT)
    assert out.shape == () and out.item() == pytest.approx((0 + 1 + 2 + 0 + 2 + 3) / 6)
    assert l1(X, X).item() == 0.0


def test_losses_accept_half_precision_and_return_float32():
    out = mse(X.bfloat16(), X_HAT.bfloat16())
    assert out.dtype == torch.float32 and out.item() == pytest.approx(3.0)


def test_reconstruction_table():
    assert RECONSTRUCTION == {"mse": mse, "l1": l1, "paper": l1}


def test_auxk_hand():
    e = X - X_HAT
    e_hat = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])  # e - e_hat = [[0, 0, 2], [0, -2, 0]]
    assert auxk(e, e_hat).item() == pytest.approx((8 / 6) / (18 / 6))


def test_auxk_bounds():
    e = X - X_HAT
    assert auxk(e, torch.zeros_like(e)).item() == pytest.approx(1.0)
    assert auxk(e, e.clone()).item() == 0.0
    # a zero residual does not divide by zero
    assert torch.isfinite(auxk(torch.zeros(2, 3), torch.zeros(2, 3)))


def test_auxk_gradient_only_into_residual_hat():
    e = (X - X_HAT).requires_grad_(True)
    e_hat = torch.zeros(2, 3, requires_grad=True)
    auxk(e, e_hat).backward()
    assert e.grad is None
    # d/de_hat mean((e - e_hat)^2) / mean(e^2) = -2 (e - e_hat) / (n d mean(e^2)) = -2 e / 18
    torch.testing.assert_close(e_hat.grad, -2 * (X - X_HAT) / 18)


def test_paper_dense_aux_hand():
    # m = 4 latents, k = 1: the code keeps the top latent; m/2 = 2 of the rest explain the residual.
    pre = torch.tensor([[3.0, 1.0, 2.0, 0.5],     # relu - z = [0, 1, 2, 0.5] -> keep [0, 1, 2, 0]
                        [-1.0, 0.25, 4.0, 1.0]])  # relu - z = [0, 0.25, 0, 1] -> keep [0, 0.25, 0, 1]
    z = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    x = torch.tensor([[5.0, 4.0], [1.0, 1.0]])
    x_hat = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # rest_half @ W = [[2, 3], [2, -0.75]]; (x - x_hat) = [[4, 3], [1, 1]]; diff [[2, 0], [-1, 1.75]]
    out = paper_dense_aux(x, x_hat, pre, z, weight)
    assert out.item() == pytest.approx((2 + 0 + 1 + 1.75) / 4)


def test_paper_dense_aux_numpy():
    rng = np.random.default_rng(0)
    n, m, d, k = 5, 8, 3, 2
    pre = rng.normal(size=(n, m)).astype(np.float32)
    relu = np.maximum(pre, 0)
    z = np.zeros_like(relu)
    top = np.argsort(-relu, axis=1)[:, :k]
    np.put_along_axis(z, top, np.take_along_axis(relu, top, 1), 1)
    w = rng.normal(size=(m, d)).astype(np.float32)
    x, x_hat = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    rest = relu - z
    half = np.zeros_like(rest)
    keep = np.argsort(-rest, axis=1)[:, : m // 2]
    np.put_along_axis(half, keep, np.take_along_axis(rest, keep, 1), 1)
    expected = np.abs((x - x_hat) - half @ w).mean()
    t = torch.from_numpy
    out = paper_dense_aux(t(x), t(x_hat), t(pre), t(z), t(w))
    assert out.item() == pytest.approx(float(expected), rel=1e-5)


# -- training losses (LOSSES entries) ----------------------------------------------------------

def dense_example():
    """The hand example of test_paper_dense_aux_hand: (x, x_hat, activity)."""
    pre = torch.tensor([[3.0, 1.0, 2.0, 0.5], [-1.0, 0.25, 4.0, 1.0]])
    z = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    return torch.tensor([[5.0, 4.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]), DenseActivity(pre, z, weight)


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_entries_share_one_signature(name):
    loss = LOSSES.get(name, setting="sae.loss")
    x, x_hat, activity = dense_example()
    terms = loss(x, x_hat, activity if loss.dense else None)
    assert list(terms)[0] == "reconstruction" and all(t.shape == () for t in terms.values())
    assert terms["reconstruction"].item() == RECONSTRUCTION[name](x, x_hat).item()


def test_registry_names_the_entries():
    assert LOSSES.get("mse") is mse_loss and LOSSES.get("l1") is l1_loss and LOSSES.get("paper") is paper_loss
    assert not mse_loss.dense and not l1_loss.dense and paper_loss.dense
    assert list(mse_loss(X, X_HAT, None)) == ["reconstruction"]


def test_paper_loss_is_l1_plus_a_tenth_of_the_dense_aux():
    x, x_hat, activity = dense_example()
    terms = paper_loss(x, x_hat, activity)
    assert list(terms) == ["reconstruction", "dense_aux"]
    assert terms["reconstruction"].item() == pytest.approx((4 + 3 + 1 + 1) / 4)
    assert PAPER_AUX_WEIGHT == 0.1
    assert terms["dense_aux"].item() == pytest.approx(0.1 * (2 + 0 + 1 + 1.75) / 4)
    with pytest.raises(ValueError, match="dense activity"):
        paper_loss(x, x_hat, None)
