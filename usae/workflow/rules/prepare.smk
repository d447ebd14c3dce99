# Stage 3: common patch grid + standardisation, one aligned store per (model, layer).


rule prepare_activations:
    input:
        manifest=paths.manifest(PIPE),
        parts=extraction_parts,
    output:
        store=paths.store_marker(paths.aligned(PIPE)),  # not directory(): see paths.store_marker
        stats=paths.aligned_stats(PIPE),
    params:
        cfg=to_dict(PIPE.prepare),
        layer=check_layer,
        keep=PIPE.extract.keep,  # false: the parts are deleted once their last layer's store is published
        sharing=lambda wc: paths.sharing_stats(PIPE, wc.model),  # the other layers the parts hold
        version=usae.STAGE_VERSIONS["prepare"],
    log:
        paths.log(PIPE, "prepare_activations", "{model}_{layer}"),
    benchmark:
        paths.benchmark(PIPE, "prepare_activations", "{model}_{layer}")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    script:
        "../scripts/prepare_activations.py"
