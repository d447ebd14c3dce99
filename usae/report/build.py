"""Stage 6: the report of a run, a static site that opens from disk (no network).

``index.html`` (summary, images excluded and why, figures, concept cards, coordinated activation
maximisation when the run has it, runs compared),
``concepts.html`` (every concept, searchable and sortable) and ``concept.html?id=K`` (one
page per concept).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from usae import __version__
from usae.atomic import atomic_path
from usae.data.images import reason_kind
from usae.evaluation.consistency import consistency_with_solo_runs
from usae.evaluation.universal import CHANCE_ALPHA, cofire_floor, cofire_test, shared_concepts
from usae.report.cards import card
from usae.report.compare import floored_metrics, load_runs, metric_tables
from usae.report.explorer import NO_IMAGES, ExplorerIndex, write_explorer
from usae.report.figures import make_figures
from usae.report.maco import load_maco, maco_section
from usae.report.other_data import other_data_section
from usae.report.templating import environment

logger = logging.getLogger(__name__)

N_CARDS = 12
MAX_EXCLUDED_LISTED = 200  # rows of the excluded-images list on index.html; the rest are counted
FOLD_EXCLUDED_AFTER = 20  # longer lists start folded (<details>)
AT_EXTRACTION = "unreadable at extraction"
_COLUMNS = ("index", "image_id", "path", "status", "reason")  # manifest columns the excluded-images list reads


def select_concepts(table: pd.DataFrame, models: list[str], n: int = N_CARDS, min_fires: int = 10,
                    min_cofires: int | None = None, n_tokens: int | None = None,
                    alpha: float = CHANCE_ALPHA) -> dict[str, list[int]]:
    """Concept ids for the three galleries: top energy, most universal, most model-specific.

    Universal: highest firing entropy (ties broken by energy) among concepts firing at least
    ``min_fires`` times in total that, given ``min_cofires`` (the evaluation's) and a ``cofires``
    column, the models fire together (:func:`~usae.evaluation.universal.shared_concepts`: at
    least that often and, given ``n_tokens``, more often than chance at family-wise error
    ``alpha``): firing entropy weighs how evenly the models fire a concept, not whether they fire
    it on the same tokens. Model-specific: lowest firing entropy among the concepts firing
    ``min_fires`` times.
    """
    total = sum(table[f"fires_{m}"] for m in models)
    firing = ((total >= min_fires) & table["firing_entropy"].notna()).to_numpy()
    alive = shared = table[firing]
    if min_cofires is not None and "cofires" in table.columns:
        # The whole table: the chance test counts every concept of the dictionary.
        shared = table[firing & shared_concepts(table, min_cofires, n_tokens, alpha)]
    by_energy = table.sort_values("energy_total", ascending=False)
    universal = shared.sort_values(["firing_entropy", "energy_total"], ascending=[False, False])
    specific = alive.sort_values(["firing_entropy", "energy_total"], ascending=[True, False])
    return {"energy": by_energy["concept"].head(n).tolist(), "universal": universal["concept"].head(n).tolist(),
            "specific": specific["concept"].head(n).tolist()}


def gallery_headings(min_cofires: int | None, n_tokens: int | None = None) -> dict[str, str]:
    """The galleries' headings (:func:`select_concepts`'s keys), saying how each was chosen."""
    chance = "" if n_tokens is None else ", more often than chance"
    cofiring = "" if min_cofires is None else \
        f", among those co-firing at least {cofire_floor(min_cofires):,} times{chance}"
    return {"energy": "Most important (energy)", "universal": f"Most universal (highest firing entropy{cofiring})",
            "specific": "Most model-specific (lowest firing entropy)"}


def build_report(run_dir: str | Path, manifest_path: str | Path | None, out_dir: str | Path, *,
                 other_runs: dict[str, str | Path] | None = None, maco_dir: str | Path | None = None,
                 test_sets: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the report of the run in ``run_dir`` to ``out_dir`` (atomically); return index.html.

    Args:
        run_dir: ``results/runs/<run>`` with ``model/``, ``train_log.parquet`` and ``eval/``.
        manifest_path: the manifest the stores were built from (image paths); None for a run
            on activation arrays (``usae train --acts``): the sections that show images
            (top images, heatmaps, excluded images) are left out with a line saying why.
        out_dir: report folder.
        other_runs: run name -> run folder, compared side by side with this one.
        maco_dir: the run's MACO folder (``maco.json``, ``images/``): its images are copied to
            ``maco/`` and shown on the cards, the concept pages and index.html. None: no MACO.
        test_sets: names of the test sets the run was evaluated on (``eval_<name>/``), shown in
            the "Other data" section beside the training data's validation metrics.

    Raises:
        FileNotFoundError: ``maco_dir`` is given but has no ``maco.json``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = json.loads((run_dir / "model" / "config.json").read_text())
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    table = pd.read_parquet(run_dir / "eval" / "concepts.parquet")
    models = metrics["models"]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        figures = make_figures(run_dir, tmp / "figures")
        maco = load_maco(maco_dir, tmp) if maco_dir is not None else None
        manifest = Path(manifest_path) if manifest_path is not None else None
        explorer = write_explorer(run_dir / "eval", manifest, tmp, models, maco=maco)
        galleries = select_concepts(table, models, **cofire_test(metrics))
        rows = table.set_index("concept")
        cards = {name: [card(_row(rows, cid), models, index=explorer, maco=maco) for cid in ids]
                 for name, ids in galleries.items()}
        context = _context(run_dir, config, metrics, table, figures, cards, explorer, other_runs or {})
        stores = config.get("meta", {}).get("provenance", {}).get("stores") or {}
        context["maco"] = maco_section(maco, set(explorer.concept_ids)) if maco is not None else None
        context["excluded"] = excluded_images(manifest, stores, limit=MAX_EXCLUDED_LISTED,
                                              fold_after=FOLD_EXCLUDED_AFTER) if manifest is not None else None
        context["no_images"] = NO_IMAGES if manifest is None else None
        context["other_data"] = other_data_section(run_dir, test_sets)
        context["universality"] = universality_table(run_dir)
        (tmp / "index.html").write_text(environment().get_template("index.html").render(**context))
    logger.info("report of %s written to %s", run_dir.name, out_dir)
    return out_dir / "index.html"


def universality_table(run_dir: Path) -> dict[str, Any] | None:
    """The run's universal-concept counts, each with its random dictionary's floor when the evaluation made
    baselines: the comparison's universality table for this one run; None for one model (no firing entropy)."""
    run = load_runs({run_dir.name: run_dir})[run_dir.name]
    if len(run.models) < 2:
        return None
    tables = metric_tables({run.name: floored_metrics(run)}, run.models)
    return next((t for t in tables if t["key"] == "universality"), None)


