"""USAE model: initialisation, TopK / BatchTopK codes, sparse vs dense decoding, constraints,
standardisation and argument checks, on tiny CPU shapes."""

import pytest
import torch
import torch.nn.functional as F

from usae.config import SAEConfig
from usae.sae.model import USAE, Codes

DIMS = {"vit": 8, "dino": 12}
M, K = 32, 4


def make(**overrides) -> USAE:
    cfg = SAEConfig(**{"n_latents": M, "k": K, "aux_k": 0, **overrides})
    return USAE(DIMS, cfg, seed=0)


def acts(name: str, n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, DIMS[name], generator=torch.Generator().manual_seed(seed))


def hand_topk(model: USAE, name: str, x: torch.Tensor) -> torch.Tensor:
    """Dense TopK(ReLU(W (x - b) + c)), computed from the definition."""
    pre = (x - model.b_dec[name]) @ model.W_enc[name] + model.b_enc[name]
    relu = F.relu(pre)
    idx = relu.topk(model.cfg.k, dim=1).indices
    return torch.zeros_like(relu).scatter_(1, idx, relu.gather(1, idx))


# -- initialisation --------------------------------------------------------------------------

def test_init_unit_rows_tied_encoder_zero_bias():
    model = make()
    for name, d in DIMS.items():
        W = model.W_dec[name]
        assert W.shape == (M, d) and model.W_enc[name].shape == (d, M)
        torch.testing.assert_close(W.norm(dim=1), torch.ones(M))
        torch.testing.assert_close(model.W_enc[name], W.t(), rtol=0, atol=0)
        assert model.W_enc[name].data_ptr() != W.data_ptr()  # a copy, not the same storage
        assert torch.equal(model.b_dec[name], torch.zeros(d))
        assert torch.equal(model.b_enc[name], torch.zeros(M))


def test_init_is_seeded():
    a, b = USAE(DIMS, make().cfg, seed=3), USAE(DIMS, make().cfg, seed=3)
    c = USAE(DIMS, make().cfg, seed=4)
    assert torch.equal(a.W_dec["vit"], b.W_dec["vit"])
    assert not torch.equal(a.W_dec["vit"], c.W_dec["vit"])


def test_init_decoder_bias_sets_means():
    model = make()
    means = {"vit": torch.arange(8.0), "dino": torch.linspace(-1, 1, 12, dtype=torch.float64)}
    model.init_decoder_bias(means)
    for name in DIMS:
        torch.testing.assert_close(model.b_dec[name].detach(), means[name].float())
        assert model.b_dec[name].dtype == torch.float32 and model.b_dec[name].requires_grad


def test_needs_a_model():
    with pytest.raises(ValueError):
        USAE({}, make().cfg)


# -- TopK ------------------------------------------------------------------------------------

def test_topk_exactly_k_active_nonnegative():
    model = make()
    for name in DIMS:
        x = acts(name, n=64)
        codes = model.encode_sparse(name, x)
        assert codes.values.shape == (64, K) and codes.indices.shape == (64, K)
        assert (codes.values >= 0).all()
        assert ((codes.values > 0).sum(dim=1) == K).all()
        # k distinct latents per token
        assert (codes.indices.sort(dim=1).values.diff(dim=1) > 0).all()
        torch.testing.assert_close(codes.dense(M), hand_topk(model, name, x))


def tiny_model() -> USAE:
    model = USAE({"vit": 3}, SAEConfig(n_latents=5, k=2, aux_k=0))
    with torch.no_grad():
        model.W_enc["vit"].copy_(torch.tensor([[1.0, 0.0, 2.0, -1.0, 0.0],
                                               [0.0, 1.0, 1.0, 1.0, -1.0],
                                               [1.0, 0.0, 0.0, 2.0, 1.0]]))
        model.b_enc["vit"].copy_(torch.tensor([0.5, -0.5, -1.0, 0.0, 0.0]))
        model.b_dec["vit"].copy_(torch.tensor([1.0, 0.0, 0.0]))
    return model


