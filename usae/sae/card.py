"""The model card (``README.md``) of a USAE on the Hugging Face hub: what a reader needs to use
and judge the model, from its saved ``config.json`` and, when the run was evaluated, its metrics.

:func:`card_context` turns them into the markdown pieces that :data:`CARD_TEMPLATE` (a Jinja
template, rendered by huggingface_hub's ``ModelCard.from_template``) lays out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from usae.evaluation.universal import UNIVERSAL_ENTROPY, cofire_floor, cofire_test, universal_counts
from usae.report.templating import fmt

PAPER = "https://arxiv.org/abs/2502.03714"

CARD_TEMPLATE = """---
{{ card_data }}
---

# Universal SAE over {{ title }}

A Universal Sparse Autoencoder ([Thasarathan et al. 2025]({{ paper }})): one code of {{ n_latents }} \
concepts that each model below encodes its activations into and that decodes into every model's \
activations, k = {{ k }} active per token. Trained with `usae` {{ trained_with }}, seed {{ seed }}; \
saved with `usae` {{ saved_with }}.

## Models and layers

{{ models_table }}

## Standardisation

{{ standardization }}

## Settings

SAE (`sae.*`):

{{ sae_table }}

Training (`train.*`; steps run: {{ steps }}):

{{ train_table }}

## Evaluation

{{ evaluation }}

## How to load it

With the `usae` package installed:

```python
import usae

model = usae.USAE.from_pretrained("{{ location }}")
codes = model.encode("{{ first }}", raw_acts)  # (..., {{ n_latents }}); raw activations, standardised inside
acts = model.decode("{{ last }}", codes)  # into {{ last }}'s raw activation space
out = model("{{ first }}", raw_acts)  # out.codes and out.reconstructions[<model>], every model
```

`from_pretrained` takes a hub repo id or a local folder (`model.safetensors` + `config.json`).

## Provenance

