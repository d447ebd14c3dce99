"""Row-wise top-k through block maxima: the same selection as torch.topk."""

import pytest
import torch

from usae.sae import topk as topk_module
from usae.sae.topk import topk_rows


def assert_same_selection(x, k):
    values, indices = topk_rows(x, k)
    want_values, want_indices = x.topk(k, dim=1)
    assert values.shape == indices.shape == (x.shape[0], k)
    torch.testing.assert_close(values, x.gather(1, indices), rtol=0, atol=0)
    torch.testing.assert_close(values.sort(dim=1, descending=True).values, want_values, rtol=0, atol=0)
    torch.testing.assert_close(indices.sort(dim=1).values, want_indices.sort(dim=1).values, rtol=0, atol=0)


@pytest.mark.parametrize(("m", "k"), [(6144, 32), (1024, 32), (2048, 64), (512, 4), (96, 6), (100, 3)])
def test_matches_torch_topk(m, k):
    x = torch.randn(37, m, generator=torch.Generator().manual_seed(m + k))
    assert_same_selection(x, k)


@pytest.mark.parametrize(("m", "k", "want"), [(6144, 32, [96, 256, 256]), (1024, 32, [128, 256]), (100, 3, [100])])
def test_block_path_is_taken_and_recurses(monkeypatch, m, k, want):
    """Widths torch.topk sees: at m = 6144, K = 32 the 768 block maxima are cut into blocks again
    (96 maxima, then 256 candidates twice); at m = 1024 one level (128 maxima, 256 candidates);
    rows not a multiple of the block go as they are."""
    widths = []
    real = torch.Tensor.topk

    def spy(self, *args, **kwargs):
        widths.append(self.shape[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    topk_rows(torch.randn(3, m), k)
    assert widths == want


def test_all_entries_in_few_blocks():
    """The largest entries crowd into one block (stride m / BLOCK): all must still be found."""
    m, k = 1024, 16
    x = torch.randn(5, m, generator=torch.Generator().manual_seed(1))
    width = m // topk_module.BLOCK
    x[:, 3::width] += 100.0  # block 3 holds the 8 largest
    x[:, 7::width] += 50.0  # block 7 the next 8
    assert_same_selection(x, k)
    assert set(topk_rows(x, k)[1][0].tolist()) == set(range(3, m, width)) | set(range(7, m, width))


def test_ties_give_the_tied_value_and_distinct_indices():
    x = torch.zeros(4, 512)
    x[:, 100] = 1.0
    values, indices = topk_rows(x, 32)
    assert sorted(values[0].tolist(), reverse=True) == [1.0] + [0.0] * 31
    assert all(len(set(row.tolist())) == 32 for row in indices)


def test_nan_counts_as_largest_like_torch():
    x = torch.randn(2, 1024, generator=torch.Generator().manual_seed(2))
    x[0, 17] = float("nan")
    values, indices = topk_rows(x, 32)
    assert 17 in indices[0].tolist() and values[0].isnan().sum() == 1


def test_gradient_reaches_the_selected_entries():
    x = torch.randn(3, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    values, indices = topk_rows(x, 32)
    (grad,) = torch.autograd.grad((values * values).sum(), x)
    want = torch.zeros_like(x).scatter_(1, indices, 2 * values.detach())
    torch.testing.assert_close(grad, want, rtol=0, atol=0)


@pytest.mark.parametrize(("shape", "k"), [((4,), 2), ((2, 3, 4), 2), ((3, 8), 0), ((3, 8), 9)])
def test_bad_shapes_and_k_are_refused(shape, k):
    with pytest.raises(ValueError, match="topk_rows"):
        topk_rows(torch.zeros(shape), k)
