"""The model card: known answers for each part, from a saved config and a run's evaluation."""

import json

import pandas as pd
from huggingface_hub import ModelCard, ModelCardData

from usae.sae.card import CARD_TEMPLATE, UNIVERSAL_ENTROPY, card_context, read_evaluation

BACKBONES = {
    "dino": {"name": "vit_small_patch14_dinov2.lvd142m", "library": "timm", "layer": 11, "pretrained": True,
             "weights": {"origin": "hub:vit_small_patch14_dinov2.lvd142m", "sha256": None}},
    "mob": {"name": "mobilenet_v2", "library": "torchvision", "layer": "features.18", "pretrained": True,
            "weights": {"origin": "pypi:w==1.0/m.pth", "sha256": "b0353104" * 8}},
    "own": {"name": "resnet", "library": "timm", "layer": "final", "pretrained": True,
            "weights": {"origin": "file:/home/me/secret/r.pth", "sha256": "ab" * 32}},
}


def config(**meta):
    return {"usae_version": "0.2.0", "models": ["dino", "mob", "own"], "dims": {"dino": 384, "mob": 1280, "own": 64},
            "sae": {"n_latents": 2048, "k": 32, "activation": "topk"}, "meta": meta}


def test_models_and_layers_with_where_the_weights_came_from():
    table = card_context(config(provenance={"backbones": BACKBONES}))["models_table"]
    assert table.splitlines() == [
        "| model | backbone | library | layer | width d | weights |",
        "| --- | --- | --- | --- | --- | --- |",
        "| `dino` | `vit_small_patch14_dinov2.lvd142m` | timm | `11` | 384 | hub:vit_small_patch14_dinov2.lvd142m |",
        "| `mob` | `mobilenet_v2` | torchvision | `features.18` | 1280 | pypi:w==1.0/m.pth (sha256 b0353104b035) |",
        "| `own` | `resnet` | timm | `final` | 64 | local file (sha256 abababababab) |",  # no local path leaks
    ]


def test_arrays_trained_on_directly_and_unrecorded_models():
    table = card_context(config(provenance={"arrays": {"dino": "acts/dino.npy"}}))["models_table"]
    assert table.splitlines()[2:] == ["| `dino` | activations from `acts/dino.npy` | - | - | 384 | - |",
                                      "| `mob` | not recorded | - | - | 1280 | - |",
                                      "| `own` | not recorded | - | - | 64 | - |"]


def test_standardisation_of_each_model_or_none():
    stats = {"dino": {"kind": "scalar", "mean": 0.123456, "std": 2.5, "n_images": 1000, "n_tokens": 196000},
             "mob": {"kind": "per_dim", "mean": [0.0] * 1280, "std": 1.0}}
    text = card_context(config(standardization=stats))["standardization"]
    assert text.splitlines()[-3:] == ["| `dino` | scalar | 0.1235 | 2.5000 | 196,000 tokens of 1,000 images |",
                                      "| `mob` | per_dim | per dimension (1280 values) | 1.0000 | - |",
                                      "| `own` | none (identity) | - | - | - |"]
    assert card_context(config())["standardization"].startswith("None recorded: the model encodes its inputs as")


def test_settings_seed_and_versions():
    context = card_context(config(seed=7, usae_version="0.1.0", steps=1234, train={"lr": 0.0003, "max_steps": None}))
    assert context["sae_table"].splitlines()[2:] == ['| `activation` | `"topk"` |', "| `k` | `32` |",
                                                     "| `n_latents` | `2048` |"]
    assert context["train_table"].splitlines()[2:] == ["| `lr` | `0.0003` |"]  # unset (null) keys left out
    assert (context["seed"], context["trained_with"], context["saved_with"], context["steps"]) == (
        "7", "0.1.0", "0.2.0", "1,234")
    bare = card_context(config())
    assert (bare["seed"], bare["train_table"], bare["steps"]) == ("not recorded", "Not recorded.", "-")


