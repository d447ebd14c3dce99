"""The planted generator: determinism, shared/private semantics, noise level, I/O."""

import dataclasses

import numpy as np
import pytest

from usae.planted.activations import PlantedConfig, generate_planted, load_planted

SMALL = PlantedConfig(widths=(64, 96, 128), n_tokens=4000, seed=3)


@pytest.fixture(scope="module")
def data():
    return generate_planted(SMALL)


@pytest.fixture(scope="module")
def clean():
    return generate_planted(dataclasses.replace(SMALL, noise=0.0))


def test_deterministic_per_seed(data):
    again = generate_planted(SMALL)
    other = generate_planted(dataclasses.replace(SMALL, seed=4))
    for name in data.names:
        np.testing.assert_array_equal(data.acts[name], again.acts[name])
        np.testing.assert_array_equal(data.shared_atoms[name], again.shared_atoms[name])
        assert not np.array_equal(data.acts[name], other.acts[name])
    np.testing.assert_array_equal(data.shared_codes.values, again.shared_codes.values)


def test_shapes_dtypes_and_unit_norms(data):
    cfg = SMALL
    assert data.names == ("m0", "m1", "m2")
    assert data.shared_codes.shape == (cfg.n_tokens, cfg.n_shared)
    for name, d in zip(data.names, cfg.widths):
        assert data.acts[name].shape == (cfg.n_tokens, d) and data.acts[name].dtype == np.float32
        assert data.shared_atoms[name].shape == (cfg.n_shared, d)
        assert data.private_atoms[name].shape == (cfg.n_private, d)
        assert data.private_codes[name].shape == (cfg.n_tokens, cfg.n_private)
        for atoms in (data.shared_atoms[name], data.private_atoms[name]):
            assert atoms.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0, atol=1e-5)
    assert (data.shared_codes.values >= 1.0).all()  # 1 + Exp(1)
    # Different models get different dictionaries of the same concepts.
    assert not np.allclose(data.shared_atoms["m0"], data.shared_atoms["m1"][:, :64])


def test_given_names():
    d = generate_planted(PlantedConfig(widths=(8, 8), names=("a", "b"), n_shared=4, n_private=2,
                                       active_shared=1, active_private=1, n_tokens=10))
    assert d.names == ("a", "b") and set(d.acts) == {"a", "b"}


def test_shared_part_is_shared_exactly():
    clean = generate_planted(dataclasses.replace(SMALL, n_tokens=500, noise=0.0, active_private=0.5))
    shared = clean.shared_codes.to_dense()
    no_private = np.all([clean.private_codes[n].counts() == 0 for n in clean.names], axis=0)
    tokens = np.flatnonzero(no_private & (clean.shared_codes.counts() > 0))
    assert tokens.size > 20
    for name in clean.names:
        for t in tokens[:20]:
            ks = np.flatnonzero(shared[t])
            expected = sum(shared[t, k] * clean.shared_atoms[name][k].astype(np.float64) for k in ks)
            np.testing.assert_allclose(clean.acts[name][t], expected, rtol=1e-5, atol=1e-5)


def test_private_codes_stay_in_their_model(clean):
    shared = clean.shared_codes.to_dense()
    for name in clean.names:
        expected = shared @ clean.shared_atoms[name] + \
            clean.private_codes[name].to_dense() @ clean.private_atoms[name]
        np.testing.assert_allclose(clean.acts[name], expected, rtol=1e-5, atol=1e-5)
    # Changing model m0 (width, hence its private draws) leaves m1 and m2 bit-identical.
    changed = generate_planted(dataclasses.replace(SMALL, noise=0.0, widths=(32, 96, 128)))
    for name in ("m1", "m2"):
        np.testing.assert_array_equal(changed.acts[name], clean.acts[name])
    # Private codes differ between models.
    assert not np.array_equal(clean.private_codes["m0"].indices, clean.private_codes["m1"].indices)


def test_average_activity():
    cfg = dataclasses.replace(SMALL, n_tokens=20_000)
    d = generate_planted(cfg)
    shared_mean = d.shared_codes.nnz / cfg.n_tokens
    assert shared_mean == pytest.approx(cfg.active_shared, rel=0.03)
    for name in d.names:
        total = shared_mean + d.private_codes[name].nnz / cfg.n_tokens
        assert total == pytest.approx(cfg.active_shared + cfg.active_private, rel=0.03)


def test_noise_level_matches_definition(data, clean):
    for name, d in zip(data.names, SMALL.widths):
        x = clean.acts[name].astype(np.float64)
        mean_sq_norm = np.square(x).sum(axis=1).mean()
        sigma = SMALL.noise * np.sqrt(mean_sq_norm / d)
        assert data.noise_std[name] == pytest.approx(sigma, rel=1e-6)
        assert clean.noise_std[name] == 0.0
        residual = data.acts[name].astype(np.float64) - x
        assert residual.std() == pytest.approx(sigma, rel=0.02)
        assert abs(residual.mean()) < 0.05 * sigma
        ratio = np.sqrt(np.square(residual).sum(axis=1).mean() / mean_sq_norm)
        assert ratio == pytest.approx(SMALL.noise, rel=0.02)


@pytest.mark.parametrize("kind", ["lognormal", "constant"])
def test_other_magnitudes(kind):
    d = generate_planted(dataclasses.replace(SMALL, n_tokens=500, magnitude=kind))
    assert (d.shared_codes.values > 0).all()
    if kind == "constant":
        assert (d.shared_codes.values == 1.0).all()


def test_save_load_round_trip(tmp_path):
    cfg = dataclasses.replace(SMALL, n_tokens=300, names=("vit", "dino", "clip"))
    d = generate_planted(cfg)
    paths = d.save(tmp_path)
    assert set(paths) == {"vit", "dino", "clip", "truth"}
    assert np.load(paths["dino"]).dtype == np.float32
    back = load_planted(tmp_path)
    assert back.config == cfg and back.names == d.names and back.noise_std == d.noise_std
    for name in d.names:
        np.testing.assert_array_equal(back.acts[name], d.acts[name])
        np.testing.assert_array_equal(back.shared_atoms[name], d.shared_atoms[name])
        np.testing.assert_array_equal(back.private_atoms[name], d.private_atoms[name])
        np.testing.assert_array_equal(back.private_codes[name].to_dense(), d.private_codes[name].to_dense())
    np.testing.assert_array_equal(back.shared_codes.to_dense(), d.shared_codes.to_dense())


@pytest.mark.parametrize("kwargs, field", [
    ({"widths": (64,)}, "widths"),
    ({"widths": (64, 0)}, "widths"),
    ({"names": ("a",)}, "names"),
    ({"names": ("a", "a", "b")}, "names"),
    ({"names": ("a", "truth", "b")}, "names"),
    ({"n_shared": -1}, "n_shared"),
    ({"n_private": -1}, "n_private"),
    ({"n_tokens": 0}, "n_tokens"),
    ({"active_shared": 0.0}, "active_shared"),
    ({"active_shared": 200.0}, "active_shared"),
    ({"active_private": -1.0}, "active_private"),
    ({"n_private": 0}, "active_private"),
    ({"magnitude": "gamma"}, "magnitude"),
    ({"noise": -0.1}, "noise"),
])
def test_bad_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"PlantedConfig\.{field}"):
        PlantedConfig(**kwargs)


def test_no_private_atoms_is_allowed():
    d = generate_planted(PlantedConfig(widths=(8, 12), n_shared=6, n_private=0, active_shared=2,
                                       active_private=0, n_tokens=50))
    assert d.private_atoms["m0"].shape == (0, 8) and d.private_codes["m1"].nnz == 0
