"""Planted ground truth: data whose concepts are known, and how well a trained USAE finds them.

- :mod:`usae.planted.activations`: activations of several models built from planted shared and
  private atoms (sparse codes known), saved as ``<model>.npy`` plus ``truth.npz``.
- :mod:`usae.planted.images`: the generated image set (``dataset.source: synthetic``) whose
  objects carry planted factors (shape, colour, texture, position), and patch factor coverage.
- :mod:`usae.planted.series`: series of generator settings for the studies: shared share by
  "layer" (depth) and nested model counts (more models).
- :mod:`usae.planted.scoring`: recovery of planted atoms by a trained USAE (atom matching,
  firing-entropy AUROC, cross-model R2), from :mod:`usae.metrics`.

Submodules are imported on use, so importing this package is cheap.
"""
