"""Coordinated activation maximisation (MACO, Fel et al. 2023): one optimised image per model
for each shared concept, so a user sees how every model encodes the same concept.

:mod:`spectrum` (the run's own amplitude spectrum), :mod:`image` (phase -> pixels, random
crops and noise), :mod:`objective` (pixels -> a concept's code through a model),
:mod:`optimize` (the loop), :mod:`stage` (choose concepts, run, compare, write).
"""