def excluded_images(manifest_path: str | Path, stores: dict[str, str | Path] | None = None, *,
                    limit: int = MAX_EXCLUDED_LISTED, fold_after: int = FOLD_EXCLUDED_AFTER) -> dict[str, Any] | None:
    """The manifest's images that the run did not use, and why.

    Excluded are rows whose manifest ``status`` is not ``ok`` (``unreadable``, ``duplicate``)
    and rows that were ``ok`` in the manifest but are marked invalid (``valid`` false) in
    any of ``stores`` (aligned stores, model -> path), e.g. images deleted after the
    manifest was built; their reason comes from the stores' ``failed`` attribute (collected
    from the extraction parts by ``prepare``).

    Returns:
        ``None`` when the manifest has no ``status`` column, else ``n_manifest``,
        ``n_excluded``, ``by_status`` and ``by_kind`` (label -> count, largest first),
        ``rows`` (the first ``limit`` of ``{index, image_id, path, status, reason}`` in
        manifest order), ``n_more`` (rows not listed), ``folded`` (more than ``fold_after``
        excluded: the list starts folded) and ``manifest`` (its path).
    """
    try:
        table = pd.read_parquet(manifest_path, columns=list(_COLUMNS))
    except (OSError, ValueError, KeyError) as err:
        logger.warning("report: no excluded-images section (manifest %s has no status: %s)", manifest_path, err)
        return None
    table = table.astype({"status": "string", "reason": "string"}).fillna({"reason": ""})
    excluded = _excluded_rows(table, stores or {})
    by_kind = _largest_first(pd.Series([s if s == "duplicate" else f"{s}: {reason_kind(r)}"
                                        for s, r in zip(excluded["status"], excluded["reason"])], dtype="object"))
    by_status = excluded["status"].value_counts()
    order = ["unreadable", "duplicate", AT_EXTRACTION]
    by_status = by_status.loc[sorted(by_status.index, key=lambda s: (order.index(s) if s in order else 3, s))]
    if len(excluded):
        logger.info("report: %d of %d images excluded (%s)", len(excluded), len(table),
                    ", ".join(f"{n} {k}" for k, n in by_kind.items()))
    listed = excluded.head(limit)
    return {
        "n_manifest": len(table), "n_excluded": len(excluded), "manifest": str(manifest_path),
        "by_status": {str(k): int(v) for k, v in by_status.items()},
        "by_kind": {str(k): int(v) for k, v in by_kind.items()},
        "rows": [{"index": int(r.index), "image_id": str(r.image_id), "path": str(r.path),
                  "status": str(r.status), "reason": str(r.reason)} for r in listed.itertuples(index=False)],
        "n_more": len(excluded) - len(listed), "folded": len(excluded) > fold_after,
    }



def _excluded_rows(table: pd.DataFrame, stores: dict[str, str | Path]) -> pd.DataFrame:
    """Manifest rows not ``ok``, plus ``ok`` rows some store marks invalid; in manifest order."""
    excluded = table[table["status"] != "ok"].copy()
    failed_late, reasons = _failed_at_extraction(stores, set(table.loc[table["status"] == "ok", "index"]))
    if failed_late:
        late = table.set_index("index").loc[sorted(failed_late)].reset_index()
        late["status"] = AT_EXTRACTION
        late["reason"] = [_late_reason(reasons.get(path, ""), failed_late[i])
                          for i, path in zip(late["index"], late["path"])]
        excluded = pd.concat([excluded, late[list(_COLUMNS)]], ignore_index=True)
    return excluded.sort_values("index", kind="stable")


