# Stage 5: metrics of each trained run on the validation tokens.


rule evaluate_usae:
    input:
        model=paths.run_model(PIPE),
        stores=run_stores,
        manifest=paths.manifest(PIPE),
    output:
        directory(paths.run_eval(PIPE)),
    params:
        cfg=result_settings(PIPE.evaluate),  # a key added since, at its default, reruns no evaluation
        models=lambda wc: list(PIPE.runs[wc.run].models),
        synthetic=paths.synthetic_images(PIPE),
        version=usae.STAGE_VERSIONS["evaluate"],
    log:
        paths.log(PIPE, "evaluate_usae", "{run}"),
    benchmark:
        paths.benchmark(PIPE, "evaluate_usae", "{run}")
    threads: 2
    resources:
        gpu=0 if PIPE.evaluate.device == "cpu" else 1,
        mem_mb=8000,
        runtime=120,
    script:
        "../scripts/evaluate_usae.py"
