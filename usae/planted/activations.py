"""Planted multi-model activations: a known ground truth of atoms and codes, to test a Universal SAE.

Token ``t`` has one sparse code ``s`` over ``n_shared`` shared concepts (``shared_codes``) and,
per model ``i``, a sparse code ``p_i`` over its ``n_private`` private concepts. Model ``i`` sees

    x_i[t] = sum_k s[t, k] * A_i[k] + sum_j p_i[t, j] * B_i[j] + sigma_i * eps,  eps ~ N(0, I)

with ``A_i = shared_atoms[name]`` model ``i``'s own dictionary of the SAME shared concepts (same
magnitudes ``s`` in every model) and ``B_i``, ``p_i`` drawn independently per model. Atoms are
unit-normalised Gaussian vectors: with ``d_i >= 64`` and ~160 atoms they are nearly, not
exactly, orthogonal (typical |cos| ~ 1/sqrt(d), max ~0.45 at d=64); at ``d = 64`` the dictionary
is overcomplete (160 > 64), as intended: SAEs are overcomplete. Each atom is active on a token
independently with probability ``active / n_atoms`` (Bernoulli), so ``active_*`` are expected
counts per token. Magnitudes are i.i.d. per active entry: ``"exponential"``: ``1 + Exp(1)`` (>=
1, mean 2); ``"lognormal"``: ``exp(N(0, 0.5**2))``; ``"constant"``: ``1``.

Noise: ``sigma_i = noise * sqrt(mean_t ||c_i[t]||**2 / d_i)`` where ``c_i`` is model ``i``'s
noise-free activation over all generated tokens, so the RMS noise-vector norm is ``noise`` times
the RMS clean token norm (``E||sigma_i eps||**2 = noise**2 * mean_t ||c_i[t]||**2``).

``np.random.SeedSequence(seed)`` gives one stream for the shared codes and one per model index
(atoms, private codes, noise), so changing one model's width or the noise leaves other draws as is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_MAGNITUDE_LAWS = {  # law name -> (rng, n) -> n i.i.d. non-negative magnitudes
    "exponential": lambda rng, n: 1.0 + rng.exponential(1.0, n),
    "lognormal": lambda rng, n: np.exp(rng.normal(0.0, 0.5, n)),
    "constant": lambda rng, n: np.ones(n),
}
MAGNITUDES = tuple(_MAGNITUDE_LAWS)
TRUTH_FILE = "truth.npz"
_CHUNK = 8192
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, kw_only=True)
class PlantedConfig:
    """Settings of the planted generator (exact semantics in the module docstring)."""

    widths: tuple[int, ...] = (64, 96, 128)  # activation width per model; >= 2 models
    names: tuple[str, ...] | None = None  # model names; default m0, m1, ...
    n_shared: int = 128  # concepts shared by all models
    n_private: int = 32  # private concepts per model
    n_tokens: int = 100_000  # rows
    active_shared: float = 4.0  # expected active shared atoms per token
    active_private: float = 2.0  # expected active private atoms per token and model
    magnitude: str = "exponential"  # magnitude law, one of MAGNITUDES
    noise: float = 0.05  # RMS noise norm / RMS clean token norm, per model
    seed: int = 0  # seed of np.random.SeedSequence

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or min(self.widths) <= 0:
            raise ValueError(f"PlantedConfig.widths = {self.widths!r}: need >= 2 models, each width > 0")
        if self.names is not None:
            names = tuple(self.names)
            object.__setattr__(self, "names", names)
            bad = [n for n in names if not _NAME_RE.match(n) or n == Path(TRUTH_FILE).stem]
            if len(names) != len(self.widths) or len(set(names)) != len(names) or bad:
                raise ValueError(f"PlantedConfig.names = {names!r}: need {len(self.widths)} unique file-safe "
                                 f"names other than {Path(TRUTH_FILE).stem!r}")
        for key, low in (("n_shared", 0), ("n_private", 0), ("n_tokens", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"PlantedConfig.{key} = {getattr(self, key)!r} must be >= {low}")
        for key, count in (("active_shared", self.n_shared), ("active_private", self.n_private)):
            value = getattr(self, key)
            if not (value == 0 if count == 0 else 0 < value <= count):
                raise ValueError(f"PlantedConfig.{key} = {value!r} is infeasible: it must be in "
                                 f"(0, {count}] (0 only when there are no such atoms)")
        if self.magnitude not in MAGNITUDES:
            raise ValueError(f"PlantedConfig.magnitude = {self.magnitude!r}: choose one of {list(MAGNITUDES)}")
        if not self.noise >= 0:
            raise ValueError(f"PlantedConfig.noise = {self.noise!r} must be >= 0")

    @property
    def model_names(self) -> tuple[str, ...]:
        """The given names, or ``m0, m1, ...``."""
        return self.names if self.names is not None else tuple(f"m{i}" for i in range(len(self.widths)))


@dataclass(frozen=True)
class SparseCodes:
    """CSR-like sparse code matrix of shape ``(n_tokens, n_atoms)``.

    Row ``t`` holds ``values[indptr[t]:indptr[t+1]]`` at columns ``indices[indptr[t]:indptr[t+1]]``
    (columns sorted within a row).  ``values`` are float32 magnitudes.
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_atoms: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_tokens, n_atoms)``."""
        return (len(self.indptr) - 1, self.n_atoms)

    @property
    def nnz(self) -> int:
        """Number of active entries."""
        return int(self.indptr[-1])

    def counts(self) -> np.ndarray:
        """Number of active atoms per token, shape ``(n_tokens,)``."""
        return np.diff(self.indptr)

    def to_dense(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dense float32 rows ``start:stop`` (all rows by default)."""
        stop = self.shape[0] if stop is None else stop
        ptr = self.indptr[start:stop + 1]
        out = np.zeros((stop - start, self.n_atoms), dtype=np.float32)
        rows = np.repeat(np.arange(stop - start), np.diff(ptr))
        out[rows, self.indices[ptr[0]:ptr[-1]]] = self.values[ptr[0]:ptr[-1]]
        return out

    def matmul(self, atoms: np.ndarray) -> np.ndarray:
        """``codes @ atoms`` as float32 ``(n_tokens, d)``, computed in row chunks."""
        n = self.shape[0]
        return np.concatenate([np.zeros((0, atoms.shape[1]), np.float32)] + [
            self.to_dense(a, min(a + _CHUNK, n)) @ atoms for a in range(0, n, _CHUNK)])


