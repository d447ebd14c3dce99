"""The CUDA paths against the CPU's: training step (every scheme, activation, decoding, loss),
bf16 autocast, training from disk with resume, batches gathered on the device, evaluation, extraction
and MACO.

Skipped without a CUDA device (CI has none): run with ``pytest -m gpu tests/gpu`` on a GPU
machine (``benchmarks/gpu_check.sh`` does, before the GPU benchmarks). ``USAE_TEST_DEVICE=cpu``
runs the same comparisons CPU against CPU, which checks the tests themselves on any machine.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from usae.activations.sources import TokenSource, open_arrays
from usae.config import EvaluateConfig, SAEConfig, TrainConfig
from usae.registry import SCHEMES
from usae.sae.model import USAE
from usae.training.dead import DeadLatents
from usae.training.step import make_optimizer, optimizer_step, training_step

CPU, CUDA = torch.device("cpu"), torch.device(os.environ.get("USAE_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")]
DIMS = {"a": 48, "b": 96, "c": 64}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, on the CPU in float64."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def planted_batch(n: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tokens of three models sharing 8 sparse factors (so codes are far from ties), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    factors = torch.relu(torch.randn(n, 8, generator=gen)) * (torch.rand(n, 8, generator=gen) < 0.3)
    return {name: factors @ torch.randn(8, d, generator=gen) + 0.05 * torch.randn(n, d, generator=gen)
            for name, d in DIMS.items()}


def model_and_dead(cfg: SAEConfig, device: torch.device, live: bool) -> tuple[USAE, DeadLatents]:
    model = USAE(DIMS, cfg, seed=0).to(device).train()
    dead = DeadLatents(list(DIMS), cfg.n_latents, device)
    if live:  # a seeded fifth of the latents dead, so AuxK has work
        gen = torch.Generator().manual_seed(1)
        for name in DIMS:
            dead.since[name][torch.randperm(cfg.n_latents, generator=gen)[: cfg.n_latents // 5].to(device)] = \
                cfg.dead_tokens
        dead.refresh(cfg.dead_tokens)
    return model, dead


def losses_and_grads(cfg: SAEConfig, scheme_name: str, device: torch.device, *, decode: str, sparse_grad: bool,
                     live: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model, dead = model_and_dead(cfg, device, live)
    model.sparse_decode, model.sparse_grad = decode == "sparse", sparse_grad
    scheme = SCHEMES.get(scheme_name, setting="train.scheme")(model.names, 0)
    batch = {n: t.to(device) for n, t in planted_batch().items()}
    sources = scheme.sources(0)
    out = training_step(model, batch, sources, cfg, dead, update_all=scheme.update_all, encode=scheme.encode)
    out.loss.backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach().cpu(), grads


@pytest.mark.parametrize(("scheme", "activation"), [("paper", "topk"), ("paper", "batchtopk"),
                                                    ("all_sources", "topk"), ("all_sources", "batchtopk"),
                                                    ("sparc", "topk")])  # sparc selects over a sum: topk only
@pytest.mark.parametrize("loss", ["mse", "paper"])
def test_step_on_cuda_gives_the_cpu_losses_and_gradients(scheme, activation, loss):
    cfg = SAEConfig(n_latents=256, k=6, aux_k=16, dead_tokens=1000, activation=activation, loss=loss)
    want_loss, want = losses_and_grads(cfg, scheme, CPU, decode="sparse", sparse_grad=True)
    for decode in ("sparse", "dense"):
        got_loss, got = losses_and_grads(cfg, scheme, CUDA, decode=decode, sparse_grad=True)
        assert relative_error(got_loss, want_loss) < 1e-5, decode
        assert got.keys() == want.keys(), decode
        for name in want:
            assert relative_error(got[name], want[name]) < 1e-4, (decode, name)


def test_sparse_encoder_gradient_equals_the_dense_one_on_cuda():
    cfg = SAEConfig(n_latents=256, k=6, aux_k=16, dead_tokens=1000)
    _, sparse = losses_and_grads(cfg, "paper", CUDA, decode="sparse", sparse_grad=True)
    _, dense = losses_and_grads(cfg, "paper", CUDA, decode="sparse", sparse_grad=False)
    for name in dense:
        assert relative_error(sparse[name], dense[name]) < 1e-5, name


def run_steps(precision: str, steps: int = 150) -> tuple[list[float], USAE]:
    cfg = SAEConfig(n_latents=256, k=6, aux_k=16, dead_tokens=1000)
    train = TrainConfig(precision=precision, lr=3e-3)
    model, dead = model_and_dead(cfg, CUDA, live=True)
    optimizer = make_optimizer(model, train)
    scheme = SCHEMES.get("paper", setting="train.scheme")(model.names, 0)
    batch = {n: t.to(CUDA) for n, t in planted_batch().items()}
    losses = []
    for step in range(steps):
        out = optimizer_step(model, optimizer, batch, scheme.sources(step), scheme=scheme, dead=dead, lr=train.lr,
                             cfg=train)
        losses.append(float(out.loss.detach()))
    return losses, model


def test_bf16_autocast_trains_like_fp32_with_fp32_weights():
    fp32, _ = run_steps("fp32")
    bf16, model = run_steps("bf16")
    assert all(math.isfinite(x) for x in bf16)
    first, last = sum(bf16[:9]) / 9, sum(bf16[-9:]) / 9
    assert last < 0.6 * first  # it learns (means over 9 steps: a step's loss depends on its source)
    end = sum(fp32[-9:]) / 9
    assert abs(last - end) < 0.05 * end  # and ends where fp32 does, within bf16's precision
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    fused = make_optimizer(model, TrainConfig()).param_groups[0]["fused"]
    assert fused is True  # torch's fused Adam kernel on CUDA


def arrays(tmp_path, n=1200):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n, 4)).astype(np.float32)
    paths = {}
    for i, d in enumerate((6, 10)):
        x = base @ rng.normal(size=(4, d)).astype(np.float32) + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
        paths[f"m{i}"] = tmp_path / f"m{i}.npy"
        np.save(paths[f"m{i}"], x)
    return paths


def test_training_from_disk_on_cuda_resumes_where_it_stopped(tmp_path):
    from usae.training.loop import train_usae

    paths = arrays(tmp_path)
    sae = SAEConfig(n_latents=48, k=4, aux_k=8, dead_tokens=200, decode="auto")
    cfg = TrainConfig(max_steps=24, batch_tokens=100, buffer_tokens=400, lr=3e-3, log_every=4, checkpoint_every=5,
                      device=CUDA.type, read_threads=2)
    full = train_usae(open_arrays(paths), sae, cfg, tmp_path / "full")
    train_usae(open_arrays(paths), sae, cfg, tmp_path / "cut", stop_after=12)
    resumed = train_usae(open_arrays(paths), sae, cfg, tmp_path / "cut")
    assert resumed.steps == full.steps == 24
    a, b = (USAE.load(tmp_path / run / "model").state_dict() for run in ("full", "cut"))
    for key in a:  # CUDA's scatter-adds are not bitwise reproducible: equal within float rounding
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    log = pd.read_parquet(full.log_path)
    assert log["loss_m0"].iloc[-1] < log["loss_m0"].iloc[0]
    assert USAE.load(tmp_path / "full" / "model").meta["decode"] in ("sparse", "dense")


@pytest.mark.parametrize("read_threads", [1, 3])
def test_batches_gathered_on_cuda_are_the_host_loaders(tmp_path, read_threads):
    """Three epochs (both device buffers reused), every batch left queued on the device until the end: a
    buffer overwritten before the steps that read it had run would show here."""
    from itertools import islice

    from usae.activations.loader import TokenLoader

    sources = {name: TokenSource(name, np.load(path).astype(np.float16), chunk_rows=50)
               for name, path in arrays(tmp_path).items()}
    loader = TokenLoader(sources, 100, 400, seed=0, read_threads=read_threads)
    n = 3 * loader.steps_per_epoch
    want = [{k: v.clone() for k, v in b.items()} for b in islice(loader.batches(), n)]
    got = list(islice(loader.batches(device=CUDA), n))
    assert all(t.device.type == CUDA.type and t.dtype == torch.float16 for b in got for t in b.values())
    for w, g in zip(want, got):
        for name in w:
            torch.testing.assert_close(g[name].cpu(), w[name], rtol=0, atol=0)


def test_training_with_batches_gathered_on_cuda_resumes_and_matches_the_host_gather(tmp_path):
    from usae.training.loop import train_usae

    paths = arrays(tmp_path)
    sae = SAEConfig(n_latents=48, k=4, aux_k=8, dead_tokens=200, decode="sparse")
    cfg = dict(max_steps=24, batch_tokens=100, buffer_tokens=400, lr=3e-3, log_every=4, checkpoint_every=5,
               device=CUDA.type, read_threads=2)
    train_usae(open_arrays(paths), sae, TrainConfig(**cfg), tmp_path / "host")
    device_cfg = TrainConfig(**cfg, gather="device")
    train_usae(open_arrays(paths), sae, device_cfg, tmp_path / "device", stop_after=12)
    assert train_usae(open_arrays(paths), sae, device_cfg, tmp_path / "device").steps == 24
    a, b = (USAE.load(tmp_path / run / "model").state_dict() for run in ("host", "device"))
    for key in a:  # the same batches; CUDA's scatter-adds round differently from run to run
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def assert_same(got, want, where: str) -> None:
    """Equal structures; floats equal within float32 rounding of sums over different orders."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6, nan_ok=True), where
    else:
        assert got == want, where


