"""The comparison of runs: the settings that differ, the metric tables (runs as columns) with known answers on
three real tiny runs (``compared_runs``, conftest.py), baselines as extra columns, the page and ``usae compare``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure as MplFigure  # noqa: E402

from usae.report.compare import (  # noqa: E402
    build_comparison,
    compare_config_runs,
    differing_settings,
    load_runs,
    metric_columns,
    read_baselines,
    run_metrics,
    run_settings,
)
from usae.report.compare_figures import PanelRun, draw_entropy_panels, draw_r2_panels  # noqa: E402
from usae.report.compare_tables import metric_tables, setting_text  # noqa: E402
from usae.report.panels import colour_range  # noqa: E402


def _tables(runs: dict[str, Path], models: tuple[str, ...] = ("a", "b")) -> dict[str, dict]:
    return {t["key"]: t for t in metric_tables(metric_columns(load_runs(runs)), list(models))}


def _row(table: dict, key: str) -> list[str]:
    return next(r["cells"] for r in table["rows"] if r["key"] == key)


def _copy_run(compared_runs: dict[str, Path], tmp_path: Path, name: str = "usae") -> Path:
    """A copy of a run in a results tree of its own (``tmp_path/results/runs/<name>``), free to edit."""
    run = tmp_path / "results" / "runs" / name
    shutil.copytree(compared_runs[name], run)
    return run


def test_differing_settings_known_answer() -> None:
    settings = {"x": {"models": "a, b", "train.lr": 0.003, "layer.a": "l1", "layer.b": "l2", "grid": [7, 7]},
                "y": {"models": "a, b", "train.lr": 0.001, "layer.a": "l1", "layer.b": "l3", "grid": [7, 7]},
                "z": {"models": "a", "train.lr": 0.003, "layer.a": "l1", "grid": [7, 7], "train.max_steps": 5}}
    diff = differing_settings(settings)
    assert diff == {"models": {"x": "a, b", "y": "a, b", "z": "a"}, "train.lr": {"x": 0.003, "y": 0.001, "z": 0.003},
                    "layer.b": {"x": "l2", "y": "l3"}, "train.max_steps": {"z": 5}}
    assert list(diff) == ["models", "train.lr", "layer.b", "train.max_steps"]  # first appearance
    same_layer = {run: {**values, "layer.b": "l2"} for run, values in settings.items() if run != "z"}
    assert "layer.b" not in differing_settings({**same_layer, "z": settings["z"]})  # absent with its model only
    assert differing_settings({"x": settings["x"]}) == {}


def test_settings_of_real_runs_differ_by_their_models_and_lr_only(compared_runs: dict[str, Path]) -> None:
    runs = load_runs(compared_runs)
    settings = {name: run_settings(run.config, run.metrics) for name, run in runs.items()}
    assert differing_settings(settings) == {"models": {"usae": "a, b", "slow": "a, b", "solo_a": "a"},
                                            "train.lr": {"usae": 0.003, "slow": 0.001, "solo_a": 0.003}}
    usae = settings["usae"]
    assert (usae["sae.k"], usae["sae.n_latents"], usae["train.max_steps"], usae["steps"]) == (3, 32, 24, 24)
    assert usae["backbone.b"].endswith("b.npy") and usae["standardize.b"] == "scalar"  # a run on arrays
    assert usae["evaluate.tau"] == 0.1 and "layer.b" not in settings["solo_a"]
    assert [setting_text(v) for v in (None, True, 0.001, 1e-06, 1.0, [7, 7], "per_dim")] == [
        "-", "true", "0.001", "1e-06", "1", "[7, 7]", "per_dim"]


def test_runs_at_several_depths_differ_by_their_layers() -> None:
    def config(layers: dict[str, str]) -> dict:
        return {"models": list(layers), "meta": {"provenance": {"backbones": {
            m: {"name": "mobilenet_v2" if m.startswith("cnn") else "vit", "layer": layer}
            for m, layer in layers.items()}}}}

    shallow = run_settings(config({"cnn_d1": "features.4", "vit_d1": "block2"}))
    deep = run_settings(config({"cnn_d4": "features.18", "vit_d4": "final"}))
    assert (shallow["layers"], deep["layers"]) == ("features.4, block2", "features.18, final")
    diff = differing_settings({"d1": shallow, "d4": deep})
    assert diff["layers"] == {"d1": "features.4, block2", "d4": "features.18, final"}
    assert "layer.cnn_d1" not in diff  # each depth's model is in one run only: its own layer never differs
    assert "layers" not in run_settings({"models": ["a"], "meta": {"provenance": {"arrays": {"a": "a.npy"}}}})


def test_run_figures_are_the_evaluation_s(compared_runs: dict[str, Path]) -> None:
    runs = load_runs(compared_runs)
    metrics = json.loads((compared_runs["usae"] / "eval" / "metrics.json").read_text())
    r2 = metrics["r2_per_dim"]
    got = run_metrics(runs["usae"])
    assert (got["r2_self.a"], got["r2_self.b"]) == (r2[0][0], r2[1][1])
    assert got["r2_cross_min"] == min(r2[0][1], r2[1][0])
    assert got["r2_cross_mean"] == pytest.approx((r2[0][1] + r2[1][0]) / 2)
    assert got["dead_above_tau.b"] == metrics["dead_above_tau_fraction"]["b"] and got["l0.a"] == metrics["l0"]["a"]
    entropy = pd.read_parquet(compared_runs["usae"] / "eval" / "concepts.parquet")["firing_entropy"]
    assert got["universal"] == int((entropy >= 0.9).sum()) > 0
    log = pd.read_parquet(compared_runs["usae"] / "train_log.parquet")
    assert got["final_loss.b"] == log["loss_b"].iloc[-1] and got["steps"] == 24
    assert "universal_factor" not in got and "train_wall_seconds" not in got  # no factors, no benchmark
    solo = run_metrics(runs["solo_a"])
    assert solo["r2_cross_min"] is None and solo["universal"] is None and "r2_self.b" not in solo


def test_tables_have_runs_as_columns_and_blanks_for_models_a_run_lacks(compared_runs: dict[str, Path]) -> None:
    tables = _tables(compared_runs)
    r2 = json.loads((compared_runs["slow"] / "eval" / "metrics.json").read_text())["r2_per_dim"]
    assert tables["r2-self"]["columns"] == ["usae", "slow", "solo_a"]
    assert _row(tables["r2-self"], "r2_self.b")[1:] == [f"{r2[1][1]:.3f}", ""]  # solo_a has no model b: blank
    assert _row(tables["r2-cross"], "r2_cross_min")[1:] == [f"{min(r2[0][1], r2[1][0]):.3f}", "-"]  # undefined: -
    assert _row(tables["dead"], "dead.a") == ["0.0%", "0.0%", "0.0%"]
    assert _row(tables["l0"], "l0.b") == ["3.0", "3.0", ""]
    assert _row(tables["training"], "steps") == ["24", "24", "24"]
    assert _row(tables["universality"], "universal")[2] == "-"
    assert [r["key"] for r in tables["universality"]["rows"]] == [
        "universal", "universal_cofiring", "universal_beyond_chance", "universal_energetic", "universal_energy_share",
        "concepts_firing_in_all_models"]
    assert [r["label"] for r in tables["final-loss"]["rows"]] == ["a", "b"]


def test_factor_count_training_time_and_job_time_known_answers(compared_runs: dict[str, Path],
                                                               tmp_path: Path) -> None:
    run = _copy_run(compared_runs, tmp_path)
    concepts = pd.read_parquet(run / "eval" / "concepts.parquet")
    entropy = np.full(len(concepts), 0.5)
    entropy[:4] = [0.95, 0.91, 0.99, np.nan]
    auroc = np.full(len(concepts), 0.95)  # only the universal ones count
    auroc[:4] = [0.92, 0.89, 0.90, 0.99]
    concepts.assign(firing_entropy=entropy, factor_auroc=auroc).to_parquet(run / "eval" / "concepts.parquet")
    pd.DataFrame({"step": [3, 7], "tokens_per_s": [100.0, 200.0], "loss_a": [1.0, 0.5], "loss_b": [1.0, 0.4]}
                 ).to_parquet(run / "train_log.parquet")
    bench = tmp_path / "results" / "benchmarks" / "train_usae" / "usae.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n")
    got = run_metrics(load_runs({"usae": run})["usae"])
    assert (got["universal"], got["universal_factor"]) == (3, 2)
    assert got["train_seconds"] == pytest.approx(4 * 100 / 100 + 4 * 100 / 200)  # batch_tokens 100
    assert got["tokens_per_s"] == 150.0 and got["train_wall_seconds"] == 12.5
    assert (got["final_loss.a"], got["final_loss.b"]) == (0.5, 0.4)
    tables = _tables({"usae": run})
    assert _row(tables["universality"], "universal_factor") == ["2"]
    assert _row(tables["training"], "train_wall_seconds") == ["12.5"]


BASELINES = {"models": ["a", "b"], "table": [
    {"method": "usae", "r2_self": {"a": 0.5, "b": 0.4}, "r2_cross_min": 0.1, "r2_cross_mean": 0.2, "universal": 5,
     "concepts_firing": 30, "concepts_firing_in_all_models": 20, "dead_above_tau_fraction": {"a": 0.0, "b": 0.0}},
    {"method": "pca", "r2_self": {"a": 0.61, "b": 0.52}, "r2_cross_min": None, "r2_cross_mean": None,
     "universal": None, "concepts_firing": None, "concepts_firing_in_all_models": None,
     "dead_above_tau_fraction": None},
    {"method": "random_dictionary", "r2_self": {"a": 0.05, "b": 0.02}, "r2_cross_min": -0.3, "r2_cross_mean": -0.2,
     "universal": 7, "concepts_firing": 32, "concepts_firing_in_all_models": 31,
     "dead_above_tau_fraction": {"a": 0.125, "b": 0.25}}]}


def test_universal_concepts_weighed_by_energy_known_answer(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(compared_runs, tmp_path)
    concepts = pd.read_parquet(run / "eval" / "concepts.parquet")
    n = len(concepts)
    entropy = np.full(n, 0.2)
    entropy[:3] = [0.95, 0.91, 0.99]
    energy = np.full(n, 1.0)
    energy[:3] = [n, 0.5, 2.0]  # mean energy: (n + 0.5 + 2 + n - 3) / n, just below 2
    concepts.assign(firing_entropy=entropy, energy_total=energy).to_parquet(run / "eval" / "concepts.parquet")
    got = run_metrics(load_runs({"usae": run})["usae"])
    assert (got["universal"], got["universal_energetic"]) == (3, 2)  # the weak one (0.5) is left out
    assert got["universal_energy_share"] == pytest.approx((n + 2.5) / (2 * n - 0.5))
    concepts.assign(firing_entropy=entropy, energy_total=0.0).to_parquet(run / "eval" / "concepts.parquet")
    silent = run_metrics(load_runs({"usae": run})["usae"])
    assert silent["universal_energy_share"] is None and silent["universal_energetic"] is None


def test_baselines_of_an_evaluation_become_extra_columns(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(compared_runs, tmp_path)
    assert read_baselines(run / "eval") == {}
    (run / "eval" / "baselines.json").write_text(json.dumps(BASELINES))
    assert read_baselines(run / "eval") == {
        "pca": {"r2_self.a": 0.61, "r2_self.b": 0.52, "r2_cross_min": None, "r2_cross_mean": None, "universal": None,
                "concepts_firing_in_all_models": None},
        "random_dictionary": {"r2_self.a": 0.05, "r2_self.b": 0.02, "dead_above_tau.a": 0.125,
                              "dead_above_tau.b": 0.25, "r2_cross_min": -0.3, "r2_cross_mean": -0.2, "universal": 7,
                              "concepts_firing_in_all_models": 31}}
    tables = _tables({"usae": run, "solo_a": compared_runs["solo_a"]})
    assert tables["r2-self"]["columns"] == ["usae", "solo_a", "usae: pca", "usae: random_dictionary"]
    assert _row(tables["r2-self"], "r2_self.a")[2:] == ["0.610", "0.050"]
    assert _row(tables["r2-cross"], "r2_cross_min")[2:] == ["-", "-0.300"]
    assert _row(tables["dead-tau"], "dead_above_tau.b")[1:] == ["", "25.0%"]
    assert tables["dead-tau"]["columns"] == ["usae", "solo_a", "usae: random_dictionary"]  # pca has no such figure
    assert tables["training"]["columns"] == ["usae", "solo_a"]


def test_the_page_holds_every_table_figure_and_verdict(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    index = build_comparison(compared_runs, tmp_path / "compare")
    page = index.read_text()
    assert index == tmp_path / "compare" / "index.html"
    assert sorted(p.name for p in (tmp_path / "compare" / "figures").iterdir()) == [
        "dead.png", "entropy.png", "loss.png", "r2.png"]
    assert (tmp_path / "compare" / "static" / "style.css").is_file()
    settings = page.split('id="settings-table">', 1)[1].split("</table>", 1)[0]
    assert "<code>train.lr</code></td><td>0.003</td><td>0.001</td><td>0.003</td>" in settings
    assert "sae.k" not in settings
    stability = page.split('id="stability-table">', 1)[1].split("</table>", 1)[0]
    assert stability.count('class="verdict ok">stable</td>') == 3
    for key in ("r2-self", "r2-cross", "dead", "dead-tau", "l0", "universality", "pearson", "training", "final-loss"):
        assert f'id="table-{key}"' in page
    assert page.count("<table") == page.count('<div class="table-wrap"><table')


def test_runs_not_trained_or_evaluated_are_all_named(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    unevaluated = _copy_run(compared_runs, tmp_path)
    shutil.rmtree(unevaluated / "eval")
    with pytest.raises(FileNotFoundError) as err:
        build_comparison({"none": tmp_path / "none", "usae": unevaluated}, tmp_path / "compare")
    for missing in ("none/model/config.json", "none/eval/metrics.json", "usae/eval/metrics.json"):
        assert missing in str(err.value)
    assert not (tmp_path / "compare").exists()
    with pytest.raises(ValueError, match="no run to compare"):
        build_comparison({}, tmp_path / "compare")


def test_r2_panels_share_one_colour_scale_and_a_single_model_says_why(compared_runs: dict[str, Path]) -> None:
    runs = load_runs(compared_runs)
    panels = {name: PanelRun(run.models, np.asarray(run.metrics["r2_per_dim"]), None, None)
              for name, run in runs.items()}
    fig = MplFigure()
    draw_r2_panels(fig, panels)
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    values = np.concatenate([p.r2.ravel() for p in panels.values()])
    assert len(limits) == 1 and all(ax.images for ax in fig.axes[:3])
    assert limits == {colour_range(values)}  # every run's entries together; negative R2 drawn grey under it
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    fig = MplFigure()
    draw_entropy_panels(fig, {n: PanelRun(p.models, None, np.array([0.2, 0.95]) if len(p.models) > 1 else None,
                                          None) for n, p in panels.items()})
    assert [t.get_text() for t in fig.axes[2].texts] == ["one model: firing entropy undefined"]
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()


def test_usae_compare_writes_the_config_s_runs(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    from usae.cli import build_parser, cmd_compare, read_config

    results = compared_runs["usae"].parent.parent
    config = tmp_path / "config.yaml"
    config.write_text(f"results: {results}\nmodels: {{a: {{name: x}}, b: {{name: y}}}}\n"
                      "runs: {usae: {}, slow: {}, solo_a: {models: [a]}}\n")
    cfg = read_config(config)
    cmd_compare(cfg, build_parser().parse_args(["compare", "-c", str(config), "--run", "solo_a", "--run", "usae"]))
    page = (results / "compare" / "index.html").read_text()
    header = page.split('id="runs-table">', 1)[1].split("</table>", 1)[0]
    assert header.index("<td>solo_a</td>") < header.index("<td>usae</td>") and "<td>slow</td>" not in header
    out = compare_config_runs(cfg, None, tmp_path / "all")
    assert out == tmp_path / "all" / "index.html" and "<td>slow</td>" in out.read_text()
    with pytest.raises(ValueError, match=r"--run \['nope'\] not in the config's runs"):
        compare_config_runs(cfg, ["usae", "nope"])


def test_random_dictionary_floors_stand_beside_the_universal_counts(compared_runs: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """The random dictionary's counts are read in brackets in the run's own cell (comparison page and run
    report), not as a column of their own; a count the baseline leaves null gets no bracket."""
    from usae.report.build import universality_table

    run = _copy_run(compared_runs, tmp_path)
    concepts = pd.read_parquet(run / "eval" / "concepts.parquet")
    entropy = np.full(len(concepts), 0.5)
    entropy[:3] = [0.95, 0.91, 0.99]
    energy = np.full(len(concepts), 0.0)
    energy[:4] = [5.0, 1.0, 0.0, 2.0]  # the mean is 8 / 32: concepts 0 and 1 carry energy, 2 does not
    auroc = np.full(len(concepts), 0.5)
    auroc[:3] = [0.95, 0.5, 0.97]
    cofires = np.full(len(concepts), 50)
    cofires[:3] = [3, 2, 0]  # at least 3 (metrics.json's min_cofires): concept 0 alone of the universal ones
    fires = concepts["fires_a"].to_numpy().copy()
    fires[0] = 3  # and each model fires it on those 3 tokens only: far beyond chance
    # (chance recomputed from the fires set here: the evaluation's own per-position figure is of other fires)
    concepts.drop(columns="cofires_chance").assign(firing_entropy=entropy, energy_total=energy, factor_auroc=auroc,
                                                   cofires=cofires, fires_a=fires, fires_b=fires).to_parquet(
        run / "eval" / "concepts.parquet")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    (run / "eval" / "metrics.json").write_text(json.dumps({**metrics, "min_cofires": 3}))
    counts = {"universal": 7, "universal_cofiring": 4, "universal_beyond_chance": 2, "universal_energetic": 1,
              "universal_energy_share": 0.25, "universal_factor": 0}
    table = [{**row, **(counts if row["method"] == "random_dictionary" else dict.fromkeys(counts))}
             for row in BASELINES["table"]]
    (run / "eval" / "baselines.json").write_text(json.dumps({**BASELINES, "table": table}))
    tables = _tables({"usae": run, "solo_a": compared_runs["solo_a"]})
    universality = tables["universality"]
    assert universality["columns"] == ["usae", "solo_a"]  # the baselines are read in the run's cells
    assert _row(universality, "universal") == ["3 (random dictionary 7)", "-"]
    assert _row(universality, "universal_cofiring") == ["1 (random dictionary 4)", ""]
    assert _row(universality, "universal_beyond_chance") == ["1 (random dictionary 2)", ""]
    assert _row(universality, "universal_energetic") == ["2 (random dictionary 1)", ""]
    assert _row(universality, "universal_factor") == ["2 (random dictionary 0)", ""]
    assert _row(universality, "universal_energy_share")[0] == "0.750 (random dictionary 0.250)"
    assert _row(universality, "concepts_firing_in_all_models")[0].endswith(" (random dictionary 31)")
    assert tables["r2-self"]["columns"] == ["usae", "solo_a", "usae: pca", "usae: random_dictionary"]
    page = build_comparison({"usae": run}, tmp_path / "compare").read_text()
    universal = page.split('id="table-universality"', 1)[1].split("</table>")[0]
    assert '<td>3 <span class="floor">(random dictionary 7)</span></td>' in universal
    report = universality_table(run)
    assert [r["cells"] for r in report["rows"]][:4] == [["3 (random dictionary 7)"], ["1 (random dictionary 4)"],
                                                       ["1 (random dictionary 2)"], ["2 (random dictionary 1)"]]
    assert universality_table(compared_runs["solo_a"]) is None  # one model: no firing entropy
