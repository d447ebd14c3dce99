# Stage 3: common patch grid + standardisation, one aligned store per (model, layer).


rule prepare_activations:
    input:
        manifest=stage_pattern(paths.MANIFEST),
        parts=extraction_parts,
    output:
        store=directory(stage_pattern(paths.ALIGNED)),
        stats=stage_pattern(paths.ALIGNED_STATS),
    params:
        cfg=to_dict(PIPE.prepare),
        version=usae.STAGE_VERSIONS["prepare"],
    log:
        log_path("prepare_activations", "{model}_{layer}"),
    benchmark:
        benchmark_path("prepare_activations", "{model}_{layer}")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    script:
        "../scripts/prepare_activations.py"
