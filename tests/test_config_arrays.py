"""Settings of a run on activation arrays: from --set alone, or from one run of a config."""

from pathlib import Path

import pytest

from usae.config import EvaluateConfig, PrepareConfig, SAEConfig
from usae.config.arrays import settings_from_config, settings_from_overrides
from usae.config.files import load_config_file

TINY = Path(__file__).parent / "workflow" / "tiny_config.yaml"


def test_overrides_without_a_file_set_the_keys_that_apply_to_arrays():
    settings = settings_from_overrides(["sae.k=16", "train.lr=1e-3", "dataset.val_fraction=0.1", "dataset.seed=3",
                                        "prepare.standardize=per_dim", "evaluate.tau=0.5"])
    assert settings.sae.k == 16 and settings.train.lr == 0.001
    assert (settings.dataset.val_fraction, settings.dataset.seed) == (0.1, 3)
    assert settings.prepare.standardize == "per_dim" and settings.evaluate.tau == 0.5
    defaults = settings_from_overrides([])
    assert defaults.sae == SAEConfig() and defaults.prepare == PrepareConfig() and defaults.evaluate == EvaluateConfig()


@pytest.mark.parametrize(("override", "message"), [
    ("models.x.name=y", r"--set \['models'\]: without a config file \(-c\), only these apply here: sae.\*, train.\*, "
                        r"evaluate.\*, dataset.val_fraction, dataset.seed, prepare.standardize"),
    ("dataset.name=mine", r"--set dataset.name: does not apply to activation arrays; of dataset, only "
                          r"dataset.val_fraction, dataset.seed do"),
    ("prepare.grid=7", r"--set prepare.grid: does not apply"),
    ("prepare.standardise=none", r"prepare: unknown key\(s\) \['standardise'\] \(did you mean 'standardize'\?\)"),
    ("dataset.val_fraction=2", r"dataset.val_fraction = 2 is out of range"),
    ("sae.k=0", r"sae.k = 0 is out of range"),
])
def test_overrides_that_do_not_apply_or_are_wrong_are_refused_by_name(override, message):
    with pytest.raises(ValueError, match=message):
        settings_from_overrides([override])


def test_a_command_can_narrow_the_sections_it_takes():
    assert settings_from_overrides(["evaluate.top_n=3"], ("evaluate",)).evaluate.top_n == 3
    with pytest.raises(ValueError, match=r"--set \['sae'\]: .*only these apply here: evaluate.\*$"):
        settings_from_overrides(["sae.k=3"], ("evaluate",))


def test_a_config_with_several_runs_needs_run():
    cfg = load_config_file(TINY, ["runs={a: {sae: {k: 2}}, b: {sae: {k: 3}}}", "dataset.val_fraction=0.3",
                                  "prepare.standardize=none", "evaluate.tau=0.2"])
    with pytest.raises(ValueError, match=r"the config has 2 runs \['a', 'b'\]: choose .* with --run"):
        settings_from_config(cfg, None)
    with pytest.raises(ValueError, match=r"--run 'c' not in the config's runs \['a', 'b'\]"):
        settings_from_config(cfg, "c")
    chosen = settings_from_config(cfg, "b")
    assert chosen.sae.k == 3 and chosen.dataset.val_fraction == 0.3
    assert chosen.prepare.standardize == "none" and chosen.evaluate.tau == 0.2


def test_a_config_with_one_run_uses_it_and_says_so(caplog):
    cfg = load_config_file(TINY, ["runs={only: {sae: {k: 5}}}"])
    with caplog.at_level("INFO", logger="usae.config.arrays"):
        assert settings_from_config(cfg, None).sae.k == 5
    assert "settings of the config's only run, 'only'" in caplog.text
