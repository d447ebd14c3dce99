"""Training progress lines: a row's figures grouped by kind, and the end-of-run summary."""

from usae.training.log_lines import format_row, format_summary, per_model, shown_values, summarize

ROW = {"step": 7, "lr": 0.003, "l0": 4.0, "tokens_per_s": 1234.4, "loss_m0": 0.012345, "loss_a_m0": 0.5,
       "dead_m0": 0.0, "dead_a_m0": 0.021, "source_m0": 4, "source_a_m0": 4}


def test_per_model_figures_grouped_by_kind_longest_name_first():
    assert per_model(ROW, ["m0", "a_m0"]) == {"loss": {"m0": 0.012345, "a_m0": 0.5},
                                               "dead": {"m0": 0.0, "a_m0": 0.021}}


def test_a_row_line_has_every_figure_but_the_source_counts():
    assert format_row(ROW, ["m0", "a_m0"], 24) == (
        "step 8/24 | loss m0 0.01235 a_m0 0.5 | dead m0 0.0% a_m0 2.1% | L0 4.0 | 1234 tokens/s | lr 0.003")


def test_shown_values_are_the_lines_figures_flat_and_unformatted():
    assert shown_values(ROW, ["m0", "a_m0"]) == {
        "loss/m0": 0.012345, "loss/a_m0": 0.5, "dead/m0": 0.0, "dead/a_m0": 0.021,
        "l0": 4.0, "tokens_per_s": 1234.4, "lr": 0.003}


def test_fvu_r2_and_dead_both_ways_are_shown_when_the_row_has_them():
    row = {**ROW, "fvu_m0": 0.25, "r2_m0": 0.75, "dead_source_m0": 0.5, "dead_target_m0": 0.125}
    line = format_row(row, ["m0"], 10)
    assert "fvu m0 0.25" in line and "r2 m0 0.75" in line
    assert "dead_source m0 50.0%" in line and "dead_target m0 12.5%" in line


def test_summary_final_losses_and_speed_without_the_start_up_window():
    rows = [{**ROW, "tokens_per_s": 10.0}, {**ROW, "tokens_per_s": 100.0}, {**ROW, "tokens_per_s": 200.0,
                                                                             "loss_m0": 0.25}]
    assert summarize(rows, ["m0"]) == ({"m0": 0.25}, 150.0)
    assert summarize(rows[:1], ["m0"]) == ({"m0": 0.012345}, 10.0)
    assert format_summary(rows, ["m0"], steps=24, total=24, ran=12, seconds=3.14) == (
        "train: 24 of 24 steps (12 run now) in 3.1 s, 150 tokens/s; final loss m0 0.25")
    assert format_summary([], ["m0"], steps=0, total=5, ran=0, seconds=0.0).endswith("final loss none (no log row yet)")

