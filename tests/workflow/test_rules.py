"""Workflow conventions: thin scripts named after their rules, log and benchmark on every rule."""

import re
from pathlib import Path

from pipeline_helpers import snakemake, write_config

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "usae/workflow/rules").glob("*.smk"))


def rules():
    for path in RULE_FILES:
        text = path.read_text()
        for match in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", text, re.M):
            yield path, match.group(1), match.group(2)


def test_every_rule_has_log_benchmark_params_and_its_script():
    found = list(rules())
    assert {name for _, name, _ in found} >= {"build_manifest", "extract_activations", "prepare_activations"}
    for path, name, body in found:
        for directive in ("log:", "benchmark:", "params:", "threads:", "resources:", "script:"):
            assert directive in body, f"{path.name}: rule {name} lacks {directive}"
        assert f'"../scripts/{name}.py"' in body, f"rule {name} must run usae/workflow/scripts/{name}.py"
        assert "version=usae.STAGE_VERSIONS" in body, f"rule {name} must pass its stage version"


def test_scripts_are_thin_and_read_only_params():
    for script in (REPO / "usae/workflow/scripts").glob("*.py"):
        text = script.read_text()
        assert len(text.splitlines()) <= 40, script.name
        # The exceptions change no result, so changing them must rerun nothing: the tracker, and the keys
        # declared changes_results=False, which with_run_settings takes from the whole config.
        reads = text.replace("workflow_tracking(snakemake.config)", "")
        reads = re.sub(r"with_run_settings\((?:[^()]|\([^()]*\))*?load_config\(snakemake\.config\)", "", reads)
        assert "snakemake.config" not in reads, f"{script.name} reads config behind Snakemake's back"
        assert "configure_logging(snakemake.log[0])" in text


def test_snakefiles_are_thin():
    for snakefile in (REPO / "Snakefile", REPO / "usae/workflow/Snakefile"):
        text = snakefile.read_text()
        assert len(text.splitlines()) <= 60 and "def " not in text, snakefile


def test_library_has_no_snakemake_or_prints():
    workflow = REPO / "usae" / "workflow"
    for module in (REPO / "usae").rglob("*.py"):
        if workflow / "scripts" in module.parents:
            continue  # run by Snakemake, checked above
        text = module.read_text()
        assert "import snakemake" not in text and "from snakemake" not in text, module
        if module.name not in ("cli.py", "cli_tools.py"):  # the command line prints its results
            assert not re.search(r"^\s*print\(", text, re.M), f"print in {module}"
        assert len(text.splitlines()) <= 400, f"{module} is over 400 lines"


def test_lint_asks_only_for_a_software_environment_per_rule(tmp_path):
    """README "Running the pipeline": every rule runs the installed usae package, so no rule names a
    conda environment or container; that is the one lint left, and it is on every rule."""
    write_config(tmp_path)
    out = snakemake(tmp_path, "--lint", check=False)
    lints = re.findall(r"^Lints for (\w+ \w+)|^    \* (.+)$", out.stdout + out.stderr, re.M)
    rules_linted = {rule for rule, _ in lints if rule}
    assert rules_linted == {f"rule {name}" for _, name, _ in rules()}
    assert {message for _, message in lints if message} == {"Specify a conda environment or container for each rule.:"}