def test_topk_hand_example():
    model = tiny_model()
    x = torch.tensor([[2.0, 2.0, -1.0],   # a - b = [1, 2, -1]: pre = [0.5, 1.5, 3, -1, -3]
                      [0.0, 0.0, 0.0]])   # a - b = [-1, 0, 0]: pre = [-0.5, -0.5, -3, 1, 0]
    codes = model.encode_sparse("vit", x, keep_pre=True)
    torch.testing.assert_close(codes.pre, torch.tensor([[0.5, 1.5, 3.0, -1.0, -3.0],
                                                        [-0.5, -0.5, -3.0, 1.0, 0.0]]))
    torch.testing.assert_close(codes.dense(5), torch.tensor([[0.0, 1.5, 3.0, 0.0, 0.0],
                                                             [0.0, 0.0, 0.0, 1.0, 0.0]]))
    assert model.encode_sparse("vit", x).pre is None


def test_relu_topk_commute_with_few_positive():
    model = tiny_model()
    with torch.no_grad():
        model.b_enc["vit"].fill_(-100.0)  # every pre-activation negative
    codes = model.encode_sparse("vit", torch.tensor([[2.0, 2.0, -1.0]]))
    assert torch.equal(codes.values, torch.zeros(1, 2))
    # one positive pre-activation: one slot holds it, the other is 0
    with torch.no_grad():
        model.b_enc["vit"].copy_(torch.tensor([-10.0, -10.0, -1.0, -10.0, -10.0]))
    codes = model.encode_sparse("vit", torch.tensor([[2.0, 2.0, -1.0]]))
    assert sorted(codes.values[0].tolist()) == [0.0, 3.0]
    torch.testing.assert_close(codes.dense(5), torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0]]))


