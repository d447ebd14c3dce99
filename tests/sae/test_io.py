"""Saved USAE format: round trip, error messages, tampering and atomic replacement."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import usae.sae.io as io
from usae.config import SAEConfig
from usae.fingerprint import file_sha256
from usae.sae.integrity import damaged_models, model_problem
from usae.sae.io import CONFIG, FORMAT, WEIGHTS
from usae.sae.model import USAE, load_usae, save_usae

DIMS = {"vit": 8, "dino": 12}


def trained_like(seed: int = 0, **overrides) -> USAE:
    cfg = SAEConfig(**{"n_latents": 32, "k": 4, "aux_k": 8, "activation": "batchtopk", "batchnorm": True,
                       **overrides})
    model = USAE(DIMS, cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.train()
    model.encode_sparse("vit", torch.randn(16, 8, generator=gen))  # moves BatchNorm stats and threshold
    model.set_standardization("vit", torch.linspace(-1, 1, 8), 2.0)
    model.set_standardization("dino", 0.5, 3.0)
    model.meta = {"scheme": "paper", "steps": 12, "standardization": {"vit": "per_dim"}}
    return model


def test_round_trip(tmp_path):
    model = trained_like()
    assert float(model.threshold_vit) > 0
    out = save_usae(model, tmp_path / "m")
    assert out == tmp_path / "m"
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS, CONFIG])

    loaded = load_usae(out)
    assert not loaded.training
    assert loaded.cfg == model.cfg and loaded.dims == model.dims and loaded.names == model.names
    assert loaded.meta == model.meta
    ref, got = model.state_dict(), loaded.state_dict()
    assert set(ref) == set(got)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    for key in ("threshold_vit", "std_mean_vit", "std_scale_vit", "std_mean_dino", "std_scale_dino",
                "bn.vit.running_mean", "bn.vit.running_var"):
        assert key in got

    model.eval()
    x = torch.randn(10, 8) * 2 - 0.3
    torch.testing.assert_close(loaded.encode("vit", x), model.encode("vit", x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode("dino", loaded.encode("vit", x)),
                               model.decode("dino", model.encode("vit", x)), rtol=0, atol=0)

    config = json.loads((out / CONFIG).read_text())
    assert config["format"] == FORMAT and config["models"] == ["vit", "dino"]
    assert config["dims"] == DIMS and config["sae"]["activation"] == "batchtopk"


def test_classmethods(tmp_path):
    model = trained_like()
    model.save(tmp_path / "m")
    loaded = USAE.load(tmp_path / "m")
    assert torch.equal(loaded.W_dec["dino"], model.W_dec["dino"])


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_usae(tmp_path / "empty")
    assert WEIGHTS in str(err.value) and CONFIG in str(err.value)

    save_usae(trained_like(), tmp_path / "m")
    (tmp_path / "m" / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_usae(tmp_path / "m")
    assert str(tmp_path / "m" / WEIGHTS) in str(err.value) and CONFIG not in str(err.value)

    with pytest.raises(FileNotFoundError):
        load_usae(tmp_path / "nowhere")


def test_wrong_format(tmp_path):
    save_usae(trained_like(), tmp_path / "m")
    path = tmp_path / "m" / CONFIG
    config = json.loads(path.read_text())
    config["format"] = "usae-model/0"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="usae-model/0"):
        load_usae(tmp_path / "m")


@pytest.mark.parametrize("tamper", ["extra", "missing"])
def test_tampered_weights(tmp_path, tamper):
    save_usae(trained_like(), tmp_path / "m")
    path = tmp_path / "m" / WEIGHTS
    state = load_file(str(path))
    if tamper == "extra":
        state["W_dec.clip"] = torch.zeros(32, 4)
    else:
        del state["W_enc.dino"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match="SHA-256 differs from the one recorded"):
        load_usae(tmp_path / "m")
    _record_hash(tmp_path / "m")  # a deliberate edit: the key check still catches it
    with pytest.raises(ValueError, match="W_dec.clip" if tamper == "extra" else "W_enc.dino"):
        load_usae(tmp_path / "m")


def _record_hash(directory):
    config = json.loads((directory / CONFIG).read_text())
    config["weights_sha256"] = file_sha256(directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps(config))


def test_truncated_weights_are_named_with_their_path(tmp_path):
    save_usae(trained_like(), tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS
    assert model_problem(tmp_path / "m") is None
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    expected = f"{weights} is damaged: {len(data) - 100:,} bytes where its header says {len(data):,}"
    assert model_problem(tmp_path / "m", full=False).startswith(expected)
    with pytest.raises(ValueError) as caught:
        load_usae(tmp_path / "m")
    assert str(caught.value).startswith(expected) and "retrain" in str(caught.value)
    weights.write_bytes(data[:5])
    assert "too short to be a safetensors file" in model_problem(tmp_path / "m")
    weights.write_bytes(data[:40])
    assert "cut short inside its header" in model_problem(tmp_path / "m")


def test_a_flipped_bit_is_found_by_the_recorded_hash(tmp_path):
    save_usae(trained_like(), tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # an exponent bit of the last float: finite, wrong, same length
    weights.write_bytes(bytes(data))
    assert model_problem(tmp_path / "m", full=False) is None  # the cheap check cannot see it
    assert "SHA-256 differs" in model_problem(tmp_path / "m")
    assert damaged_models([tmp_path / "m", tmp_path / "not_trained_yet"]) == [
        f"{weights} is damaged: its SHA-256 differs from the one recorded when it was saved: delete "
        f"{tmp_path / 'm'} and rerun, which retrains it (its evaluation and report, made from the model before "
        "the damage, are kept until then)"]


def test_weights_of_other_shape(tmp_path):
    save_usae(trained_like(), tmp_path / "m")
    path = tmp_path / "m" / CONFIG
    config = json.loads(path.read_text())
    config["dims"]["dino"] = 16  # config no longer matches the weights
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="dino"):
        load_usae(tmp_path / "m")


def test_save_is_atomic_and_replaces(tmp_path):
    first, second = trained_like(seed=0), trained_like(seed=1)
    save_usae(first, tmp_path / "m")
    (tmp_path / "m" / "stale.txt").write_text("left over")
    save_usae(second, tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directories left
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([WEIGHTS, CONFIG])
    assert torch.equal(load_usae(tmp_path / "m").W_dec["vit"], second.W_dec["vit"])


def test_failed_save_keeps_previous_model(tmp_path, monkeypatch):
    first = trained_like(seed=0)
    save_usae(first, tmp_path / "m")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_usae(trained_like(seed=1), tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert torch.equal(load_usae(tmp_path / "m").W_dec["vit"], first.W_dec["vit"])


def test_the_format_module_does_not_import_the_model():
    """usae.sae.model imports usae.sae.io, never the other way round (no import cycle)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(io))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name.startswith("usae.sae") and name != "usae.sae.integrity" for name in imported), imported
