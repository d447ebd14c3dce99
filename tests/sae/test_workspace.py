"""Reused buffers: the same memory while the request stays the same, and addmm's exact result."""

import pytest
import torch

from usae.config import SAEConfig
from usae.sae.model import USAE
from usae.sae.workspace import Workspace

CPU = torch.device("cpu")


def operands(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(7), torch.randn(5, 3, generator=gen), torch.randn(3, 7, generator=gen)


def test_buffer_is_reused_until_the_request_changes():
    ws = Workspace()
    first = ws.buffer("a", (4, 6), torch.float32, CPU)
    assert ws.buffer("a", (4, 6), torch.float32, CPU).data_ptr() == first.data_ptr()
    assert ws.buffer("b", (4, 6), torch.float32, CPU).data_ptr() != first.data_ptr()
    assert ws.buffer("a", (5, 6), torch.float32, CPU).shape == (5, 6)
    assert ws.buffer("a", (5, 6), torch.float64, CPU).dtype == torch.float64


def test_addmm_gives_torch_addmm_in_the_kept_buffer():
    ws = Workspace()
    bias, acts, weight = operands()
    out = ws.addmm("pre", bias, acts, weight)
    torch.testing.assert_close(out, torch.addmm(bias, acts, weight), rtol=0, atol=0)
    again = ws.addmm("pre", bias, 2 * acts, weight)
    assert again.data_ptr() == out.data_ptr()
    torch.testing.assert_close(again, torch.addmm(bias, 2 * acts, weight), rtol=0, atol=0)


def test_addmm_under_autocast_matches_autocast():
    ws = Workspace()
    bias, acts, weight = operands(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.addmm(bias, acts, weight)
        got = ws.addmm("pre", bias, acts, weight)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_clear_forgets_the_buffers():
    ws = Workspace()
    first = ws.buffer("a", (4, 6), torch.float32, CPU)
    ws.clear()
    assert ws.buffer("a", (4, 6), torch.float32, CPU) is not first


@pytest.mark.parametrize("grad", [True, False])
def test_model_reuses_its_buffer_only_on_the_sparse_gradient_path(grad):
    model = USAE({"vit": 8}, SAEConfig(n_latents=64, k=4, aux_k=0)).train()
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(2))
    with torch.set_grad_enabled(grad):
        first = model.encode_sparse("vit", x, keep_pre=True)
        second = model.encode_sparse("vit", x + 1, keep_pre=True)
    assert (first.pre.data_ptr() == second.pre.data_ptr()) == grad
    torch.testing.assert_close(second.pre, model.pre_codes("vit", x + 1).detach(), rtol=0, atol=0)