@pytest.mark.parametrize("path", ["sparse", "dense", "no_grad"])
def test_encode_reads_requested_columns_with_their_gradient(path):
    """``columns`` (AuxK's dead latents) come back as pre[:, columns], on every encode path, and
    carry the same gradient into the encoder and the decoder bias as the written-out definition."""
    model = make()
    model.sparse_grad = path != "dense"
    with torch.no_grad():
        model.b_dec["vit"].normal_(generator=torch.Generator().manual_seed(3))
    x, columns = acts("vit"), torch.tensor([30, 2, 17, 9])
    with torch.set_grad_enabled(path != "no_grad"):
        codes = model.encode_sparse("vit", x, columns=columns)
    want = (x - model.b_dec["vit"]) @ model.W_enc["vit"] + model.b_enc["vit"]
    torch.testing.assert_close(codes.at_columns, want[:, columns].detach(), rtol=1e-5, atol=1e-6)
    assert (codes.grad_inputs is None) and codes.pre is None  # nothing kept without keep_pre
    if path == "no_grad":
        return
    params = [model.W_enc["vit"], model.b_enc["vit"], model.b_dec["vit"]]
    upstream = torch.randn(codes.at_columns.shape, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad(codes.at_columns, params, upstream)
    for g, w in zip(got, torch.autograd.grad(want[:, columns], params, upstream)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_codes_dense():
    c = Codes(torch.tensor([[2.0, 0.5], [1.0, 0.0]]), torch.tensor([[3, 0], [1, 2]]))
    assert torch.equal(c.dense(4), torch.tensor([[0.5, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 0.0]]))


# -- decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("decode", ["sparse", "dense", "auto"])
def test_sparse_decode_matches_dense(decode):
    model = make(decode=decode)
    assert model.sparse_decode == (decode != "dense")
    with torch.no_grad():
        model.b_dec["dino"].normal_()
    codes = model.encode_sparse("vit", acts("vit"))
    values = codes.values.detach().requires_grad_(True)
    out = model.decode_sparse("dino", Codes(values, codes.indices))
    target = torch.randn_like(out)
    (out * target).sum().backward()
    grad_W, grad_v = model.W_dec["dino"].grad.clone(), values.grad.clone()

    model.zero_grad(set_to_none=True)
    values2 = codes.values.detach().requires_grad_(True)
    ref = Codes(values2, codes.indices).dense(M) @ model.W_dec["dino"] + model.b_dec["dino"]
    (ref * target).sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_W, model.W_dec["dino"].grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_v, values2.grad, rtol=0, atol=1e-5)


def test_detach_blocks_decoder_gradient():
    model = make()
    codes = model.encode_sparse("vit", acts("vit"))
    model.decode_sparse("dino", codes, detach=True).pow(2).sum().backward()
    assert model.W_dec["dino"].grad is None and model.b_dec["dino"].grad is None
    assert model.W_enc["vit"].grad is not None and model.W_enc["vit"].grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    codes = model.encode_sparse("vit", acts("vit"))
    model.decode_sparse("dino", codes).pow(2).sum().backward()
    assert model.W_dec["dino"].grad is not None and model.b_dec["dino"].grad is not None


# -- constraints -----------------------------------------------------------------------------

def test_remove_parallel_grads():
    model = make()
    for name in DIMS:
        model.W_dec[name].grad = torch.randn_like(model.W_dec[name])
    before = model.W_dec["dino"].grad.clone()
    model.remove_parallel_grads(["vit"])
    assert torch.equal(model.W_dec["dino"].grad, before)  # only the named models
    dots = (model.W_dec["vit"].grad * model.W_dec["vit"]).sum(dim=1)
    torch.testing.assert_close(dots, torch.zeros(M), rtol=0, atol=1e-6)
    model.remove_parallel_grads()
    dots = (model.W_dec["dino"].grad * model.W_dec["dino"]).sum(dim=1)
    torch.testing.assert_close(dots, torch.zeros(M), rtol=0, atol=1e-6)
    # the orthogonal part is untouched: removing twice changes nothing
    g = model.W_dec["dino"].grad.clone()
    model.remove_parallel_grads()
    torch.testing.assert_close(model.W_dec["dino"].grad, g, rtol=0, atol=1e-6)


def test_remove_parallel_grads_without_grads_is_noop():
    model = make()
    model.remove_parallel_grads()
    assert model.W_dec["vit"].grad is None


def test_normalize_decoders():
    model = make()
    with torch.no_grad():
        for name in DIMS:
            model.W_dec[name].mul_(torch.rand(M, 1) * 3 + 0.1)
    direction = F.normalize(model.W_dec["vit"].detach(), dim=1)
    model.normalize_decoders()
    for name in DIMS:
        torch.testing.assert_close(model.W_dec[name].norm(dim=1), torch.ones(M))
    torch.testing.assert_close(model.W_dec["vit"].detach(), direction)


# -- BatchTopK -------------------------------------------------------------------------------

def test_batchtopk_training_budget_and_threshold():
    model = make(activation="batchtopk")
    model.train()
    x = acts("vit", n=32)
    n = x.shape[0]
    relu = F.relu(model.pre_codes("vit", x)).detach()
    kth = relu.flatten().topk(K * n).values.min()
    assert float(model.threshold_vit) == 0.0
    codes = model.encode_sparse("vit", x)
    active = (codes.values > 0).sum()
    # tokens over their 2k cap lose some of the budget (exact budget: the next test)
    assert active <= K * n and active >= K * n // 2
    assert (codes.values >= 0).all() and codes.values.shape == (n, 2 * K)
    # all that are kept clear the batch threshold
    assert (codes.values[codes.values > 0] >= kth).all()
    torch.testing.assert_close(model.threshold_vit, 0.01 * kth)
    # repeated batches: the running threshold moves toward the batch threshold
    previous = float(model.threshold_vit)
    for _ in range(5):
        model.encode_sparse("vit", x)
        now = float(model.threshold_vit)
        assert abs(now - float(kth)) < abs(previous - float(kth))
        previous = now
    assert float(model.threshold_dino) == 0.0  # per model


def test_batchtopk_exact_budget_with_uneven_tokens():
    """Tokens with 1 and 2k-1 large pre-activations: BatchTopK keeps exactly k*n over the batch."""
    model = make(activation="batchtopk").train()
    n, gen = 16, torch.Generator().manual_seed(7)
    pre = -torch.rand(n, M, generator=gen)  # all negative ...
    counts = [1 if i % 2 == 0 else 2 * K - 1 for i in range(n)]  # mean k
    for i, c in enumerate(counts):  # ... except c distinct positive latents per token
        idx = torch.randperm(M, generator=gen)[:c]
        pre[i, idx] = 1.0 + torch.rand(c, generator=gen)
    values, indices = model.activation(pre, K, threshold=model.threshold_vit, training=model.training)
    dense = torch.zeros(n, M).scatter_(1, indices, values)
    assert int((values > 0).sum()) == K * n
    assert (dense > 0).sum(dim=1).tolist() == counts
    torch.testing.assert_close(dense, F.relu(pre))
    torch.testing.assert_close(model.threshold_vit, 0.01 * pre[pre > 0].min())


def test_batchtopk_eval_uses_running_threshold():
    model = make(activation="batchtopk")
    model.eval()
    x = acts("vit", n=16)
    relu = F.relu(model.pre_codes("vit", x)).detach()
    # a threshold under which no token has more than 2k latents
    cut = relu.topk(2 * K + 1, dim=1).values[:, -1].max() + 1e-4
    model.threshold_vit.fill_(float(cut))
    codes = model.encode_sparse("vit", x)
    assert float(model.threshold_vit) == pytest.approx(float(cut))  # not updated in eval
    torch.testing.assert_close(codes.dense(M), relu * (relu >= cut))
    # the batch's own statistics do not matter in eval: one token at a time gives the same codes
    single = torch.cat([model.encode_sparse("vit", x[i:i + 1]).dense(M) for i in range(len(x))])
    torch.testing.assert_close(single, codes.dense(M))
    model.threshold_vit.fill_(1e6)
    assert torch.equal(model.encode_sparse("vit", x).dense(M), torch.zeros(16, M))


# -- BatchNorm -------------------------------------------------------------------------------

def test_batchnorm_train_and_eval_differ():
    model = make(batchnorm=True)
    assert model.bn is not None
    x = acts("vit") * 3 + 2
    model.train()
    train_pre = model.pre_codes("vit", x).detach()
    torch.testing.assert_close(train_pre.mean(dim=0), torch.zeros(M), rtol=0, atol=1e-5)
    model.eval()
    eval_pre = model.pre_codes("vit", x).detach()
    assert not torch.allclose(train_pre, eval_pre, atol=1e-3)
    assert make().bn is None


# -- standardisation, encode / decode --------------------------------------------------------

def test_encode_applies_saved_standardization():
    model = make().eval()
    mean = torch.linspace(-2, 2, 8)
    model.set_standardization("vit", mean, 2.5)
    raw = acts("vit") * 2.5 + mean
    standardized = (raw - mean) / 2.5
    out = model.encode("vit", raw)
    assert out.shape == (16, M)
    torch.testing.assert_close(out, model.encode("vit", standardized, standardized=True))
    torch.testing.assert_close(out, hand_topk(model, "vit", standardized))
    # leading dimensions are kept
    assert model.encode("vit", raw.reshape(2, 8, 8)).shape == (2, 8, M)
    # scalar mean
    model.set_standardization("dino", 1.5, 0.5)
    assert torch.equal(model.std_mean_dino, torch.full((12,), 1.5))
    raw = acts("dino")
    torch.testing.assert_close(model.encode("dino", raw), model.encode("dino", (raw - 1.5) / 0.5, standardized=True))


def test_decode_returns_raw_space():
    model = make().eval()
    with torch.no_grad():
        model.b_dec["dino"].normal_()
    mean = torch.arange(12.0)
    model.set_standardization("dino", mean, 4.0)
    codes = model.encode("vit", acts("vit"))
    std_space = codes @ model.W_dec["dino"] + model.b_dec["dino"]
    torch.testing.assert_close(model.decode("dino", codes, standardized=True), std_space)
    torch.testing.assert_close(model.decode("dino", codes), std_space * 4.0 + mean)
    assert model.decode("dino", codes.reshape(4, 4, M)).shape == (4, 4, 12)


def _with_standardization(model: USAE) -> USAE:
    with torch.no_grad():
        for name in DIMS:
            model.b_dec[name].normal_(generator=torch.Generator().manual_seed(5))
    model.set_standardization("vit", torch.linspace(-2, 2, 8), 2.5)
    model.set_standardization("dino", 1.5, 0.5)
    return model


@pytest.mark.parametrize("standardized", [False, True])
def test_forward_is_encode_then_decode_for_every_target(standardized):
    model = _with_standardization(make()).eval()
    raw = acts("vit").reshape(2, 8, 8)  # leading dimensions are kept
    out = model("vit", raw, standardized=standardized)
    codes = model.encode("vit", raw, standardized=standardized)
    assert out.codes.shape == (2, 8, M)
    torch.testing.assert_close(out.codes, codes, rtol=0, atol=0)
    assert list(out.reconstructions) == ["vit", "dino"]
    for target, d in DIMS.items():
        assert out.reconstructions[target].shape == (2, 8, d)
        torch.testing.assert_close(out.reconstructions[target], model.decode(target, codes, standardized=standardized))
    codes, recon = out  # a NamedTuple: unpacks like (codes, reconstructions)
    assert recon is out.reconstructions


def test_forward_raw_and_standardized_spaces_agree():
    """Raw input in, raw output out: the same codes as the standardised input, and each
    reconstruction is the standardised one mapped back with that target's statistics."""
    model = _with_standardization(make()).eval()
    raw = acts("dino") * 0.5 + 1.5
    out_raw = model("dino", raw)
    out_std = model("dino", (raw - 1.5) / 0.5, standardized=True)
    torch.testing.assert_close(out_raw.codes, out_std.codes)
    torch.testing.assert_close(out_raw.reconstructions["dino"], out_std.reconstructions["dino"] * 0.5 + 1.5)
    torch.testing.assert_close(out_raw.reconstructions["vit"],
                               out_std.reconstructions["vit"] * 2.5 + torch.linspace(-2, 2, 8))


def test_forward_gradients_reach_encoder_and_every_decoder():
    model = make()
    out = model("vit", acts("vit"))
    sum(r.square().sum() for r in out.reconstructions.values()).backward()
    for name in DIMS:
        assert model.W_dec[name].grad is not None and model.W_dec[name].grad.abs().sum() > 0
        assert model.b_dec[name].grad is not None
    assert model.W_enc["vit"].grad.abs().sum() > 0 and model.b_enc["vit"].grad.abs().sum() > 0
    assert model.W_enc["dino"].grad is None  # not the source: untouched


def test_forward_runs_hooks_like_any_module():
    model = make().eval()
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(output.codes.shape))
    model("dino", acts("dino", n=3))
    assert seen == [(3, M)]


