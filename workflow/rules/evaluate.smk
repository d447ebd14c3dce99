# Stage 5: metrics of each trained run on the validation tokens.


rule evaluate_usae:
    input:
        model=stage_pattern(paths.RUN_MODEL),
        stores=run_stores,
        manifest=stage_pattern(paths.MANIFEST),
    output:
        directory(stage_pattern(paths.RUN_EVAL)),
    params:
        cfg=to_dict(PIPE.evaluate),
        models=lambda wc: list(PIPE.runs[wc.run].models),
        synthetic=stage_pattern(paths.SYNTHETIC_DIR) if PIPE.dataset.source == "synthetic" else None,
        version=usae.STAGE_VERSIONS["evaluate"],
    log:
        log_path("evaluate_usae", "{run}"),
    benchmark:
        benchmark_path("evaluate_usae", "{run}")
    threads: 2
    resources:
        gpu=0 if PIPE.evaluate.device == "cpu" else 1,
        mem_mb=8000,
        runtime=120,
    script:
        "../scripts/evaluate_usae.py"
