"""Records of models that passed the pre-run checks: reused while nothing they depend on changed, never trusted
otherwise, and a warm start that needs no torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from usae.backbones import geometry, geometry_cache
from usae.backbones.geometry import check_geometry
from usae.backbones.geometry_cache import GeometryCache, record_name
from usae.backbones.layout import TokenLayout
from usae.config import BackboneSpec, load_config
from usae.registry import BACKBONES

VIT16 = {"name": "vit_small_patch16_224", "pretrained": False, "image_size": 112,
         "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}}
REPO = Path(__file__).resolve().parents[2]


def _config(prepare_grid=7, **models):
    return load_config({"models": models, "prepare": {"grid": prepare_grid}})


@pytest.fixture
def probes(monkeypatch):
    """The models check_geometry builds, by key (the real probe still runs)."""
    built = []
    real = geometry.probe_geometry

    def counting(spec):
        built.append(spec.key)
        return real(spec)

    monkeypatch.setattr(geometry, "probe_geometry", counting)
    return built


def test_a_recorded_model_is_not_built_again(tmp_path, probes):
    cfg = _config(7, a=VIT16, b={**VIT16, "layer": 0})
    first = check_geometry(cfg, tmp_path)
    assert probes == ["a", "b"] and len(list(tmp_path.glob("*.json"))) == 2
    assert check_geometry(cfg, tmp_path) == first == {"a": TokenLayout(1, (7, 7), 32), "b": TokenLayout(1, (7, 7), 32)}
    assert probes == ["a", "b"]  # nothing built the second time


def test_a_changed_setting_is_checked_again(tmp_path, probes):
    check_geometry(_config(7, a=VIT16), tmp_path)
    check_geometry(_config(7, a={**VIT16, "image_size": 224}), tmp_path)
    assert probes == ["a", "a"]
    assert check_geometry(_config(7, a={**VIT16, "image_size": 224}), tmp_path)["a"].grid == (14, 14)
    assert probes == ["a", "a"]


def test_the_grid_is_checked_against_a_recorded_model(tmp_path):
    check_geometry(_config(7, a=VIT16), tmp_path)
    with pytest.raises(ValueError, match=r"prepare.grid = 8 is larger than models.a's patch grid 7x7"):
        check_geometry(_config(8, a=VIT16), tmp_path)


def test_a_refused_config_records_nothing(tmp_path, probes):
    """Not even its models that passed: a config refused before any job leaves no trace (no results folder)."""
    cfg = _config(7, a=VIT16, b={**VIT16, "layer": 5})
    for _ in range(2):
        with pytest.raises(ValueError, match=r"models.b: layer 5 is out of range"):
            check_geometry(cfg, tmp_path / "records")
    assert probes == ["a", "b", "a", "b"] and not (tmp_path / "records").exists()


def test_an_unreadable_record_is_checked_again_and_replaced(tmp_path, probes):
    cfg = _config(7, a=VIT16)
    check_geometry(cfg, tmp_path)
    (record,) = tmp_path.glob("*.json")
    record.write_text('{"layout": {"n_prefix": 1, "gri')  # cut short
    assert check_geometry(cfg, tmp_path)["a"] == TokenLayout(1, (7, 7), 32)
    assert probes == ["a", "a"] and json.loads(record.read_text())["layout"]["grid"] == [7, 7]


def test_without_a_folder_nothing_is_recorded(tmp_path, probes, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_geometry(_config(7, a=VIT16))
    check_geometry(_config(7, a=VIT16))
    assert probes == ["a", "a"] and not list(tmp_path.rglob("*.json"))


def test_a_weights_files_state_is_part_of_the_name(tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"x" * 10)
    spec = BackboneSpec(key="a", name=VIT16["name"], weights=str(weights))
    first = record_name(spec)
    os.utime(weights, ns=(1, 1))
    second = record_name(spec)
    weights.write_bytes(b"x" * 11)
    os.utime(weights, ns=(1, 1))
    third = record_name(spec)
    assert len({first, second, third}) == 3
    weights.unlink()
    assert record_name(spec) is None  # a missing file is the check's to report, every time


def test_library_versions_and_source_are_part_of_the_name(monkeypatch):
    spec = BackboneSpec(key="a", name=VIT16["name"], pretrained=False)
    before = record_name(spec)
    monkeypatch.setattr(geometry_cache, "library_versions", lambda: {"timm": "0.0.1"})
    after_upgrade = record_name(spec)
    monkeypatch.setattr(geometry_cache, "source_hash", lambda: "edited")
    assert len({before, after_upgrade, record_name(spec)}) == 3


def test_hub_weights_and_plugin_families_are_never_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))  # the plugin leaks into no other test
    BACKBONES.register("my_plugin_family")(type("PluginBackbone", (), {}))
    hub = BackboneSpec(key="h", name=VIT16["name"], pretrained=True)
    plugin = BackboneSpec(key="p", library="my_plugin_family", name="x", pretrained=False)
    assert record_name(hub) is None and record_name(plugin) is None
    GeometryCache(tmp_path).put(hub, TokenLayout(1, (7, 7), 32))
    assert not list(tmp_path.iterdir()) and GeometryCache(tmp_path).get(hub) is None


def test_a_warm_start_checks_the_config_without_torch(tmp_path):
    """What the workflow's driver runs before any job (common.smk), once the models are recorded."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"results": str(tmp_path / "results"), "models": {"a": VIT16},
                                  "prepare": {"grid": 7}}))
    driver = f"""
import sys
from usae import paths
from usae.config.files import load_config_file
from usae.backbones.geometry import check_geometry
from usae.data.sizes import check_data_sizes
from usae.sae.integrity import damaged_models
cfg = load_config_file({str(config)!r})
check_data_sizes(cfg)
found = check_geometry(cfg, paths.geometry_cache(cfg))
damaged_models(paths.for_runs(cfg, paths.run_model))
print(found["a"].grid, "torch" in sys.modules)
"""
    runs = [subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, cwd=REPO, check=True)
            for _ in range(2)]
    assert runs[0].stdout.split() == ["(7,", "7)", "True"]  # the first start builds the model
    assert runs[1].stdout.split() == ["(7,", "7)", "False"]