def test_read_evaluation_counts_universal_and_co_firing_concepts(tmp_path):
    assert read_evaluation(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"n_tokens": 10}))
    assert read_evaluation(tmp_path) == {"metrics": {"n_tokens": 10}}
    entropy = [UNIVERSAL_ENTROPY + 0.05, UNIVERSAL_ENTROPY, UNIVERSAL_ENTROPY - 1e-6, 0.0]
    pd.DataFrame({"concept": range(4), "firing_entropy": entropy}).to_parquet(tmp_path / "concepts.parquet")
    assert read_evaluation(tmp_path)["n_universal"] == 2
    assert "n_universal_cofiring" not in read_evaluation(tmp_path)  # no co-fires column, no threshold
    pd.DataFrame({"concept": range(4), "firing_entropy": entropy, "cofires": [3, 1, 9, 9]}).to_parquet(
        tmp_path / "concepts.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"n_tokens": 10, "min_cofires": 2}))
    assert read_evaluation(tmp_path)["n_universal_cofiring"] == 1  # concept 0; 1 co-fires once, 2 is not universal
    text = card_context(config(), read_evaluation(tmp_path))["evaluation"]
    assert (f"Universal concepts (firing entropy >= {UNIVERSAL_ENTROPY}): 2, of which 1 co-fire (fire in every "
            "model on the same token) at least 2 times.") in text
    # With each model's fires: 1,000 tokens, concept 0 fired on 10 by each (0.1 co-fires by chance) co-fires
    # beyond chance; concept 1 fired on 600 by each co-fires 360 times, exactly chance.
    pd.DataFrame({"concept": range(4), "firing_entropy": entropy, "cofires": [5, 360, 9, 9],
                  "fires_a": [10, 600, 10, 10], "fires_b": [10, 600, 10, 10]}).to_parquet(tmp_path / "concepts.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"n_tokens": 1000, "min_cofires": 2}))
    evaluation = read_evaluation(tmp_path)
    assert (evaluation["n_universal_cofiring"], evaluation["n_universal_beyond_chance"]) == (2, 1)
    assert (f"Universal concepts (firing entropy >= {UNIVERSAL_ENTROPY}): 2, of which 2 co-fire (fire in every "
            "model on the same token) at least 2 times, 1 of them more often than chance (than if the models fired "
            "them independently at each token position).") in card_context(config(), evaluation)["evaluation"]


def test_evaluation_with_the_metrics_an_older_run_has():
    metrics = {"n_tokens": 294, "n_images": 6, "tau": 0.1, "dead_fraction": {"dino": 0.5, "mob": 0.0, "own": 1 / 3}}
    text = card_context(config(), {"metrics": metrics})["evaluation"]
    assert text.splitlines() == [
        "On 294 validation tokens (6 images), firing threshold tau = 0.1.", "",
        "Dead concepts on the validation tokens, share of the code:", "",
        "| model | never active (> 0) |", "| --- | --- |",
        "| `dino` | 50.0% |", "| `mob` | 0.0% |", "| `own` | 33.3% |"]
    assert card_context(config())["evaluation"].startswith("No evaluation was kept with this model")


def test_the_template_is_filled_and_its_header_is_hub_metadata():
    context = card_context(config(seed=1), repo_id="me/usae-demo")
    card = ModelCard.from_template(ModelCardData(library_name="usae", tags=["usae"]), template_str=CARD_TEMPLATE,
                                   **context)
    assert card.data.library_name == "usae" and card.data.tags == ["usae"]
    assert "{{" not in card.content and "}}" not in card.content
    assert '\nmodel = usae.USAE.from_pretrained("me/usae-demo")\n' in card.content
    assert 'codes = model.encode("dino", raw_acts)  # (..., 2048)' in card.content
    assert "# Universal SAE over dino, mob, own" in card.content
