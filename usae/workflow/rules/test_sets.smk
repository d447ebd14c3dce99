# Other data without retraining (config test_sets): each test set gets its own manifest,
# extraction and aligned stores under results/<test set>/, standardised with the TRAINING data's
# statistics, and every run is evaluated on it (results/runs/<run>/eval_<test set>/). The rules
# are the training data's, reused (`use rule`); only paths, the statistics and the split differ.
# Included only when test_sets is configured.


wildcard_constraints:
    test_set="|".join(sorted(PIPE.test_sets)),


def test_set_parts(wildcards):
    """Every extraction part that holds the model's layer on the test set, as store markers."""
    return [paths.store_marker(p) for p in paths.extract_parts(PIPE, wildcards.model, dataset=wildcards.test_set)]


def test_set_stores(wildcards):
    """Aligned stores of the run's models on the test set, in the run's model order, as store markers."""
    return [paths.store_marker(p) for p in paths.run_stores(PIPE, wildcards.run, dataset=wildcards.test_set).values()]


use rule build_manifest as build_test_set_manifest with:
    output:
        paths.manifest(PIPE, dataset=paths.TEST_SET),
    params:
        cfg=lambda wc: to_dict(PIPE.test_sets[wc.test_set]),
    log:
        paths.log(PIPE, "build_test_set_manifest", "{test_set}"),
    benchmark:
        paths.benchmark(PIPE, "build_test_set_manifest", "{test_set}")


use rule extract_activations as extract_test_set_activations with:
    input:
        manifest=paths.manifest(PIPE, dataset=paths.TEST_SET),
    output:
        store=extraction_output(paths.extract_part(PIPE, dataset=paths.TEST_SET)),
    log:
        paths.log(PIPE, "extract_test_set_activations", "{test_set}_{backbone}_part{part}"),
    benchmark:
        paths.benchmark(PIPE, "extract_test_set_activations", "{test_set}_{backbone}_part{part}")


use rule prepare_activations as prepare_test_set_activations with:
    input:
        manifest=paths.manifest(PIPE, dataset=paths.TEST_SET),
        parts=test_set_parts,
        reference=paths.aligned_stats(PIPE),  # the training data's statistics of the same model and layer
    output:
        store=paths.store_marker(paths.aligned(PIPE, dataset=paths.TEST_SET)),
        stats=paths.aligned_stats(PIPE, dataset=paths.TEST_SET),
    params:
        sharing=lambda wc: paths.sharing_stats(PIPE, wc.model, dataset=wc.test_set),
    log:
        paths.log(PIPE, "prepare_test_set_activations", "{test_set}_{model}_{layer}"),
    benchmark:
        paths.benchmark(PIPE, "prepare_test_set_activations", "{test_set}_{model}_{layer}")


use rule evaluate_usae as evaluate_test_set with:
    input:
        model=paths.run_model(PIPE),
        stores=test_set_stores,
        manifest=paths.manifest(PIPE, dataset=paths.TEST_SET),
    output:
        directory(paths.run_eval_on(PIPE)),
    params:
        synthetic=lambda wc: paths.synthetic_images(PIPE, dataset=wc.test_set),
        test_set=True,
    log:
        paths.log(PIPE, "evaluate_test_set", "{run}_{test_set}"),
    benchmark:
        paths.benchmark(PIPE, "evaluate_test_set", "{run}_{test_set}")
