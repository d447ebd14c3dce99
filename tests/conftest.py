"""Fixtures shared by the test folders: a headless Chromium (Debian's, driven by Playwright) for the report's pages;
no network and an offline Hugging Face hub cache of its own for the hub tests."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; the test is skipped without Playwright or Chromium."""
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Any) -> Callable[..., tuple[Any, list[str], list[str]]]:
    """``open_page(path, query="", screenshot=None, width=1280)``: the page loaded from disk in a window ``width``
    pixels wide, its console errors and failed requests (collected from before the first request, so nothing is
    missed)."""

    def load(path: Path, query: str = "", screenshot: Path | None = None,
             width: int = 1280) -> tuple[Any, list[str], list[str]]:
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors, failed = [], []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto(path.as_uri() + query)
        page.wait_for_load_state("load")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        return page, errors, failed

    return load


# Lazy images (loading="lazy") load only when scrolled to: switch them to eager and wait for every image to
# settle, so each one is checked.
_LOAD_ALL = """async () => {
  const images = Array.from(document.images);
  images.forEach(i => { if (i.loading === "lazy") { i.loading = "eager"; } });
  await Promise.all(images.map(i => i.complete ? null : new Promise(done => {
    i.addEventListener("load", done); i.addEventListener("error", done); })));
  return images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
}"""


@pytest.fixture
def broken_images() -> Callable[[Any], int]:
    """``broken_images(page)``: how many of the page's images did not load (lazy ones loaded first)."""
    return lambda page: page.evaluate(_LOAD_ALL)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup fails the test: what it checks must work from local files alone."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the test tried to use the network: {args[1:]} {kwargs}")

    for target, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "getaddrinfo"),
                         (socket, "create_connection")):
        monkeypatch.setattr(target, name, refuse)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> Path:
    """A Hugging Face hub cache of the test's own (``HF_HOME`` under tmp_path) with ``HF_HUB_OFFLINE=1``;
    returns the cache folder (``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables once, when it is imported
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


@pytest.fixture
def restore_logging_and_threads() -> Iterator[None]:
    """Put back the root logger and torch's threads after a test that calls ``usae.cli.main``
    (it configures both, as an entry point does)."""
    import logging

    import torch

    handlers, level, threads = logging.root.handlers[:], logging.root.level, torch.get_num_threads()
    yield
    logging.root.handlers[:], logging.root.level = handlers, level
    torch.set_num_threads(threads)
