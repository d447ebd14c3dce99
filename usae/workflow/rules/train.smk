# Stage 4: train one Universal SAE per configured run on the aligned stores of its models.


rule train_usae:
    input:
        stores=run_stores,
    output:
        model=directory(paths.run_model(PIPE)),
        log=paths.run_log(PIPE),
    params:
        run=run_params,
        version=usae.STAGE_VERSIONS["train"],
    log:
        paths.log(PIPE, "train_usae", "{run}"),
    benchmark:
        paths.benchmark(PIPE, "train_usae", "{run}")
    threads: 2
    resources:
        gpu=lambda wc: 0 if PIPE.runs[wc.run].train.device == "cpu" else 1,
        mem_mb=32000,
        runtime=24 * 60,
    script:
        "../scripts/train_usae.py"
