# Stage 1: image manifest (Parquet), plus the generated images for source: synthetic.


rule build_manifest:
    output:
        paths.manifest(PIPE),
    params:
        cfg=to_dict(PIPE.dataset),
        version=usae.STAGE_VERSIONS["manifest"],
    log:
        paths.log(PIPE, "build_manifest", PIPE.dataset.name),
    benchmark:
        paths.benchmark(PIPE, "build_manifest", PIPE.dataset.name)
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/build_manifest.py"
