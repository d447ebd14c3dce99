# Stage 2: one job per (model, layer, part), each writing its own float16 Zarr store.


rule extract_activations:
    input:
        manifest=paths.manifest(PIPE),
    output:
        store=extraction_output(paths.extract_part(PIPE)),  # not directory(): see paths.store_marker
    params:
        spec=model_spec,
        cfg=extraction_settings(),
        version=usae.STAGE_VERSIONS["extract"],
    log:
        paths.log(PIPE, "extract_activations", "{model}_{layer}_part{part}"),
    benchmark:
        paths.benchmark(PIPE, "extract_activations", "{model}_{layer}_part{part}")
    threads: 2
    resources:
        gpu=1 if PIPE.extract.device != "cpu" else 0,
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/extract_activations.py"