def _largest_first(labels: pd.Series) -> pd.Series:
    """Count of each label, largest first, ties by label."""
    counts = labels.value_counts()
    return counts.loc[sorted(counts.index, key=lambda k: (-counts[k], k))]


def _failed_at_extraction(stores: dict[str, str | Path],
                          ok_rows: set[int]) -> tuple[dict[int, list[str]], dict[str, str]]:
    """Manifest index -> models whose store marks it invalid; and the stores' ``{path: reason}``."""
    from usae.activations.store import open_store

    failed: dict[int, list[str]] = {}
    reasons: dict[str, str] = {}
    for model, store in sorted(stores.items()):
        try:
            # open_store: a missing `valid` chunk would otherwise read as False, every image "failed".
            group = open_store(store)
            invalid = [group[split]["rows"][:][~group[split]["valid"][:].astype(bool)]
                       for split in ("train", "val") if split in group]
        except Exception as err:  # noqa: BLE001 - a missing or foreign store only loses this section's part
            logger.warning("report: cannot read the valid rows of %s's store %s: %s", model, store, err)
            continue
        reasons.update(group.attrs.get("failed") or {})
        for row in (int(r) for split_rows in invalid for r in split_rows if int(r) in ok_rows):
            failed.setdefault(row, []).append(model)
    return failed, reasons


def _late_reason(reason: str, models: list[str]) -> str:
    return f"{reason or 'flagged invalid in the stores (reason not recorded)'} (models: {', '.join(models)})"


def _row(rows: pd.DataFrame, concept: int) -> dict[str, Any]:
    row = rows.loc[concept].to_dict()
    row["concept"] = int(concept)
    return row


def _context(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], table: pd.DataFrame,
             figures: dict[str, Any], cards: dict[str, list[dict[str, Any]]], explorer: ExplorerIndex,
             other_runs: dict[str, str | Path]) -> dict[str, Any]:
    meta = config.get("meta", {})
    models = metrics["models"]
    backbones = meta.get("provenance", {}).get("backbones") or {}
    arrays = meta.get("provenance", {}).get("arrays") or {}  # a run on arrays: the file stands for the backbone
    random_init = sorted(m for m, b in backbones.items() if b and not b.get("pretrained", True))
    per_model = []
    for i, m in enumerate(models):
        backbone = backbones.get(m) or {}
        weights = backbone.get("weights") or {}
        per_model.append({
            "name": m, "backbone": backbone.get("name", arrays.get(m, "?")),
            "library": backbone.get("library", "array" if m in arrays else "?"),
            "layer": backbone.get("layer", "?"), "pretrained": backbone.get("pretrained"),
            "weights_origin": weights.get("origin"), "weights_sha256": weights.get("sha256"), "width": config["dims"][m],
            "l0": metrics["l0"][m], "dead": metrics["dead"][m], "dead_fraction": metrics["dead_fraction"][m],
            "dead_above_tau": metrics.get("dead_above_tau", {}).get(m),
            "dead_above_tau_fraction": metrics.get("dead_above_tau_fraction", {}).get(m),
            "cfp": metrics["cofire_proportion_mean"][m], "r2_self": metrics["r2_per_dim"][i][i],
        })
    runs = {run_dir.name: run_dir, **{k: Path(v) for k, v in other_runs.items() if Path(v) != run_dir}}
    return {
        "run": run_dir.name, "models": models, "per_model": per_model, "metrics": metrics,
        "sae": config["sae"], "train": meta.get("train", {}), "scheme": meta.get("scheme"), "steps": meta.get("steps"),
        "random_init": random_init, "figures": figures, "cards": cards, "explorer": explorer,
        "gallery_headings": gallery_headings(metrics.get("min_cofires"), metrics.get("n_tokens")),
        "n_concepts": len(table), "comparison": [_run_summary(name, path) for name, path in sorted(runs.items())],
        "consistency": consistency_with_solo_runs(run_dir, models, table, runs),
        "usae_version": __version__,
        "grid": meta.get("provenance", {}).get("grid"), "manifest_hash": meta.get("provenance", {}).get("manifest_hash"),
    }


def _run_summary(name: str, run_dir: Path) -> dict[str, Any]:
    config = json.loads((run_dir / "model" / "config.json").read_text())
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    r2 = np.array(metrics["r2_per_dim"], dtype=float)
    off = r2[~np.eye(len(r2), dtype=bool)]
    return {"name": name, "scheme": config["meta"].get("scheme"), "n_latents": config["sae"]["n_latents"],
            "k": config["sae"]["k"], "steps": config["meta"].get("steps"),
            "r2_diag": float(np.mean(np.diag(r2))), "r2_off": float(off.mean()) if off.size else None,
            "dead": float(np.mean(list(metrics["dead_fraction"].values()))),
            "cfp": _mean(metrics["cofire_proportion_mean"].values()),
            "pearson": metrics["pearson_log_cofires_log_energy"]}


def _mean(values: Any) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None

