"""Training schemes (``train.scheme``): which models are sources at a step, and what they update.

Every entry of :data:`usae.registry.SCHEMES` is a :class:`Scheme` subclass, built as
``scheme = cls(names, seed)`` with the models in order and the run's seed. The training step
asks it four things: :meth:`Scheme.sources` (the models that encode at a step: a pure
function of (seed, step), so a resumed run draws the same ones), :attr:`Scheme.update_all`
(whether every decoder learns from a source's codes, or only the source's own, the others
being detached), :meth:`Scheme.updated` (the models whose decoder gradients are projected
and whose decoder rows are renormalised after the step) and :attr:`Scheme.encode` (how the
step's sources make their codes: None, each its own encoder; :class:`SparcScheme`: together, one
TopK over the sum of every source's pre-activations, the same latents for all).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor

from usae.sae.model import USAE, Codes

Encode = Callable[..., dict[str, Codes]]
"""A scheme's ``encode(model, batch, sources, *, keep_pre, dense_grad)``: every source's codes."""

SOURCE_SEED_OFFSET = 1_000_003  # keeps the source draw independent of the loader's streams


def source_of_step(seed: int, step: int, n_models: int) -> int:
    """The paper scheme's source model at ``step``: uniform, a pure function of (seed, step)."""
    return int(np.random.default_rng([seed + SOURCE_SEED_OFFSET, step]).integers(n_models))


class Scheme:
    """Base of the training schemes: subclasses set :attr:`update_all` and define :meth:`sources`."""

    update_all: bool = False
    """True: every decoder learns from each source's codes; False: only the source's decoder does."""
    encode: Encode | None = None
    """``encode(model, batch, sources, keep_pre=, dense_grad=)``: the codes of all of a step's
    sources, made together (a method of the subclasses that set it); None: each source encodes
    alone, with its own encoder and ``sae.activation`` (``USAE.encode_sparse``)."""

    def __init__(self, names: list[str], seed: int) -> None:
        self.names = list(names)
        self.seed = seed

    def sources(self, step: int) -> list[str]:
        """The models that encode at ``step`` (in the models' order)."""
        raise NotImplementedError

    def updated(self, sources: list[str]) -> list[str]:
        """The models whose decoders a step with ``sources`` updates."""
        return list(self.names) if self.update_all else list(sources)


class PaperScheme(Scheme):
    """Thasarathan et al. 2025, Fig. 3: one source a step, drawn uniformly; only its encoder and
    decoder learn (decoding into the other models trains the source's encoder, not their decoders)."""

    update_all = False

    def sources(self, step: int) -> list[str]:
        return [self.names[source_of_step(self.seed, step, len(self.names))]]


class AllSourcesScheme(Scheme):
    """Every model is a source every step, and every parameter learns (beyond the paper)."""

    update_all = True

    def sources(self, step: int) -> list[str]:
        return list(self.names)


class SparcScheme(AllSourcesScheme):
    """SPARC (arXiv 2507.06265): every model is a source every step and every parameter learns, as
    in :class:`AllSourcesScheme`, but the K latents of a token are chosen once, by TopK over the
    sum of every model's pre-activations (:meth:`usae.sae.model.USAE.encode_shared`); each model
    decodes every model from its own values at those latents (SPARC's self and cross
    reconstructions, which SPARC weighs alike: ``sae.cross_coef`` 1). At evaluation each model
    encodes alone (SPARC's single-stream inference: its own TopK)."""

    def encode(self, model: USAE, batch: dict[str, Tensor], sources: list[str], *, keep_pre: bool,
               dense_grad: bool) -> dict[str, Codes]:
        """Shared-index codes of ``sources`` (``keep_pre``, ``dense_grad``: as ``USAE.encode_sparse``)."""
        return model.encode_shared({s: batch[s] for s in sources}, keep_pre=keep_pre, dense_grad=dense_grad)