{{ provenance }}
"""


def card_context(config: dict[str, Any], evaluation: dict[str, Any] | None = None,
                 repo_id: str | None = None) -> dict[str, str]:
    """The template's fields for a saved model's ``config`` (``USAE.saved_config()``).

    Args:
        config: Models, dims, ``sae`` settings and ``meta`` as ``config.json`` holds them.
        evaluation: :func:`read_evaluation` of the run, or None when it was not evaluated.
        repo_id: Where the card will live; the loading example uses it.
    """
    meta = config.get("meta", {})
    models = list(config["models"])
    return {
        "title": ", ".join(models), "paper": PAPER, "n_latents": str(config["sae"]["n_latents"]),
        "k": str(config["sae"]["k"]), "seed": str(meta.get("seed", "not recorded")),
        "trained_with": str(meta.get("usae_version", "(not recorded)")), "saved_with": str(config["usae_version"]),
        "models_table": _models_table(models, config["dims"], meta.get("provenance", {})),
        "standardization": _standardization(models, meta.get("standardization", {})),
        "sae_table": _settings_table(config["sae"]), "train_table": _settings_table(meta.get("train", {})),
        "steps": fmt(meta.get("steps")),
        "evaluation": _evaluation(evaluation, models) if evaluation else
        "No evaluation was kept with this model (`usae evaluate` a run, then `usae push` it).",
        "location": repo_id or "path/to/this/folder", "first": models[0], "last": models[-1],
        "provenance": _provenance(meta),
    }


def read_evaluation(eval_dir: str | Path) -> dict[str, Any] | None:
    """``metrics.json`` of an evaluated run (``eval/``) and its universal-concept counts; None if absent.

    The counts come from ``concepts.parquet`` when the folder has it: ``n_universal`` (firing
    entropy >= :data:`UNIVERSAL_ENTROPY`) and, when the metrics give ``min_cofires``,
    ``n_universal_cofiring`` and ``n_universal_beyond_chance``
    (:func:`usae.evaluation.universal.universal_counts`).
    """
    eval_dir = Path(eval_dir)
    if not (eval_dir / "metrics.json").exists():
        return None
    evaluation: dict[str, Any] = {"metrics": json.loads((eval_dir / "metrics.json").read_text())}
    if (eval_dir / "concepts.parquet").exists():
        # Counted as for several models: one model's firing entropies are NaN, so it has none.
        metrics = evaluation["metrics"]
        counts = universal_counts(pd.read_parquet(eval_dir / "concepts.parquet"), 2, **cofire_test(metrics))
        for key in ("universal", "universal_cofiring", "universal_beyond_chance"):
            if key in counts:
                evaluation[f"n_{key}"] = counts[key]
    return evaluation


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _models_table(models: list[str], dims: dict[str, int], provenance: dict[str, Any]) -> str:
    backbones, arrays = provenance.get("backbones", {}), provenance.get("arrays", {})
    rows = []
    for name in models:
        b = backbones.get(name)
        if b:
            weights = b.get("weights") or {}
            origin = weights.get("origin") or ("pretrained" if b.get("pretrained") else "random init")
            digest = f" (sha256 {weights['sha256'][:12]})" if weights.get("sha256") else ""
            origin = "local file" if origin.startswith("file:") else origin
            rows.append([f"`{name}`", f"`{b.get('name')}`", str(b.get("library")), f"`{b.get('layer')}`",
                         str(dims[name]), f"{origin}{digest}"])
        else:
            source = f"activations from `{arrays[name]}`" if name in arrays else "not recorded"
            rows.append([f"`{name}`", source, "-", "-", str(dims[name]), "-"])
    return _table(["model", "backbone", "library", "layer", "width d", "weights"], rows)


def _standardization(models: list[str], stats: dict[str, dict]) -> str:
    if not stats:
        return ("None recorded: the model encodes its inputs as they are, so give `encode` activations "
                "on the scale it was trained on.")
    rows = []
    for name in models:
        s = stats.get(name)
        if s is None:
            rows.append([f"`{name}`", "none (identity)", "-", "-", "-"])
            continue
        mean = s.get("mean")
        mean_text = f"per dimension ({len(mean)} values)" if isinstance(mean, list) else fmt(mean, 4)
        measured = f"{fmt(s['n_tokens'])} tokens of {fmt(s['n_images'])} images" if "n_tokens" in s else "-"
        rows.append([f"`{name}`", str(s.get("kind", "-")), mean_text, fmt(s.get("std"), 4), measured])
    return ("Each model's activations a are standardised as (a - mean) / std before encoding; the statistics are "
            "part of the weights (`std_mean_<model>`, `std_scale_<model>`), so `encode` and `forward` take raw "
            "activations and `decode` returns them.\n\n"
            + _table(["model", "kind", "mean", "std", "measured on"], rows))


def _settings_table(settings: dict[str, Any]) -> str:
    rows = [[f"`{k}`", f"`{json.dumps(v)}`"] for k, v in sorted(settings.items()) if v is not None]
    return _table(["key", "value"], rows) if rows else "Not recorded."


def _evaluation(evaluation: dict[str, Any], models: list[str]) -> str:
    m = evaluation["metrics"]
    parts = [f"On {fmt(m.get('n_tokens'))} validation tokens ({fmt(m.get('n_images'))} images), "
             f"firing threshold tau = {m.get('tau')}."]
    if "r2_per_dim" in m:
        rows = [[f"`{src}`", *(fmt(v) for v in row)] for src, row in zip(models, m["r2_per_dim"])]
        parts += ["Reconstruction, R2 per dimension (variance explained; row: the source model's codes, "
                  "column: the target model):", _table(["from \\ to", *(f"`{t}`" for t in models)], rows)]
    dead = [(key, label) for key, label in (("dead_fraction", "never active (> 0)"),
                                            ("dead_above_tau_fraction", "never > tau")) if key in m]
    if dead:
        rows = [[f"`{n}`", *(f"{100 * m[key][n]:.1f}%" for key, _ in dead)] for n in models]
        parts += ["Dead concepts on the validation tokens, share of the code:",
                  _table(["model", *(label for _, label in dead)], rows)]
    counts = []
    if "n_universal" in evaluation:
        cofiring = ""
        if "n_universal_cofiring" in evaluation:  # counted only where the metrics give min_cofires
            least = cofire_floor(m["min_cofires"])
            cofiring = (f", of which {fmt(evaluation['n_universal_cofiring'])} co-fire (fire in every model on the "
                        f"same token) at least {'once' if least == 1 else f'{fmt(least)} times'}")
            if "n_universal_beyond_chance" in evaluation:
                cofiring += (f", {fmt(evaluation['n_universal_beyond_chance'])} of them more often than chance "
                             f"(than if the models fired them independently at each token position)")
        counts.append(f"Universal concepts (firing entropy >= {UNIVERSAL_ENTROPY}): "
                      f"{fmt(evaluation['n_universal'])}{cofiring}.")
    if "concepts_firing_in_all_models" in m:
        counts.append(f"Concepts that fire (> tau) in every model: {fmt(m['concepts_firing_in_all_models'])}.")
    return "\n\n".join(parts + ([" ".join(counts)] if counts else []))


def _provenance(meta: dict[str, Any]) -> str:
    provenance = meta.get("provenance", {})
    lines = [f"- decoding chosen at training: `{meta['decode']}`" if "decode" in meta else None,
             f"- common token grid: {provenance['grid']}" if provenance.get("grid") else None,
             f"- image manifest SHA-256: `{provenance['manifest_hash']}`" if provenance.get("manifest_hash") else None]
    lines = [line for line in lines if line]
    return "\n".join(lines) if lines else "Not recorded."