def test_evaluation_on_cuda_gives_the_cpu_metrics(tmp_path):
    from usae.evaluation.evaluate import evaluate_sources

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 9, 48)).astype(np.float32)
    sources = {n: TokenSource(n, x[..., :d].copy(), chunk_rows=8) for n, d in (("a", 48), ("b", 32))}
    model = USAE({"a": 48, "b": 32}, SAEConfig(n_latents=128, k=8, aux_k=0), seed=0)
    metrics = {}
    for label, device in (("ref", CPU), ("gpu", CUDA)):
        cfg = EvaluateConfig(top_n=3, batch_images=8, device=device.type, tau=0.05)
        metrics[label] = evaluate_sources(model.to(device), sources, cfg, tmp_path / label, device=device)
    assert (metrics["ref"]["config"].pop("device"), metrics["gpu"]["config"].pop("device")) == ("cpu", CUDA.type)
    assert_same(metrics["gpu"], metrics["ref"], "metrics")
    table = {label: pd.read_parquet(tmp_path / label / "concepts.parquet") for label in ("ref", "gpu")}
    pd.testing.assert_frame_equal(table["gpu"], table["ref"], rtol=1e-4, atol=1e-6)


def test_extraction_on_cuda_stores_the_cpu_tokens(tmp_path):
    from PIL import Image

    from usae.activations.extract import extract_activations
    from usae.activations.store import open_store
    from usae.config import BackboneSpec, ExtractConfig, ManifestConfig
    from usae.data.manifest import build_manifest

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 40 + i, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    manifest = tmp_path / "manifest.parquet"
    build_manifest(ManifestConfig(source="folder", path=str(tmp_path / "imgs"), val_fraction=0.3), manifest)
    spec = BackboneSpec(key="tiny", name="vit_small_patch16_224", pretrained=False, image_size=64,
                        kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2})
    stored = {}
    for label, device in (("ref", CPU), ("gpu", CUDA)):
        cfg = ExtractConfig(n_parts=1, batch_size=4, num_workers=0, device=device.type, images_per_chunk=2)
        extract_activations(manifest, spec, cfg, 0, tmp_path / f"{label}.zarr")
        stored[label] = open_store(tmp_path / f"{label}.zarr")["final"]["patches"][:].astype(np.float32)
    assert stored["gpu"].shape == stored["ref"].shape == (6, 16, 32)
    np.testing.assert_allclose(stored["gpu"], stored["ref"], atol=2e-2, rtol=1e-2)  # float16 stores


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_onnx_vit_and_channels_last_cnn_on_cuda_give_the_cpu_tokens_and_gradients(tmp_path, autocast):
    """The fused ONNX kernels (F.layer_norm, gelu, linear, SDPA) and channels-last convolutions (torchvision's
    and timm's) on the GPU, in fp32 and under the bf16 autocast extraction uses, against the CPU; gradients
    reach the pixels."""
    import warnings

    from usae.backbones.registry import create_backbone
    from usae.config import BackboneSpec

    pytest.importorskip("onnx2torch")
    vit = BackboneSpec(key="vit", name="vit_small_patch16_224", pretrained=False, image_size=64,
                       kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2})
    model = create_backbone(vit).model.eval()
    path = tmp_path / "vit.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=14,
                          input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    specs = [BackboneSpec(key="onnx_vit", library="onnx", name="vit", layer="/norm/Add_1_output_0", image_size=64,
                          weights=str(path), prefix_tokens=1, mean=(0.5,) * 3, std=(0.5,) * 3),
             BackboneSpec(key="cnn", library="torchvision", name="resnet18", pretrained=False, image_size=64),
             BackboneSpec(key="timm_cnn", library="timm", name="resnet18", pretrained=False, image_size=64)]
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for spec in specs:
        backbone = create_backbone(spec)
        assert spec.library != "onnx" or backbone.fused["layer_norm"] > 0
        assert spec.key == "onnx_vit" or backbone.channels_last
        outputs = {}
        for device in (CPU, CUDA):
            moved = backbone.to(device)
            x = pixels.to(device).requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
                patches = moved.forward_tokens(x)[1].float()
            (grad,) = torch.autograd.grad(patches.square().mean(), x)
            outputs[device.type] = (patches, grad)
        bound = 5e-2 if autocast else 1e-4
        for got, want in zip(outputs[CUDA.type], outputs["cpu"], strict=True):
            assert relative_error(got, want) < bound, spec.key


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_maco_on_cuda_raises_its_objective(precision):
    from usae.backbones.registry import create_backbone
    from usae.config import BackboneSpec
    from usae.config.maco import MacoConfig
    from usae.maco.objective import ConceptReader, mean_over_tokens
    from usae.maco.optimize import maximise, random_phase_images
    from usae.maco.spectrum import measure_spectrum
    from PIL import Image

    spec = BackboneSpec(key="v", name="vit_small_patch16_224", pretrained=False, image_size=32,
                        kwargs={"depth": 1, "embed_dim": 24, "num_heads": 2})
    usae = USAE({"v": 24}, SAEConfig(n_latents=32, k=4, aux_k=0), seed=0)
    torch.manual_seed(0)
    reader = ConceptReader("v", create_backbone(spec), usae).to(CUDA)
    rng = np.random.default_rng(0)
    spectrum = measure_spectrum([Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
                                 for _ in range(4)], size=48)
    cfg = MacoConfig(steps=12, lr=0.2, crops=1, crop_min=1.0, crop_max=1.0, noise=0.0, batch_concepts=2, seed=3,
                     precision=precision)
    concepts = [5, 9, 17]
    images = maximise(reader, concepts, spectrum, mean_over_tokens, cfg=cfg, device=CUDA)
    assert images.shape == (3, 3, 48, 48) and images.device == CPU and torch.isfinite(images).all()
    start = random_phase_images(8, 3, spectrum, seed=3).flatten(0, 1)
    chosen = torch.tensor(concepts, device=CUDA)

    def score(batch: torch.Tensor, repeat: int) -> torch.Tensor:
        small = torch.nn.functional.interpolate(batch.to(CUDA), size=32, mode="bilinear", antialias=True)
        return mean_over_tokens(reader(small, chosen.repeat_interleave(repeat)))

    with torch.no_grad():
        assert (score(images, 1) > score(start, 8).view(3, 8).mean(1)).all()


def test_maco_noise_is_drawn_on_the_gpu_from_the_seed():
    from usae.maco.image import pixel_noise

    shape = (4, 3, 64, 64)
    first = pixel_noise(shape, torch.Generator().manual_seed(5), CUDA)
    assert first.device.type == CUDA.type
    assert torch.equal(first, pixel_noise(shape, torch.Generator().manual_seed(5), CUDA))
    assert not torch.equal(first, pixel_noise(shape, torch.Generator().manual_seed(6), CUDA))
    assert abs(float(first.mean())) < 0.02 and float(first.var()) == pytest.approx(1 + 1 / 12, rel=0.03)