def test_wrong_width_names_model_and_dims():
    model = make()
    with pytest.raises(ValueError, match=r"vit.*8.*\(5, 7\)"):
        model.encode("vit", torch.zeros(5, 7))


@pytest.mark.parametrize("call", ["encode", "decode", "dictionary"])
def test_unknown_model_lists_models(call):
    model = make()
    args = {"encode": (torch.zeros(2, 8),), "decode": (torch.zeros(2, M),), "dictionary": ()}[call]
    with pytest.raises(KeyError) as err:
        getattr(model, call)("clip", *args)
    assert "clip" in str(err.value) and "vit" in str(err.value) and "dino" in str(err.value)


def test_dictionary_is_detached_decoder():
    model = make()
    d = model.dictionary("dino")
    assert torch.equal(d, model.W_dec["dino"]) and not d.requires_grad


@pytest.mark.parametrize("batchnorm", [False, True])
def test_source_params_cover_exactly_that_model(batchnorm):
    model = make(batchnorm=batchnorm)
    for name in DIMS:
        got = {id(p) for p in model.source_params(name)}
        expected = {id(p) for key, p in model.named_parameters() if name in key.split(".")}
        assert got == expected
        assert len(got) == (6 if batchnorm else 4)
    all_ids = {id(p) for p in model.parameters()}
    assert {id(p) for n in DIMS for p in model.source_params(n)} == all_ids
