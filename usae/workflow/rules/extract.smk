# Stage 2: one job per (backbone, part), each writing its own float16 Zarr store with a group a layer:
# models that differ only in `layer` share the job, and the backbone's forward pass where its family allows.


rule extract_activations:
    input:
        manifest=paths.manifest(PIPE),
    output:
        store=extraction_output(paths.extract_part(PIPE)),  # not directory(): see paths.store_marker
    params:
        specs=backbone_specs,
        cfg=extraction_settings(),
        version=usae.STAGE_VERSIONS["extract"],
    log:
        paths.log(PIPE, "extract_activations", "{backbone}_part{part}"),
    benchmark:
        paths.benchmark(PIPE, "extract_activations", "{backbone}_part{part}")
    threads: 2
    resources:
        gpu=1 if PIPE.extract.device != "cpu" else 0,
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/extract_activations.py"
