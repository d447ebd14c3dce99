"""Pre-activations read at a few latents: values and gradients equal the dense product's."""

import pytest
import torch

from usae.sae.sparse_grad import LatentOrder, decode_rows, gather_pre, pre_columns, select_rows


def inputs(n=12, d=5, m=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, d, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(d, m, generator=gen, dtype=dtype, requires_grad=True)
    bias = torch.randn(m, generator=gen, dtype=dtype, requires_grad=True)
    return acts, weight, bias, gen


def dense_and_sparse_grads(read_dense, read_sparse, acts, weight, bias, gen):
    with torch.no_grad():
        pre = torch.addmm(bias, acts, weight)
    sparse = read_sparse(acts, weight, bias, pre)
    dense = read_dense(torch.addmm(bias, acts, weight))
    torch.testing.assert_close(sparse, dense, rtol=0, atol=0)
    upstream = torch.randn(dense.shape, generator=gen, dtype=dense.dtype)
    want = torch.autograd.grad(dense, (acts, weight, bias), upstream)
    got = torch.autograd.grad(sparse, (acts, weight, bias), upstream)
    return want, got


def test_gather_pre_matches_dense_gradient_with_repeated_latents():
    acts, weight, bias, gen = inputs()
    # Several tokens share latents, and latent 3 is read by every token (the sums must add up).
    indices = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(12)])
    indices[:, 0] = 3
    assert_gather_matches_dense(indices.sort(dim=1).values, acts, weight, bias, gen)


def test_gather_pre_unsorted_indices():
    acts, weight, bias, gen = inputs(seed=1)
    indices = torch.stack([torch.randperm(16, generator=gen)[:5] for _ in range(12)])  # unsorted rows
    assert_gather_matches_dense(indices, acts, weight, bias, gen)


def assert_gather_matches_dense(indices, acts, weight, bias, gen):
    want, got = dense_and_sparse_grads(lambda pre: pre.gather(1, indices),
                                       lambda a, w, b, pre: gather_pre(a, w, b, pre, indices), acts, weight, bias, gen)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_pre_columns_matches_dense_gradient():
    acts, weight, bias, gen = inputs(seed=2)
    columns = torch.tensor([9, 0, 14, 5])
    want, got = dense_and_sparse_grads(lambda pre: pre[:, columns],
                                       lambda a, w, b, pre: pre_columns(a, w, b, pre, columns), acts, weight, bias, gen)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_gradients_only_where_needed():
    acts, weight, bias, _ = inputs(seed=3)
    acts = acts.detach()
    with torch.no_grad():
        pre = torch.addmm(bias, acts, weight)
    out = gather_pre(acts, weight, bias, pre, pre.topk(3, dim=1).indices)
    out.sum().backward()
    assert acts.grad is None and weight.grad is not None and bias.grad is not None


@pytest.mark.parametrize("fn", [gather_pre, pre_columns])
def test_bf16_upstream_gradient_is_widened(fn):
    acts, weight, bias, _ = inputs(seed=4, dtype=torch.float32)
    with torch.no_grad():
        pre = torch.addmm(bias, acts, weight).bfloat16()
    index = pre.float().topk(3, dim=1).indices if fn is gather_pre else torch.tensor([1, 2, 7])
    out = fn(acts, weight, bias, pre, index)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and acts.grad.dtype == torch.float32


def decode_inputs(seed=5):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.rand(10, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    indices = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(10)])
    indices[:, 1] = 7  # a row every token reads
    upstream = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    return weight, bias, values, indices, upstream


def dense_decode(values, indices, weight, bias):
    """Z D + b with Z the written-out dense (n, m) code matrix."""
    z = torch.zeros(values.shape[0], weight.shape[0], dtype=values.dtype).scatter_add(1, indices, values)
    return z @ weight + bias


def test_decode_rows_matches_the_dense_definition():
    weight, bias, values, indices, upstream = decode_inputs()
    want_out = dense_decode(values, indices, weight, bias)
    want = torch.autograd.grad(want_out, (values, weight, bias), upstream)
    got_out = decode_rows(values, indices, weight, bias)
    got = torch.autograd.grad(got_out, (values, weight, bias), upstream)
    torch.testing.assert_close(got_out, want_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert not decode_rows(values.detach(), indices, weight.detach(), bias.detach()).requires_grad


def test_decode_rows_with_detached_rows_still_trains_the_values():
    """The other models' decoders in the paper scheme: bias added in place, values still learn."""
    weight, bias, values, indices, upstream = decode_inputs(seed=6)
    want = torch.autograd.grad(dense_decode(values, indices, weight.detach(), bias.detach()), values, upstream)[0]
    out = decode_rows(values, indices, weight.detach(), bias.detach())
    torch.testing.assert_close(torch.autograd.grad(out, values, upstream)[0], want)


def test_one_latent_order_serves_the_encoder_and_the_decoder():
    acts, enc_weight, enc_bias, gen = inputs(n=10, m=16, seed=7)
    weight, bias, _, indices, upstream = decode_inputs(seed=8)
    order = LatentOrder(indices, 16)
    with torch.no_grad():
        pre = torch.addmm(enc_bias, acts, enc_weight)
    values = gather_pre(acts, enc_weight, enc_bias, pre, indices, order)
    out = decode_rows(values, indices, weight, bias, order)
    params = (acts, enc_weight, enc_bias, weight, bias)
    got = torch.autograd.grad(out, params, upstream)
    ref_values = torch.addmm(enc_bias, acts, enc_weight).gather(1, indices)
    want = torch.autograd.grad(dense_decode(ref_values, indices, weight, bias), params, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_latent_order_transposes_the_codes():
    _, _, values, indices, _ = decode_inputs(seed=9)
    want = torch.zeros(10, 16, dtype=values.dtype).scatter_add(1, indices, values.detach()).t()
    torch.testing.assert_close(LatentOrder(indices, 16).transposed(values.detach()).to_dense(), want, rtol=0, atol=0)


def test_bf16_codes_decode_in_the_rows_dtype():
    weight, bias, values, indices, upstream = decode_inputs(seed=10)
    weight, bias = weight.detach().float().requires_grad_(), bias.detach().float().requires_grad_()
    codes = values.detach().bfloat16().requires_grad_()
    out = decode_rows(codes, indices, weight, bias)
    assert out.dtype == torch.float32
    out.backward(upstream.float())
    assert codes.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32


def test_select_rows_matches_index_select():
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(16, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([11, 2, 5])
    upstream = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(weight.index_select(0, rows), weight, upstream)[0]
    got_out = select_rows(weight, rows)
    torch.testing.assert_close(got_out, weight[rows], rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(got_out, weight, upstream)[0], want)
