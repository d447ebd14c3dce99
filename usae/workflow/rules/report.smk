# Stage 6: a static report site per run (also listed by `snakemake --report`).


rule render_report:
    input:
        runs=all_runs_evaluated,
        log=paths.run_log(PIPE),
        manifest=paths.manifest(PIPE),
        stores=run_stores,  # images flagged invalid at extraction are listed in the report
        maco=lambda wc: [paths.run_maco(PIPE, wc.run)] if wc.run in paths.maco_runs(PIPE) else [],
        test_sets=lambda wc: list(paths.test_set_evals(PIPE, wc.run).values()),  # its "Other data" section
    output:
        report(
            directory(paths.run_report(PIPE)),
            htmlindex="index.html",
            caption="../report/run.rst",
            category="Runs",
            labels={"run": "{run}"},
        ),
    params:
        runs=sorted(PIPE.runs),
        run_dir=lambda wc: paths.run_dir(PIPE, wc.run),
        test_sets=sorted(PIPE.test_sets),
        version=usae.STAGE_VERSIONS["report"],
    log:
        paths.log(PIPE, "render_report", "{run}"),
    benchmark:
        paths.benchmark(PIPE, "render_report", "{run}")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/render_report.py"


# One page comparing every run of the config (settings that differ, metric tables, figures).


rule compare_runs:
    input:
        models=paths.for_runs(PIPE, paths.run_model),
        evals=paths.for_runs(PIPE, paths.run_eval),
        logs=paths.for_runs(PIPE, paths.run_log),
        reports=paths.for_runs(PIPE, paths.run_report),  # the page links each run's report: built first
        test_sets=[path for run in sorted(PIPE.runs) for path in paths.test_set_evals(PIPE, run).values()],
    output:
        report(paths.compare_page(PIPE), caption="../report/compare.rst", category="Comparison"),
    params:
        runs={r: paths.run_dir(PIPE, r) for r in sorted(PIPE.runs)},
        test_sets=sorted(PIPE.test_sets),
        version=usae.STAGE_VERSIONS["report"],
    log:
        paths.log(PIPE, "compare_runs", "all"),
    benchmark:
        paths.benchmark(PIPE, "compare_runs", "all")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/compare_runs.py"
