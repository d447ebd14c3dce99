"""Pre-activations read at a few latents, and the sparse decode: values and gradients equal
those of the dense products written out from the definitions (float64)."""

import pytest
import torch

from usae.sae.sparse_grad import EncoderInputs, LatentOrder, decode_rows, read_pre, select_rows


def inputs(n=12, d=5, m=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    enc = EncoderInputs(*(torch.randn(shape, generator=gen, dtype=dtype, requires_grad=True)
                          for shape in ((n, d), (d, m), (m,), (d,))))
    return enc, gen


def dense_pre(enc):
    """pre = (a - b) W + c, written out."""
    return (enc.acts - enc.shift) @ enc.weight + enc.bias


def sparse_pre(enc):
    with torch.no_grad():
        return torch.addmm(enc.folded_bias(), enc.acts, enc.weight)


def assert_reads_match_dense(enc, gen, indices=None, columns=None):
    """read_pre's values and its gradients into (acts, weight, bias, shift), for one upstream
    gradient on each read, against the dense product's."""
    at, cols = read_pre(enc, sparse_pre(enc), indices, columns)
    pre = dense_pre(enc)
    reads, wants = [], []
    if indices is not None:
        reads.append(at)
        wants.append(pre.gather(1, indices))
    if columns is not None:
        reads.append(cols)
        wants.append(pre[:, columns])
    for got, want in zip(reads, wants):
        torch.testing.assert_close(got, want)
    upstream = [torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in wants]
    want_grads = torch.autograd.grad(wants, list(enc), upstream)
    got_grads = torch.autograd.grad(reads, list(enc), upstream)
    for name, g, w in zip(EncoderInputs._fields, got_grads, want_grads):
        torch.testing.assert_close(g, w, msg=name)
    return got_grads


def test_slots_match_the_dense_gradient_with_repeated_latents():
    enc, gen = inputs()
    # Several tokens share latents, and latent 3 is read by every token (the sums must add up).
    indices = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(12)])
    indices[:, 0] = 3
    assert_reads_match_dense(enc, gen, indices=indices.sort(dim=1).values)


def test_unsorted_slots():
    enc, gen = inputs(seed=1)
    indices = torch.stack([torch.randperm(16, generator=gen)[:5] for _ in range(12)])  # unsorted rows
    assert_reads_match_dense(enc, gen, indices=indices)


def test_columns_match_the_dense_gradient():
    enc, gen = inputs(seed=2)
    assert_reads_match_dense(enc, gen, columns=torch.tensor([9, 0, 14, 5]))


def test_slots_and_columns_in_one_backward():
    """AuxK's columns overlap the active latents: both reads' gradients add up in every input."""
    enc, gen = inputs(seed=3)
    indices = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(12)])
    assert_reads_match_dense(enc, gen, indices=indices, columns=torch.tensor([2, 11, 3, 15, 7]))


def test_weight_gradient_in_the_encoders_layout():
    """The model's encoder is its decoder transposed, (d, m) with strides (1, d): the gradient
    comes in that layout, so autograd keeps it without a copy."""
    enc, gen = inputs(seed=6)
    enc = enc._replace(weight=enc.weight.detach().t().contiguous().t().requires_grad_())
    assert enc.weight.stride() == (1, 5)
    indices = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(12)])
    grads = assert_reads_match_dense(enc, gen, indices=indices, columns=torch.tensor([1, 8]))
    assert grads[1].stride() == enc.weight.stride()


def test_gradients_only_where_needed():
    enc, gen = inputs(seed=4)
    enc = enc._replace(acts=enc.acts.detach(), shift=enc.shift.detach())
    pre = sparse_pre(enc)
    at, cols = read_pre(enc, pre, pre.topk(3, dim=1).indices, torch.tensor([1, 4]))
    (at.sum() + cols.sum()).backward()
    assert enc.acts.grad is None and enc.shift.grad is None
    assert enc.weight.grad is not None and enc.bias.grad is not None


@pytest.mark.parametrize("read", ["slots", "columns"])
def test_bf16_upstream_gradient_is_widened(read):
    enc, _ = inputs(seed=5, dtype=torch.float32)
    pre = sparse_pre(enc).bfloat16()
    if read == "slots":
        out = read_pre(enc, pre, pre.float().topk(3, dim=1).indices)[0]
    else:
        out = read_pre(enc, pre, columns=torch.tensor([1, 2, 7]))[1]
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(t.grad.dtype == torch.float32 for t in enc)


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
    enc, _ = inputs(n=10, m=16, seed=7)
    weight, bias, _, indices, upstream = decode_inputs(seed=8)
    order = LatentOrder(indices, 16)
    values = read_pre(enc, sparse_pre(enc), indices, order=order)[0]
    out = decode_rows(values, indices, weight, bias, order)
    params = (*enc, weight, bias)
    got = torch.autograd.grad(out, params, upstream)
    want = torch.autograd.grad(dense_decode(dense_pre(enc).gather(1, indices), indices, weight, bias), params, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("n_latents", [16, 40_000])  # int16 sort keys, and int32 past 32767 latents
def test_latent_order_transposes_the_codes(n_latents):
    _, _, values, indices, _ = decode_inputs(seed=9)
    step = n_latents // 16
    indices = indices * step + step - 1  # spread over the latents, up to the last one
    want = torch.zeros(10, n_latents, dtype=values.dtype).scatter_add(1, indices, values.detach()).t()
    got = LatentOrder(indices, n_latents).transposed(values.detach()).to_dense()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


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
