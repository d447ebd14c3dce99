"""Stage 2 on a tiny random ViT: stored tokens equal the backbone's, parts, bad images."""

import numpy as np
import pytest
import torch
from PIL import Image

from usae.activations.extract import extract_activations, part_rows
from usae.activations.store import open_store
from usae.backbones import create_backbone
from usae.config import BackboneSpec, ExtractConfig, ManifestConfig
from usae.data.manifest import build_manifest, read_manifest
from usae.device import resolve_device

SPEC = BackboneSpec(key="tiny", name="vit_small_patch16_224", pretrained=False, image_size=64,
                    kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    path = tmp_path / "manifest.parquet"
    build_manifest(ManifestConfig(source="folder", path=str(tmp_path / "imgs"), val_fraction=0.3), path)
    return path


def test_part_rows_are_contiguous_and_cover_everything(manifest):
    table = read_manifest(manifest)
    parts = [part_rows(table, k, 3) for k in range(3)]
    assert [len(p) for p in parts] == [2, 3, 2]
    assert np.concatenate([p["index"] for p in parts]).tolist() == list(range(7))
    with pytest.raises(ValueError, match="part 3 is outside 0..2"):
        part_rows(table, 3, 3)


def test_stored_tokens_equal_the_backbone_output(manifest, tmp_path):
    cfg = ExtractConfig(n_parts=2, batch_size=2, num_workers=0, device="cpu", images_per_chunk=2)
    result = extract_activations(manifest, SPEC, cfg, 1, tmp_path / "part1.zarr")
    part = open_store(tmp_path / "part1.zarr")
    rows = part["rows"][:]
    assert rows.tolist() == part_rows(read_manifest(manifest), 1, 2)["index"].tolist() == [4, 5, 6]
    assert result.n_images == 3 and part["valid"][:].all()
    assert part.attrs["part"] == 1 and part.attrs["models"] == {"tiny": "final"}
    store = part["final"]  # one group a layer
    assert store["patches"].shape == (3, 16, 32) and store["prefix"].shape == (3, 1, 32)
    assert store.attrs["grid"] == [4, 4] and store.attrs["layer"] == "final"
    backbone = create_backbone(SPEC)
    table = read_manifest(manifest).set_index("index")
    prep = backbone.preprocessing
    for i, row in enumerate(rows):
        img = Image.open(table.loc[row, "path"]).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None] / 255.0
        x = (x - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(1, 3, 1, 1)
        with torch.inference_mode():
            prefix, patches = backbone.forward_tokens(x)
        np.testing.assert_allclose(store["patches"][i].astype(np.float32), patches[0].numpy(), atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(store["prefix"][i].astype(np.float32), prefix[0].numpy(), atol=2e-2, rtol=1e-2)


def test_image_deleted_after_the_manifest_is_flagged_not_fatal(manifest, tmp_path, caplog):
    table = read_manifest(manifest)
    victim = table["path"].iloc[1]
    Image.open(victim).load()
    import os

    os.remove(victim)
    cfg = ExtractConfig(n_parts=1, batch_size=3, num_workers=0, device="cpu", images_per_chunk=4, keep_prefix=False)
    result = extract_activations(manifest, SPEC, cfg, 0, tmp_path / "p.zarr")
    store = open_store(tmp_path / "p.zarr")
    assert result.n_failed == 1 and store["valid"][:].tolist() == [True, False] + [True] * 5
    assert victim in store.attrs["failed"] and "prefix" not in store["final"]
    assert victim in caplog.text


def test_cuda_request_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="extract.device = 'cuda' but no CUDA"):
        resolve_device("cuda", "extract.device")
    assert resolve_device("auto").type == "cpu"


def test_the_weights_model_and_extract_settings_are_recorded_and_carried_to_the_aligned_store(manifest, tmp_path):
    """The stores say which weights and extract settings made them: extraction attrs, then the aligned store
    (and its statistics), whose settings the driver compares with the config's (usae.training.staleness)."""
    import dataclasses
    import hashlib
    import json

    import timm

    from usae.activations.prepare import prepare_activations
    from usae.config import PrepareConfig, part_settings, spec_settings

    checkpoint = tmp_path / "tiny.pth"
    torch.manual_seed(5)
    torch.save(timm.create_model(SPEC.name, img_size=64, num_classes=0, **SPEC.kwargs).state_dict(), checkpoint)
    spec = dataclasses.replace(SPEC, pretrained=True, weights=str(checkpoint))
    cfg = ExtractConfig(n_parts=1, batch_size=4, num_workers=0, device="cpu", images_per_chunk=4)
    extract_activations(manifest, spec, cfg, 0, tmp_path / "part0.zarr")
    expected = {"origin": f"file:{checkpoint}", "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert open_store(tmp_path / "part0.zarr")["final"].attrs["model"]["weights"] == expected
    prepare_activations([tmp_path / "part0.zarr"], manifest, PrepareConfig(grid=2, stats_images=3),
                        tmp_path / "aligned.zarr", tmp_path / "stats.json")
    assert open_store(tmp_path / "aligned.zarr").attrs["model"]["weights"] == expected
    assert open_store(tmp_path / "part0.zarr").attrs["config"] == part_settings(cfg)
    assert open_store(tmp_path / "aligned.zarr").attrs["extract"] == part_settings(cfg)
    assert part_settings(cfg)["batch_size"] == 4 and "num_workers" not in part_settings(cfg)
    made_with = json.loads(json.dumps(spec_settings(spec)))  # the model's settings, as zarr.json gives them back
    assert open_store(tmp_path / "part0.zarr")["final"].attrs["spec"] == made_with
    assert open_store(tmp_path / "aligned.zarr").attrs["spec"] == made_with
    assert made_with["weights"] == str(checkpoint) and made_with["kwargs"] == json.loads(json.dumps(SPEC.kwargs))
    assert "key" not in made_with and made_with["input_layout"] == "NCHW"
    assert json.loads((tmp_path / "stats.json").read_text())["model"]["weights"] == expected


def test_layers_of_one_model_are_one_job_with_a_group_a_layer(manifest, tmp_path):
    """Two layers extracted together store what each extracted alone stores; the layers can be read apart."""
    import dataclasses

    from usae.activations.parts import open_part_layer

    deep = dataclasses.replace(SPEC, kwargs={**SPEC.kwargs, "depth": 2})
    specs = [dataclasses.replace(deep, key="b0", layer=0), dataclasses.replace(deep, key="b1", layer=1)]
    cfg = ExtractConfig(n_parts=1, batch_size=3, num_workers=0, device="cpu", images_per_chunk=2)
    extract_activations(manifest, specs, cfg, 0, tmp_path / "both.zarr")
    both = open_store(tmp_path / "both.zarr")
    assert both.attrs["models"] == {"b0": "block0", "b1": "block1"}
    for spec in specs:
        extract_activations(manifest, spec, cfg, 0, tmp_path / f"{spec.key}.zarr")
        alone = open_part_layer(tmp_path / f"{spec.key}.zarr")
        shared = open_part_layer(tmp_path / "both.zarr", spec.layer_tag)
        np.testing.assert_array_equal(shared.patches[:], alone.patches[:])
        np.testing.assert_array_equal(shared.rows, alone.rows)
        assert shared.attrs["model"]["key"] == spec.key and shared.attrs["layer"] == spec.layer_tag
    assert not np.array_equal(open_part_layer(tmp_path / "both.zarr", "block0").patches[:],
                              open_part_layer(tmp_path / "both.zarr", "block1").patches[:])
    with pytest.raises(ValueError, match=r"several layers \['block0', 'block1'\]; say which"):
        open_part_layer(tmp_path / "both.zarr")
    with pytest.raises(ValueError, match=r"without layer 'block7' \(it has \['block0', 'block1'\]\)"):
        open_part_layer(tmp_path / "both.zarr", "block7")


def test_models_that_differ_in_more_than_the_layer_are_refused(manifest, tmp_path):
    import dataclasses

    other = dataclasses.replace(SPEC, key="wide", image_size=32)
    cfg = ExtractConfig(n_parts=1, batch_size=3, num_workers=0, device="cpu")
    with pytest.raises(ValueError, match=r"models \['wide'\] differ from models.tiny in more than the layer"):
        extract_activations(manifest, [SPEC, other], cfg, 0, tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()
