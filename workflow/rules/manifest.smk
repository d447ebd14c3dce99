# Stage 1: image manifest (Parquet), plus the generated images for source: synthetic.


rule build_manifest:
    output:
        stage_pattern(paths.MANIFEST),
    params:
        cfg=to_dict(PIPE.dataset),
        version=usae.STAGE_VERSIONS["manifest"],
    log:
        log_path("build_manifest", DATASET),
    benchmark:
        benchmark_path("build_manifest", DATASET)
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/build_manifest.py"
