# Stage 6: a static report site per run (also listed by `snakemake --report`).


rule render_report:
    input:
        runs=all_runs_evaluated,
        log=stage_pattern(paths.RUN_LOG),
        manifest=stage_pattern(paths.MANIFEST),
        stores=run_stores,  # images flagged invalid at extraction are listed in the report
    output:
        report(
            directory(stage_pattern(paths.RUN_REPORT)),
            htmlindex="index.html",
            caption="../report/run.rst",
            category="Runs",
            labels={"run": "{run}"},
        ),
    params:
        runs=sorted(PIPE.runs),
        run_dir=lambda wc: stage_pattern(paths.RUN_DIR, run=wc.run),
        version=usae.STAGE_VERSIONS["report"],
    log:
        log_path("render_report", "{run}"),
    benchmark:
        benchmark_path("render_report", "{run}")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/render_report.py"