@dataclass(frozen=True)
class PlantedData:
    """Generated activations and their ground truth (see the module docstring)."""

    config: PlantedConfig
    names: tuple[str, ...]
    acts: dict[str, np.ndarray]
    shared_atoms: dict[str, np.ndarray]
    private_atoms: dict[str, np.ndarray]
    shared_codes: SparseCodes
    private_codes: dict[str, SparseCodes]
    noise_std: dict[str, float]  # per-coordinate noise std sigma_i of each model

    def save(self, directory: Path) -> dict[str, Path]:
        """Write ``<name>.npy`` (float32 activations) per model and ``truth.npz``.

        Returns:
            Model name -> activation path, plus ``"truth"`` -> the truth file.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {"truth": directory / TRUTH_FILE}
        truth = {"config": np.array(json.dumps(dataclasses.asdict(self.config))),
                 "noise_std": np.array([self.noise_std[n] for n in self.names], dtype=np.float64)}
        codes = {"shared_codes": self.shared_codes} | {f"private_codes__{n}": c for n, c in self.private_codes.items()}
        for key, c in codes.items():
            truth |= {f"{key}__indptr": c.indptr, f"{key}__indices": c.indices,
                      f"{key}__values": c.values, f"{key}__n_atoms": np.array(c.n_atoms)}
        for name in self.names:
            paths[name] = directory / f"{name}.npy"
            np.save(paths[name], self.acts[name])
            truth[f"shared_atoms__{name}"] = self.shared_atoms[name]
            truth[f"private_atoms__{name}"] = self.private_atoms[name]
        np.savez(paths["truth"], **truth)
        logger.info("saved planted data for %s to %s", list(self.names), directory)
        return paths


def load_planted(directory: Path) -> PlantedData:
    """Read back what ``PlantedData.save`` wrote to ``directory``."""
    directory = Path(directory)
    with np.load(directory / TRUTH_FILE, allow_pickle=False) as z:
        raw = json.loads(str(z["config"]))
        raw["names"] = None if raw["names"] is None else tuple(raw["names"])
        cfg = PlantedConfig(**raw | {"widths": tuple(raw["widths"])})
        names = cfg.model_names

        def codes(key: str) -> SparseCodes:
            return SparseCodes(z[f"{key}__indptr"], z[f"{key}__indices"], z[f"{key}__values"],
                               int(z[f"{key}__n_atoms"]))
        return PlantedData(
            config=cfg, names=names,
            acts={n: np.load(directory / f"{n}.npy") for n in names},
            shared_atoms={n: z[f"shared_atoms__{n}"] for n in names},
            private_atoms={n: z[f"private_atoms__{n}"] for n in names},
            shared_codes=codes("shared_codes"),
            private_codes={n: codes(f"private_codes__{n}") for n in names},
            noise_std={n: float(s) for n, s in zip(names, z["noise_std"])},
        )


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.standard_normal((n, d))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _draw_codes(rng: np.random.Generator, n_tokens: int, n_atoms: int, active: float, kind: str) -> SparseCodes:
    """Bernoulli(active / n_atoms) activity per (token, atom), magnitudes of law ``kind``."""
    counts, indices, values = [np.zeros(1, dtype=np.int64)], [], []
    p = active / n_atoms if n_atoms else 0.0
    for start in range(0, n_tokens, _CHUNK):
        rows = min(_CHUNK, n_tokens - start)
        mask = rng.random((rows, n_atoms)) < p
        cols = np.nonzero(mask)[1]
        counts.append(mask.sum(axis=1))
        indices.append(cols.astype(np.int32))
        values.append(_MAGNITUDE_LAWS[kind](rng, cols.size).astype(np.float32))
    return SparseCodes(np.cumsum(np.concatenate(counts)), np.concatenate(indices),
                       np.concatenate(values), n_atoms)


def generate_planted(cfg: PlantedConfig) -> PlantedData:
    """Generate activations of ``len(cfg.widths)`` models with planted shared/private concepts.

    Args:
        cfg: Generator settings.

    Returns:
        The activations (float32, ``(n_tokens, d_i)``), atoms, sparse codes and noise stds.
    """
    shared_ss, models_ss = np.random.SeedSequence(cfg.seed).spawn(2)
    names = cfg.model_names
    shared_codes = _draw_codes(np.random.default_rng(shared_ss), cfg.n_tokens, cfg.n_shared,
                               cfg.active_shared, cfg.magnitude)
    acts, shared_atoms, private_atoms, private_codes, noise_std = {}, {}, {}, {}, {}
    for name, d, ss in zip(names, cfg.widths, models_ss.spawn(len(names))):
        atom_rng, code_rng, noise_rng = (np.random.default_rng(s) for s in ss.spawn(3))
        shared_atoms[name] = _unit_rows(atom_rng, cfg.n_shared, d)
        private_atoms[name] = _unit_rows(atom_rng, cfg.n_private, d)
        private_codes[name] = _draw_codes(code_rng, cfg.n_tokens, cfg.n_private, cfg.active_private, cfg.magnitude)
        x = shared_codes.matmul(shared_atoms[name]) + private_codes[name].matmul(private_atoms[name])
        mean_sq_norm = float(np.square(x, dtype=np.float64).sum()) / cfg.n_tokens
        noise_std[name] = cfg.noise * float(np.sqrt(mean_sq_norm / d))
        if cfg.noise > 0:
            x += noise_std[name] * noise_rng.standard_normal((cfg.n_tokens, d), dtype=np.float32)
        acts[name] = x
    logger.info("generated %d tokens for %s (noise std %s)", cfg.n_tokens, list(names), noise_std)
    return PlantedData(config=cfg, names=names, acts=acts, shared_atoms=shared_atoms, private_atoms=private_atoms,
                       shared_codes=shared_codes, private_codes=private_codes, noise_std=noise_std)

