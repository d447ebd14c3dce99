# Stage 5b: coordinated activation maximisation, one optimised image per model for each chosen
# concept of every run of two or more models (usae.maco).


rule maco_spectrum:
    input:
        manifest=paths.manifest(PIPE),
    output:
        paths.maco_spectrum(PIPE),
    params:
        size=PIPE.maco.image_size,
        n_images=PIPE.maco.spectrum_images,
        seed=PIPE.maco.seed,
        version=usae.STAGE_VERSIONS["maco"],
    log:
        paths.log(PIPE, "maco_spectrum", PIPE.dataset.name),
    benchmark:
        paths.benchmark(PIPE, "maco_spectrum", PIPE.dataset.name)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/maco_spectrum.py"


rule maco:
    input:
        model=paths.run_model(PIPE),
        eval=paths.run_eval(PIPE),
        manifest=paths.manifest(PIPE),
        spectrum=paths.maco_spectrum(PIPE),
    output:
        directory(paths.run_maco(PIPE)),
    params:
        cfg=to_dict(PIPE.maco),
        specs=lambda wc: {m: to_dict(PIPE.models[m]) for m in PIPE.runs[wc.run].models},
        version=usae.STAGE_VERSIONS["maco"],
    log:
        paths.log(PIPE, "maco", "{run}"),
    benchmark:
        paths.benchmark(PIPE, "maco", "{run}")
    threads: 2
    resources:
        gpu=0 if PIPE.maco.device == "cpu" else 1,
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/maco.py"
